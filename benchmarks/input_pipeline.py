"""Input pipeline throughput per CPU core: images/s a trial's loader delivers, by input path, crop and augmentation.

What it measures, on one core (torch and OpenCV at 1 thread, one process), for each crop (base size = crop)
with the paper's augmentation (flip, rotation, colour jitter; ``--rsc-blur``: random scale crop + Gaussian
blur as well): the time to produce one training sample (uint8 pixels -> augmented, normalised tensor) from

* ``memory``: the split decoded in the process (the memory path's object-store arrays are the same numpy
  arrays, read zero-copy);
* ``node_cache``: the streaming path's memory-mapped node cache (warm page cache, as after the first epoch);
* ``files``: the original files decoded for every sample (JPEG + PNG decode, what a streaming reader without
  a cache pays every epoch);
* ``ray_data`` (``--ray-data``): Ray Data streaming the same decode + augmentation from the files
  (``ray.data.from_items(...).map(...)``, one CPU), consumed with ``iter_batches`` as a trial would.

Each configuration is timed ``--repeats`` times, interleaved (path order rotated per repeat), over the same
``--samples`` random indices; the median is printed, one JSON line per (path, crop, augmentation).

    .venv/bin/python benchmarks/input_pipeline.py --data ../shared/data/celeb1k --rsc-blur both --ray-data
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hairseg_core.data import build_dataset  # noqa: E402
from hairseg_core.data.memory import MaterializedSplit  # noqa: E402
from hairseg_core.data.node_cache import build_or_open  # noqa: E402
from hairseg_core.data.transforms import build_train_transform  # noqa: E402


def _time_split(sample_fn: Any, transform: Any, indices: list[int]) -> float:
    started = time.perf_counter()
    for i in indices:
        image, mask = sample_fn(i)
        transform(image=image, mask=mask)
    return len(indices) / (time.perf_counter() - started)


class _RayDataLoader:
    """Ray Data's map_batches callable: decode + augment, the transform built once per actor."""

    def __init__(self, crop: int, augment: bool) -> None:
        cv2.setNumThreads(1)
        torch.set_num_threads(1)
        self.transform = build_train_transform(crop, crop, rsc=augment, blur=augment, seed=0)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from hairseg_core.data.datasets import decode_binary_mask, read_image_rgb

        images, masks = [], []
        for image_path, mask_path in zip(batch["image_path"], batch["mask_path"], strict=True):
            out = self.transform(image=read_image_rgb(Path(image_path)), mask=decode_binary_mask(Path(mask_path)))
            images.append(out["image"].numpy())
            masks.append(out["mask"].numpy())
        return {"image": np.stack(images), "mask": np.stack(masks)}


def _ray_data_rate(dataset: Any, crop: int, augment: bool, indices: list[int]) -> float:
    """Images/s of Ray Data streaming decode + augmentation on one CPU, after its first batch (actor start)."""
    import ray

    rows = [{"image_path": str(dataset.samples[i].image), "mask_path": str(dataset.samples[i].mask)} for i in indices]
    stream = ray.data.from_items(rows).map_batches(
        _RayDataLoader, fn_constructor_args=(crop, augment), batch_size=8, concurrency=1, num_cpus=1
    )
    started, seen = None, 0
    for batch in stream.iter_batches(batch_size=8, batch_format="numpy"):
        if started is None:
            started = time.perf_counter()
            continue
        seen += len(batch["image"])
    assert started is not None
    return seen / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "celeb1k")
    parser.add_argument("--crops", type=int, nargs="+", default=[193, 257, 512])
    parser.add_argument("--samples", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rsc-blur", choices=["off", "on", "both"], default="both")
    parser.add_argument("--ray-data", action="store_true", help="also time Ray Data streaming (starts Ray, 1 CPU)")
    args = parser.parse_args()

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    dataset = build_dataset("folder", "train", root=args.data)
    rng = np.random.default_rng(0)
    indices = rng.choice(len(dataset), size=min(args.samples, len(dataset)), replace=False).tolist()
    memory = MaterializedSplit.from_dataset(dataset)
    augments = {"off": [False], "on": [True], "both": [False, True]}[args.rsc_blur]
    if args.ray_data:
        import ray

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="hairseg-bench-cache-") as cache_dir:
        for crop in args.crops:
            # the streaming path's cache for this crop (stored untouched: celeb1k is 512², within 2x of any need)
            need = 2 * crop
            cached = build_or_open(dataset, f"bench-{crop}", cache_dir, need, workers=1)
            for augment in augments:
                transform = build_train_transform(crop, crop, rsc=augment, blur=augment, seed=0)
                paths = {
                    "memory": memory.sample,
                    "node_cache": cached.sample,
                    "files": dataset.load_raw,
                }
                rates: dict[str, list[float]] = {name: [] for name in paths}
                if args.ray_data:
                    rates["ray_data"] = []
                for repeat in range(args.repeats):
                    names = list(rates)
                    names = names[repeat % len(names) :] + names[: repeat % len(names)]
                    for name in names:
                        if name == "ray_data":
                            rates[name].append(_ray_data_rate(dataset, crop, augment, indices))
                        else:
                            rates[name].append(_time_split(paths[name], transform, indices))
                for name, values in rates.items():
                    row = {
                        "path": name,
                        "crop": crop,
                        "rsc_blur": augment,
                        "images_per_s_per_core": round(statistics.median(values), 1),
                        "runs": [round(v, 1) for v in values],
                        "samples": len(indices),
                    }
                    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
