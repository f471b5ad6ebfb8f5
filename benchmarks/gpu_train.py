"""GPU readiness: training images/s of one trial's loop with AMP and channels-last, and trials sharing a GPU.

Why: the cluster search spaces ask each trial for a share of a GPU (``resources.gpu``); the share should
be the one the numbers support, not a guess. This measures, on one CUDA device:

1. one trial's training step (the :class:`hairseg_core.train.Trainer`'s model, loss, optimizer and
   GradScaler, the step exactly as ``Trainer.run_epoch`` runs it) with AMP off/on x channels-last
   off/on, in images/s;
2. 1, 2 and 4 such trials run concurrently by Ray Tune with ``resources.gpu`` 1, 0.5 and 0.25, in
   aggregate images/s (all trials' images over the span from the first start to the last end).

Batches are random tensors already on the GPU (``--batch-size`` x 3 x ``--crop`` x ``--crop``), so the
figure is the GPU's, not the data loader's (a trial's loader runs on its CPUs). The network is built
without pretrained weights: they change no timing, and a GPU node may have no weights cache.

    .venv/bin/python benchmarks/gpu_train.py                     # 30 steps after 5, batch 8 at 193 px
    .venv/bin/python benchmarks/gpu_train.py --batch-size 16 --steps 50 --trials 1 2 4

On a machine without CUDA it prints "skipped: no CUDA device" and exits 0. The last line is a JSON
object (``"skipped": true`` when nothing was measured).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "configs" / "celeb1k_mobilenet_v2.yaml"


def trial_config(amp: bool, channels_last: bool, batch_size: int, crop: int) -> dict[str, Any]:
    """The celeb1k MobileNetV2-DeepLabv3+ trial on the GPU, on the built-in synthetic data (nothing to fetch)."""
    from hairseg_core.config import load_train_config

    cfg = load_train_config(CONFIG).model_dump()
    cfg.update(
        dataset="synthetic",
        data_root=None,
        pretrained="none",
        device="cuda",
        amp=amp,
        channels_last=channels_last,
        batch_size=batch_size,
        crop_size=crop,
        base_size=crop,
        eval_size=crop,
        num_workers=0,
        epochs=1,
    )
    return cfg


def train_images_per_s(
    amp: bool, channels_last: bool, batch_size: int, crop: int, steps: int, warmup: int
) -> dict[str, float]:
    """Time ``steps`` training steps after ``warmup`` on this process's CUDA device."""
    import torch

    from hairseg_core.config import train_config_from_dict
    from hairseg_core.losses import mixed_loss
    from hairseg_core.train import Trainer

    trainer = Trainer(train_config_from_dict(trial_config(amp, channels_last, batch_size, crop)))
    device = trainer.device
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randn(batch_size, 3, crop, crop, device=device, generator=generator)
    masks = torch.randint(0, 2, (batch_size, crop, crop), device=device, generator=generator)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    model = trainer.model.train()

    def step() -> None:
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=trainer.amp):
            logits = model(images)
        loss = mixed_loss(trainer.loss_fn, logits.float(), masks, masks, 1.0, image=images)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.scaler.scale(loss).backward()
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
        trainer.scheduler.step()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize(device)
    end = time.perf_counter()
    seconds = end - start
    return {
        "images_per_s": steps * batch_size / seconds,
        "images": float(steps * batch_size),
        "start": start + time.time() - time.perf_counter(),  # wall clock, comparable across processes
        "seconds": seconds,
    }


def _tune_trial(config: dict[str, Any]) -> None:
    """A Tune function trainable: one trial's timed training loop on its GPU share."""
    from ray import tune

    from hairseg_core.threads import configure_threads

    configure_threads(1)
    tune.report(
        train_images_per_s(
            config["amp"],
            config["channels_last"],
            config["batch_size"],
            config["crop"],
            config["steps"],
            config["warmup"],
        )
    )


def shared_gpu(trials: int, settings: dict[str, Any]) -> dict[str, Any]:
    """``trials`` concurrent Tune trials with ``resources.gpu = 1 / trials``; aggregate images/s."""
    from ray import tune

    # Each trial warms up before its timed span; the aggregate counts the spans from the first
    # start to the last end, so a trial still warming up while another is timed slows the figure honestly.
    share = 1.0 / trials
    trainable = tune.with_resources(_tune_trial, {"cpu": 1, "gpu": share})
    with tempfile.TemporaryDirectory(prefix="hairseg-gpu-bench-") as storage:
        tuner = tune.Tuner(
            trainable,
            param_space={**settings, "index": tune.grid_search(list(range(trials)))},
            tune_config=tune.TuneConfig(max_concurrent_trials=trials),
            run_config=tune.RunConfig(storage_path=storage, name=f"share{trials}", verbose=0),
        )
        grid = tuner.fit()
    if grid.errors:
        raise RuntimeError(f"{len(grid.errors)} trial(s) failed: {grid.errors[0]}")
    metrics = [result.metrics for result in grid]
    first = min(m["start"] for m in metrics)
    last = max(m["start"] + m["seconds"] for m in metrics)
    images = sum(m["images"] for m in metrics)
    return {
        "gpu_per_trial": share,
        "aggregate_images_per_s": images / (last - first),
        "per_trial_images_per_s": [round(m["images_per_s"], 1) for m in metrics],
        "overlap_s": last - first,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=193, help="square training crop (px)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (single-trial part)")
    parser.add_argument("--trials", type=int, nargs="+", default=[1, 2, 4], help="concurrent trials on one GPU")
    parser.add_argument("--no-tune", action="store_true", help="only the AMP x channels-last table")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
        print(json.dumps({"skipped": True, "reason": "no CUDA device"}))
        return 0

    result: dict[str, Any] = {"skipped": False, "device": torch.cuda.get_device_name(0), "batch_size": args.batch_size}
    result["crop"] = args.crop
    print(f"{result['device']}: batch {args.batch_size} x {args.crop} px, {args.steps} steps", flush=True)
    single: dict[str, float] = {}
    for amp in (False, True):
        for channels_last in (False, True):
            key = f"amp={'on' if amp else 'off'},channels_last={'on' if channels_last else 'off'}"
            figures = train_images_per_s(amp, channels_last, args.batch_size, args.crop, args.steps, args.warmup)
            single[key] = round(figures["images_per_s"], 1)
            print(f"  {key}: {single[key]} images/s", flush=True)
    result["single_trial_images_per_s"] = single

    if not args.no_tune:
        import ray

        # The fastest single-trial setting is what a sweep would use: share the GPU with that one.
        best = max(single, key=single.__getitem__)
        amp, channels_last = (part.split("=")[1] == "on" for part in best.split(","))
        settings = {
            "amp": amp,
            "channels_last": channels_last,
            "batch_size": args.batch_size,
            "crop": args.crop,
            "steps": args.steps,
            "warmup": args.warmup,
        }
        pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        ray.init(
            num_cpus=max(args.trials),
            num_gpus=1,
            include_dashboard=False,
            runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        )
        try:
            shared: dict[str, Any] = {}
            for trials in args.trials:
                shared[str(trials)] = shared_gpu(trials, settings)
                row = shared[str(trials)]
                print(
                    f"  {trials} trial(s) at gpu {row['gpu_per_trial']:.2f}: "
                    f"{row['aggregate_images_per_s']:.1f} images/s aggregate {row['per_trial_images_per_s']}",
                    flush=True,
                )
        finally:
            ray.shutdown()
        result["shared_gpu"] = {"settings": best, "by_trials": shared}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
