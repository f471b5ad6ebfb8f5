"""What Ray Tune costs per hairseg trial, and proof that a sweep decodes its dataset once per node.

Runs the same N trial configurations (the default search space's fixed settings, ``lr_head`` on
a log grid, FIFO scheduling so every trial trains to the end) three ways, one after the other
in one process, and prints wall times side by side:

* ``plain loop``   ``Trainer(cfg, data).fit()`` per configuration, torch limited to the trial's
                   CPUs: the cost of the training itself;
* ``tune, 1 at a time``   the product path (``hairseg_core.sweep.trial.run_trial`` through
                   ``tune.with_parameters`` / ``tune.with_resources``, MLflow child runs in a
                   sqlite store, a checkpoint reported every epoch), one trial at a time: the
                   ratio to the plain loop is Tune + MLflow + checkpoint overhead;
* ``tune, parallel``   the same with as many concurrent trials as the CPUs allow: what a
                   sweep on this machine actually gets.

Dataset sharing, measured rather than assumed: the driver decodes the splits once
(``load_trial_data``, timed); every trial records how many times it decoded data itself (a
counting wrapper around ``load_trial_data`` in the worker), whether the arrays it received are
read-only zero-copy views of the node's object store, and in which process/node it ran. The
time for a worker to fetch the shared object (``ray.get`` in a task) is printed next to the
decode time it replaces.

    .venv/bin/python benchmarks/sweep_overhead.py                 # 4 trials x 3 epochs x 20 steps
    .venv/bin/python benchmarks/sweep_overhead.py --trials 8 --epochs 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
import torch  # noqa: E402
from ray import tune  # noqa: E402

from hairseg_core import train as train_module  # noqa: E402
from hairseg_core.config import load_search_space  # noqa: E402
from hairseg_core.sweep.callbacks import MlflowStatusCallback  # noqa: E402
from hairseg_core.sweep.trial import TrackingSettings, run_trial  # noqa: E402
from hairseg_core.sweep.tuner import REUSE_ACTORS  # noqa: E402
from hairseg_core.tracking import Tracker  # noqa: E402
from hairseg_core.train import Trainer, TrialData, load_trial_data  # noqa: E402


def measured_trial(
    config: dict[str, Any], fixed: dict[str, Any], tracking: TrackingSettings, data: TrialData, report_dir: str
) -> None:
    """``run_trial`` plus a record of where it ran and whether it decoded any data itself."""
    decodes = 0
    original = train_module.load_trial_data

    def counting(*args: Any, **kwargs: Any) -> TrialData:
        nonlocal decodes
        decodes += 1
        return original(*args, **kwargs)

    train_module.load_trial_data = counting  # Trainer looks it up in its module at call time
    started = time.perf_counter()
    try:
        run_trial(config, fixed, tracking, data)
    finally:
        train_module.load_trial_data = original
        arrays = [*data.train.images, *data.train.masks, *data.val.images, *data.val.masks]
        record = {
            "trial_id": tune.get_context().get_trial_id(),
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "decodes_in_trial": decodes,
            "zero_copy_arrays": sum(not a.flags.writeable for a in arrays),
            "arrays": len(arrays),
            "seconds": time.perf_counter() - started,
        }
        Path(report_dir, f"{record['trial_id']}.json").write_text(json.dumps(record))


@ray.remote(num_cpus=0)
def fetch_seconds(boxed: list[ray.ObjectRef]) -> tuple[float, bool]:
    """Time for a worker to get the shared dataset (the ref is boxed so Ray does not resolve it first)."""
    start = time.perf_counter()
    data = ray.get(boxed[0])
    return time.perf_counter() - start, not data.train.images[0].flags.writeable


def trial_configs(n: int) -> list[float]:
    """``lr_head`` values on a log grid over the default space's range."""
    low, high = 5e-4, 1e-2
    return [low * (high / low) ** (i / max(1, n - 1)) for i in range(n)]


def plain_loop(fixed: dict[str, Any], lrs: list[float], data: TrialData, cpus: int) -> float:
    torch.set_num_threads(cpus)
    start = time.perf_counter()
    for lr in lrs:
        for _ in Trainer({**fixed, "lr_head": lr}, data=data, cpus=cpus).fit():
            pass
    return time.perf_counter() - start


