"""Which training settings make ImageNet fine-tuning efficient on a CPU, measured side by side.

Every variant fine-tunes the same ImageNet MobileNetV2-DeepLabv3+ (``configs/celeb1k_mobilenet_v2.yaml``)
for the same number of steps on celeb1k, one torch thread each, then reports celeb1k val mIoU (the
trial's own metric, at ``eval_size``) and test mIoU on the full-resolution masks with the network at
the trained scale (what the final stage measures), plus seconds per training step. Variants run two
at a time in worker processes (one per core), in a fixed order, so each pair shares the machine alike.

    .venv/bin/python benchmarks/finetune_knobs.py                      # 2 epochs x 60 steps per variant
    .venv/bin/python benchmarks/finetune_knobs.py --epochs 3 --steps 92 --json /tmp/knobs.json

The last line printed is a JSON object: variant -> {val_miou, test_miou, s_per_step, wall_s}.
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: name -> overrides of configs/celeb1k_mobilenet_v2.yaml
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline (193 px, precise BN 10)": {},
    "no precise BN": {"precise_bn_batches": 0},
    "head warm-up (backbone frozen 30 steps, LR ramp 30)": {"freeze_backbone_steps": 30, "warmup_steps": 30},
    "channels-last": {"channels_last": True},
    "161 px crop of the 193 px image (laptop.yaml)": {"crop_size": 161},
    "161 px scale (lower search resolution)": {"crop_size": 161, "base_size": 161, "eval_size": 161},
}
#: Not in the default list (measured elsewhere: benchmarks/README.md, ImageNet vs from scratch).
EXTRA_VARIANTS: dict[str, dict[str, Any]] = {"from scratch": {"pretrained": "none"}}


def run_variant(job: tuple[str, dict[str, Any], int, int, str]) -> tuple[str, dict[str, float]]:
    """Train one variant in this (worker) process with one thread; evaluate it on the test split."""
    name, overrides, epochs, steps, data_root = job
    import torch

    torch.set_num_threads(1)
    from hairseg_core.config import load_train_config, train_config_from_dict
    from hairseg_core.data import build_dataset
    from hairseg_core.deploy.inference import HairPredictor
    from hairseg_core.evaluate import evaluate_predictor
    from hairseg_core.scaling import attach_train_scale, inference_scale
    from hairseg_core.train.trainer import Trainer

    base = load_train_config(ROOT / "configs" / "celeb1k_mobilenet_v2.yaml").model_dump()
    # num_workers 0: one core per variant, augmentation in the training thread (as laptop.yaml;
    # pool workers are daemons and cannot start DataLoader workers)
    base.update({"data_root": data_root, "epochs": epochs, "max_steps_per_epoch": steps, "num_workers": 0, **overrides})
    cfg = train_config_from_dict(base, source=name)
    started = time.perf_counter()
    trainer = Trainer(cfg)
    train_seconds = 0.0
    for result in trainer.fit():
        train_seconds += result["epoch_seconds"]
    wall = time.perf_counter() - started
    model = attach_train_scale(trainer.model.eval(), inference_scale(cfg))
    test = build_dataset("folder", "test", root=data_root)
    scores = evaluate_predictor(HairPredictor.from_model(model), test)
    return name, {
        "val_miou": float(trainer.history[-1]["val_miou"]),
        "test_miou": float(scores["miou"]),
        "s_per_step": train_seconds / max(1, trainer.steps_per_epoch * epochs),
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=60, help="training steps per epoch")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "celeb1k"))
    p.add_argument("--processes", type=int, default=2, help="variants trained at once (one thread each)")
    p.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if not Path(args.data_root).is_dir():
        print(f"error: {args.data_root} not found (celeb1k in the folder layout)", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    names = args.only or list(VARIANTS)
    known = {**VARIANTS, **EXTRA_VARIANTS}
    jobs = [(n, known[n], args.epochs, args.steps, args.data_root) for n in names]
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {len(jobs)} variants, "
        f"{args.epochs} x {args.steps} steps each, {args.processes} at a time, 1 thread each"
    )
    with mp.get_context("spawn").Pool(args.processes) as pool:
        results = dict(pool.map(run_variant, jobs, chunksize=1))
    width = max(len(n) for n in results)
    print(f"\n{'variant':<{width}}  val mIoU  test mIoU  s/step  wall s")
    for name in names:
        r = results[name]
        print(
            f"{name:<{width}}  {r['val_miou']:.4f}    {r['test_miou']:.4f}     {r['s_per_step']:.2f}  {r['wall_s']:.0f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
