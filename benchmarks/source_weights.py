"""How to draw a pooled training set from celeb1k, figaro1k and celebamask4k, measured side by side.

Every variant fine-tunes the same ImageNet MobileNetV2-DeepLabv3+ (``search_spaces/laptop.yaml``'s recipe:
ASPP/decoder 128, base and crop 193, batch 8, Adam 1e-3 / 3e-3, CE, channels-last, precise BN) for the same
number of steps, one torch thread each, two variants at a time (one per core), and differs only in its
training data: celeb1k alone, the pool drawn in proportion to size (plain concatenation), or the pool drawn
by ``sources[].weight``. Each is then tested like the final stage does (network at the trained scale, metric
on the full-resolution masks) on celeb1k test and figaro1k test, with 95 % bootstrap intervals over images
(2000 resamples), and celeb1k's paired difference against the proportional pool.

    .venv/bin/python benchmarks/source_weights.py          # 200 steps, two variants at once: ~5 min on 2 cores
    .venv/bin/python benchmarks/source_weights.py --steps 100 --json /tmp/weights.json

The last line printed is a JSON object: variant -> {celeb1k: [mIoU, lo, hi], figaro1k: [...], s_per_step}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RECIPE: dict[str, Any] = {
    "backbone": "mobilenet_v2",
    "pretrained": "imagenet",
    "aspp_channels": 128,
    "decoder_channels": 128,
    "optimizer": "adam",
    "lr_backbone": 1e-3,
    "lr_head": 3e-3,
    "loss": "ce",
    "batch_size": 8,
    "base_size": 193,
    "crop_size": 193,
    "eval_size": 193,
    "channels_last": True,
    "precise_bn_batches": 10,
    "num_workers": 0,
    "seed": 0,
}

#: name -> per-source weights (None: not in the pool; "size": in the pool, drawn in proportion to size)
VARIANTS: dict[str, dict[str, float | str | None]] = {
    "celeb1k alone": {"celeb1k": "size", "figaro1k": None, "celebamask4k": None},
    "pool, in proportion to size (15/14/71 %)": {"celeb1k": "size", "figaro1k": "size", "celebamask4k": "size"},
    "pool, balanced (1:1:1)": {"celeb1k": 1.0, "figaro1k": 1.0, "celebamask4k": 1.0},
    "pool, celeb1k first (2:1:1)": {"celeb1k": 2.0, "figaro1k": 1.0, "celebamask4k": 1.0},
}
REFERENCE = "pool, in proportion to size (15/14/71 %)"
#: run by default (one pair: ~5 min on 2 cores); ``--only`` picks any of VARIANTS
DEFAULT = [REFERENCE, "pool, celeb1k first (2:1:1)"]


def _sources(weights: dict[str, float | str | None], data: Path) -> list[dict[str, Any]]:
    sources = []
    for name, weight in weights.items():
        if weight is None:
            continue
        source: dict[str, Any] = {"name": name, "dataset": "folder", "data_root": str(data / name), "test": False}
        source["val"] = name == "celeb1k"
        if weight != "size":
            source["weight"] = weight
        sources.append(source)
    return sources


def run_variant(job: tuple[str, dict[str, Any], int, str]) -> tuple[str, dict[str, Any]]:
    """Train one variant in this (worker) process with one thread; keep its per-image test counts."""
    name, weights, steps, data = job
    import torch

    torch.set_num_threads(1)
    from hairseg_core.config import train_config_from_dict
    from hairseg_core.data import build_dataset
    from hairseg_core.deploy.inference import HairPredictor
    from hairseg_core.evaluate import evaluate_predictor
    from hairseg_core.final.bootstrap import PerImageCounts
    from hairseg_core.scaling import attach_train_scale, inference_scale
    from hairseg_core.train.trainer import Trainer

    settings = {**RECIPE, "sources": _sources(weights, Path(data)), "epochs": 1, "max_steps_per_epoch": steps}
    cfg = train_config_from_dict(settings, source=name)
    started = time.perf_counter()
    trainer = Trainer(cfg)
    result = next(iter(trainer.fit()))
    model = attach_train_scale(trainer.model.eval(), inference_scale(cfg))
    predictor = HairPredictor.from_model(model)
    counts = {}
    for test in ("celeb1k", "figaro1k"):
        per_image = PerImageCounts()
        evaluate_predictor(predictor, build_dataset("folder", "test", root=Path(data) / test), per_image=per_image)
        counts[test] = per_image.as_array().tolist()
    return name, {
        "counts": counts,
        "val_miou": float(result["val_miou"]),
        "s_per_step": float(result["epoch_seconds"]) / max(1, trainer.steps_per_epoch),
        "wall_s": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="training steps per variant (one epoch, poly LR over it)")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="folder with the three data sets")
    p.add_argument("--processes", type=int, default=2, help="variants trained at once (one thread each)")
    p.add_argument("--only", nargs="*", help=f"variant names to run, of {list(VARIANTS)} (default: {DEFAULT})")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    missing = [n for n in ("celeb1k", "figaro1k", "celebamask4k") if not (Path(args.data) / n).is_dir()]
    if missing:
        print(f"error: {', '.join(missing)} not found under {args.data} (folder layout)", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from hairseg_core.final.bootstrap import bootstrap_weights, metric_interval, paired_bootstrap

    names = args.only or DEFAULT
    jobs = [(n, VARIANTS[n], args.steps, args.data) for n in names]
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {len(jobs)} variants, "
        f"{args.steps} steps each, {args.processes} at a time, 1 thread each"
    )
    with mp.get_context("spawn").Pool(args.processes) as pool:
        raw = dict(pool.map(run_variant, jobs, chunksize=1))
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        row: dict[str, Any] = {"val_miou": raw[name]["val_miou"], "s_per_step": raw[name]["s_per_step"]}
        for test, counts in raw[name]["counts"].items():
            confusion = np.asarray(counts, dtype=np.int64)
            est = metric_interval(confusion, bootstrap_weights(len(confusion)))
            row[test] = [est.value, est.lo, est.hi]
        if REFERENCE in raw and name != REFERENCE:
            diff = paired_bootstrap(
                np.asarray(raw[name]["counts"]["celeb1k"], dtype=np.int64),
                np.asarray(raw[REFERENCE]["counts"]["celeb1k"], dtype=np.int64),
            )
            row["celeb1k_vs_proportional"] = [diff.diff, diff.lo, diff.hi]
        results[name] = row
    width = max(len(n) for n in results)
    print(f"\n{'variant':<{width}}  val     celeb1k test [95 %]        figaro1k test [95 %]       s/step")
    for name, r in results.items():
        c, f = r["celeb1k"], r["figaro1k"]
        print(
            f"{name:<{width}}  {r['val_miou']:.4f}  {c[0]:.4f} [{c[1]:.4f}, {c[2]:.4f}]  "
            f"{f[0]:.4f} [{f[1]:.4f}, {f[2]:.4f}]  {r['s_per_step']:.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
