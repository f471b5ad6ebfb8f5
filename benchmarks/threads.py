"""Training steps/s at 1 and 2 torch threads, on an idle machine and next to a competing busy process.

Why: oversubscribed intra-op threads collapse instead of degrading (issue #20: 8-9 s per step with
torch's default two threads on a loaded 2-core machine, 1.1 s with one), which is what
``hairseg_core.threads`` guards against. Each measurement is a fresh subprocess that sets its threads
through :func:`hairseg_core.threads.configure_threads` (as ``hairseg train --threads N`` does), builds
the ImageNet MobileNetV2-DeepLabv3+ of ``configs/celeb1k_mobilenet_v2.yaml`` on celeb1k, and times
``--steps`` training steps (forward, loss, backward, optimizer, scheduler: the Trainer's own model,
loss, optimizer and batches; batches are drawn before timing, so the figure is the network's) after
``--warmup`` untimed ones. "busy" runs the same next to ``python -c 'while True: pass'`` (one core).

    .venv/bin/python benchmarks/threads.py                         # 15 steps after 3, 1 repeat
    .venv/bin/python benchmarks/threads.py --steps 8 --warmup 2 --repeats 2

The load average (``os.getloadavg``) before and after every measurement is printed and kept in the
result: on a shared machine it says how much else was running. The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hairseg_core.threads import available_cpus, thread_env  # noqa: E402

CONFIG = ROOT / "configs" / "celeb1k_mobilenet_v2.yaml"
BUSY_LOOP = "while True: pass"


def measure(threads: int, steps: int, warmup: int, data_root: str) -> dict[str, float]:
    """In this process: ``threads`` threads, ``warmup`` + ``steps`` training steps; seconds per timed step."""
    from hairseg_core.threads import configure_threads

    configure_threads(threads)
    import torch

    from hairseg_core.config import load_train_config, train_config_from_dict
    from hairseg_core.train.losses import mixed_loss
    from hairseg_core.train.trainer import Trainer

    cfg = load_train_config(CONFIG).model_dump()
    # num_workers 0: augmentation would otherwise run in a loader process competing for the same cores
    cfg.update({"data_root": data_root, "epochs": 1, "num_workers": 0, "device": "cpu"})
    trainer = Trainer(train_config_from_dict(cfg), cpus=threads)
    batches = []
    for batch in trainer.train_loader:
        batches.append(batch)
        if len(batches) == warmup + steps:
            break
    model, optimizer = trainer.model.train(), trainer.optimizer
    times: list[float] = []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        logits = model(batch["image"])
        loss = mixed_loss(trainer.loss_fn, logits.float(), batch["mask"], batch["mask"], 1.0, image=batch["image"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        trainer.scheduler.step()
        loss.item()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "threads": torch.get_num_threads(),
        "s_per_step": median,
        "steps_per_s": 1.0 / median,
        "steps": len(times),
    }


def run_child(threads: int, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in a fresh interpreter (torch's pools are sized once per process)."""
    cmd = [sys.executable, __file__, "--child", str(threads), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--data-root", args.data_root]
    env = {**os.environ, **thread_env(threads)}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child with {threads} threads failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(load_before=load_before, load_after=os.getloadavg()[0], wall_s=time.perf_counter() - start)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=1, help="measurements per setting (median reported)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "celeb1k"))
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(measure(args.child, args.steps, args.warmup, args.data_root)))
        return 0

    print(f"CPUs available: {available_cpus()}; load average at start {os.getloadavg()}", flush=True)
    results: dict[str, Any] = {"available_cpus": available_cpus(), "steps": args.steps, "warmup": args.warmup}
    for condition in ("idle", "busy"):
        busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if condition == "busy" else None
        try:
            for threads in args.threads:
                runs = [run_child(threads, args) for _ in range(args.repeats)]
                s_per_step = statistics.median(r["s_per_step"] for r in runs)
                row = {
                    "s_per_step": s_per_step,
                    "steps_per_s": 1.0 / s_per_step,
                    "load_before": [round(r["load_before"], 2) for r in runs],
                    "load_after": [round(r["load_after"], 2) for r in runs],
                    "runs_s_per_step": [round(r["s_per_step"], 3) for r in runs],
                }
                results[f"{condition}/{threads}"] = row
                print(
                    f"{condition:>4}  {threads} thread(s): {row['steps_per_s']:.3f} steps/s ({s_per_step:.3f} s/step)"
                    f"  load {row['load_before']} -> {row['load_after']}",
                    flush=True,
                )
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
