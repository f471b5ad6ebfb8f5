"""Does the input pipeline keep a GPU busy? Training images/s with real loading, by loader processes per trial.

Why: a trial's CPUs (``resources.cpu``) run its DataLoader (``cpu - 1`` worker processes, see
``hairseg_core.train.trainer.default_num_workers``). Too few and the GPU waits for augmentation; too many and a node
runs fewer trials. This trains the spaces' GPU configurations (the Trainer's step, ``hairseg_core.train.gpu_settings``)
on real photos read through the streaming input path (the memory-mapped node cache) with the paper's training
augmentation (random scale crop + Gaussian blur), for several loader worker counts, next to the same step on
random tensors already on the GPU (the GPU's own rate). One JSON line per (configuration, workers):
``images_per_s``, ``gpu_only_images_per_s`` and their ratio (1.0: the loader is not the bottleneck).

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_input.py --data DIR --out $OUT/input.jsonl   # on a GPU machine
    python benchmarks/gpu_input.py --data ../shared/data/celeb1k --dry-run                  # CPU, tiny sizes

``DIR`` is a folder data set (``DIR/train/images``, ``DIR/train/masks``); a hundred photos are enough (they are
cycled). Needs torch, torchvision, timm, OpenCV and albumentations (with pydantic); not Ray, MLflow or Optuna.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: (label, backbone, head, crop, batch, settings): the GPU spaces' shapes with their measured best settings.
CONFIGS = (
    (
        "paper-resnet101-257-b16",
        "resnet101",
        256,
        257,
        16,
        {"amp": True, "channels_last": True, "cudnn_benchmark": True},
    ),
    ("512-resnet101-b16", "resnet101", 256, 512, 16, {"amp": True, "channels_last": True, "cudnn_benchmark": False}),
    (
        "celeb1k-mobilenet-193-b8",
        "mobilenet_v2",
        128,
        193,
        8,
        {"amp": False, "channels_last": False, "cudnn_benchmark": False},
    ),
)


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {
        "image": torch.stack([b["image"] for b in batch]),
        "mask": torch.stack([torch.as_tensor(b["mask"]).long() for b in batch]),
    }


def measure(
    parts: Any, split: Any, crop: int, batch: int, combo: dict[str, bool], workers: int, device: Any, seconds: float
) -> dict[str, float]:
    """Images/s of the Trainer's step fed by a DataLoader with ``workers`` processes (after its first batches)."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from hairseg_core.data.splits import TransformedDataset
    from hairseg_core.data.transforms import build_train_transform
    from hairseg_core.train.gpu_settings import applied, make_optimizer
    from hairseg_core.train.losses import mixed_loss

    dataset = TransformedDataset(split, build_train_transform(crop, crop, rsc=True, blur=True, seed=0))
    sampler = RandomSampler(dataset, replacement=True, num_samples=10**7)
    loader = DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if workers else None,
        drop_last=True,
    )
    cuda = device.type == "cuda"
    amp = combo["amp"] and cuda
    model = parts.model.train()
    optimizer = make_optimizer(parts)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    done, start = 0, None
    with applied(combo, parts):
        for step, item in enumerate(loader):
            images = item["image"].to(device, non_blocking=True)
            masks = item["mask"].to(device, non_blocking=True)
            if combo["channels_last"]:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                logits = model(images)
            loss = mixed_loss(parts.loss_fn, logits.float(), masks, masks, 1.0, image=images)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if step == max(3, 2 * workers):  # the loader's first batches and cudnn's warm-up are not counted
                if cuda:
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                done = 0
            elif start is not None:
                done += 1
                if time.perf_counter() - start >= seconds and done >= 3:
                    break
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start  # type: ignore[operator]
    return {"images_per_s": done * batch / elapsed, "steps": done}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 6])
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per measurement")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes")
    args = parser.parse_args(argv)

    import cv2
    import torch

    from hairseg_core.data import build_dataset
    from hairseg_core.data.node_cache import build_or_open
    from hairseg_core.train.gpu_settings import build_train_parts, time_training

    cv2.setNumThreads(1)
    if not args.dry_run and not torch.cuda.is_available():
        print(json.dumps({"skipped": True, "reason": "no CUDA device"}))
        return 0
    device = torch.device("cpu" if args.dry_run else "cuda")
    configs = CONFIGS
    if args.dry_run:
        configs = (
            (
                "dry-mobilenet",
                "mobilenet_v2",
                8,
                65,
                2,
                {"amp": False, "channels_last": False, "cudnn_benchmark": False},
            ),
        )
        args.workers, args.seconds = [0, 1], 0.5
    out = args.out.open("a") if args.out else None
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    with tempfile.TemporaryDirectory(prefix="hairseg-gpu-input-") as cache:
        dataset = build_dataset("folder", "train", root=args.data)
        split = build_or_open(dataset, "gpu-input", cache, store_short_side=None, workers=4)
        for label, backbone, head, crop, batch, combo in configs:
            kwargs = {
                "backbone": backbone,
                "output_stride": 16,
                "num_classes": 2,
                "pretrained": "none",
                "aspp_channels": head,
                "decoder_channels": head,
            }
            parts = build_train_parts(kwargs, device)
            gpu_only = time_training(parts, combo, batch, crop, device, warmup=5, steps=30, max_seconds=args.seconds)
            for workers in args.workers:
                rate = measure(parts, split, crop, batch, combo, workers, device, args.seconds)
                row = {
                    "config": label,
                    "backbone": backbone,
                    "crop": crop,
                    "batch": batch,
                    **combo,
                    "loader_workers": workers,
                    "cpus_per_trial": workers + 1,
                    "rsc_blur": True,
                    "images_per_s": round(rate["images_per_s"], 1),
                    "gpu_only_images_per_s": round(gpu_only["images_per_s"], 1),
                    "ratio": round(rate["images_per_s"] / gpu_only["images_per_s"], 3),
                    "photos": len(split),
                    "gpu": gpu,
                }
                line = json.dumps(row)
                print(line, flush=True)
                if out:
                    out.write(line + "\n")
                    out.flush()
            del parts
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if out:
        out.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