def tune_run(
    fixed: dict[str, Any],
    lrs: list[float],
    data: TrialData,
    cpus: int,
    concurrency: int,
    workdir: Path,
    reuse: bool = REUSE_ACTORS,
) -> tuple[float, list[dict[str, Any]], int]:
    """Wall seconds, per-trial records, and the number of MLflow child runs created."""
    uri = f"sqlite:///{workdir / 'mlruns.db'}"
    experiment, sweep = "sweep-overhead", f"overhead-c{concurrency}"
    tracker = Tracker(uri, experiment, str(workdir / "mlartifacts"))
    parent = tracker.start_sweep(sweep, {"fixed": fixed, "lr_head": lrs})
    tracking = TrackingSettings(uri, experiment, sweep, parent)
    reports = workdir / "trials"
    reports.mkdir()
    trainable = tune.with_parameters(measured_trial, fixed=fixed, tracking=tracking, data=data, report_dir=str(reports))
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": cpus}),
        param_space={"lr_head": tune.grid_search(lrs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=reuse),
        run_config=tune.RunConfig(
            name=sweep,
            storage_path=str(workdir / "ray_results"),
            callbacks=[MlflowStatusCallback(tracking, fixed["epochs"])],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        ),
    )
    start = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - start
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} trial(s) failed: {errors[0]}")
    records = [json.loads(p.read_text()) for p in sorted(reports.glob("*.json"))]
    return wall, records, len(tracker.trial_runs(sweep))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default=str(ROOT / "search_spaces" / "default.yaml"), help="fixed settings from")
    p.add_argument("--trials", type=int, default=4, help="0: only the dataset decode/fetch measurement")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="training steps per epoch")
    p.add_argument("--cpus-per-trial", type=int, default=1)
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument(
        "--no-reuse-actors",
        action="store_true",
        help="a fresh worker process per trial (Tune's default) instead of the sweep's reuse_actors",
    )
    args = p.parse_args()

    space = load_search_space(args.space)
    fixed = {**space.fixed, "epochs": args.epochs, "max_steps_per_epoch": args.steps}
    lrs = trial_configs(args.trials)
    cfg = space.trial_config({})
    cfg = cfg.model_copy(update={"epochs": args.epochs})

    load_trial_data(cfg)  # first use may generate the synthetic cache: not part of the decode time
    decode_s = []
    for _ in range(3):
        start = time.perf_counter()
        data = load_trial_data(cfg)
        decode_s.append(time.perf_counter() - start)
    data_mb = (data.train.nbytes + data.val.nbytes) / 2**20

    total_cpus = os.cpu_count() or 1
    parallel = max(1, total_cpus // args.cpus_per_trial)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    start = time.perf_counter()
    ray.init(address="local", num_cpus=total_cpus, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - start
    try:
        ref = ray.put(data)
        fetches = [ray.get(fetch_seconds.remote([ref])) for _ in range(5)]
        fetch_s = statistics.median(f[0] for f in fetches)

        plain = plain_loop(fixed, lrs, data, args.cpus_per_trial) if args.trials else float("nan")
        runs = {}
        for concurrency in sorted({1, parallel}) if args.trials else []:
            with tempfile.TemporaryDirectory(prefix="hairseg-overhead-") as tmp:
                runs[concurrency] = tune_run(
                    fixed, lrs, data, args.cpus_per_trial, concurrency, Path(tmp), reuse=not args.no_reuse_actors
                )
    finally:
        ray.shutdown()

    print(
        f"\n{platform.processor() or platform.machine()}, {total_cpus} CPUs; {args.trials} trials x {args.epochs} "
        f"epochs x {args.steps} steps ({space.fixed.get('backbone')}, crop {space.fixed.get('crop_size')}), "
        f"{args.cpus_per_trial} CPU per trial; ray.init {ray_init_s:.1f} s (not counted below)\n"
    )
    if args.trials:
        print(f"{'run':<24}{'wall s':>9}{'per trial s':>13}{'x plain':>9}")
        rows = {"plain loop": plain, **{f"tune, {c} at a time": runs[c][0] for c in runs}}
        for name, wall in rows.items():
            print(f"{name:<24}{wall:>9.1f}{wall / args.trials:>13.1f}{wall / plain:>9.2f}")
    print("\ndataset sharing")
    print(
        f"  decoded train+val ({len(data.train)}+{len(data.val)} images, {cfg.dataset}) once on the driver: "
        f"median {statistics.median(decode_s):.2f} s, {data_mb:.0f} MiB"
    )
    print(
        f"  object-store fetch by a worker: median {fetch_s * 1000:.1f} ms "
        f"({statistics.median(decode_s) / fetch_s:.0f}x faster than decoding again)"
    )
    figures: dict[str, Any] = {
        "cpus": total_cpus,
        "trials": args.trials,
        "epochs": args.epochs,
        "steps": args.steps,
        "plain_s": plain,
        "decode_s": decode_s,
        "fetch_s": fetch_s,
        "data_mib": data_mb,
    }
    for concurrency, (wall, records, child_runs) in runs.items():
        decodes = sum(r["decodes_in_trial"] for r in records)
        zero_copy = all(r["zero_copy_arrays"] == r["arrays"] for r in records)
        print(
            f"  tune, {concurrency} at a time: {len(records)} trials in {len({r['pid'] for r in records})} worker "
            f"processes on {len({r['node_id'] for r in records})} node(s); decodes inside trials: {decodes}; "
            f"all arrays zero-copy object-store views: {zero_copy}; MLflow child runs: {child_runs}"
        )
        figures[f"tune_c{concurrency}"] = {"wall_s": wall, "trials": records, "mlflow_child_runs": child_runs}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    if args.trials:  # the last line: the ratios side by side, as JSON
        print(json.dumps({f"tune_{c}x_vs_plain": round(runs[c][0] / plain, 3) for c in runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
