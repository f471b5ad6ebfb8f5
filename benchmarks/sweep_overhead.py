"""What Ray Tune costs per hairseg trial, and proof that a sweep decodes its dataset once per node.

Runs the same N trial configurations (the default search space's fixed settings, ``lr_head`` on
a log grid, FIFO scheduling so every trial trains to the end) three ways, one after the other
in one process, and prints wall times side by side:

* ``plain loop``   ``Trainer(cfg, data).fit()`` per configuration, with the threads a trial gets
                   (``configure_threads``: torch, OpenCV, OpenMP): the cost of the training itself;
* ``tune, 1 at a time``   the product path (``hairseg_core.search.trial.run_trial`` through
                   ``tune.with_parameters`` / ``tune.with_resources``, MLflow child runs in a
                   sqlite store, a checkpoint reported every epoch), one trial at a time: the
                   ratio to the plain loop is Tune + MLflow + checkpoint overhead;
* ``tune, parallel``   the same with as many concurrent trials as the CPUs allow: what a
                   sweep on this machine actually gets.

Where the Tune path's extra time goes is printed after the table (one trial at a time): the start
of ``tuner.fit()`` until the first trial runs (once per sweep: a worker process importing torch, Ray
and MLflow, and Tune's setup), the first trial, and trials 2..N start to start against the same
configurations in the plain loop (the per-trial cost once the worker is warm, ``reuse_actors``),
with the epochs' own ``epoch_seconds`` beside it (training compute inside a Ray worker against the
driver). The last line is JSON: ``tune_1x_vs_plain`` and ``tune_2x_vs_plain`` (whole walls) and
``tune_1x_warm_vs_plain`` (trials 2..N).

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
import itertools
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
from ray import tune  # noqa: E402

from hairseg_core import train as train_module  # noqa: E402
from hairseg_core.config import load_search_space  # noqa: E402
from hairseg_core.search.callbacks import MlflowStatusCallback  # noqa: E402
from hairseg_core.search.trial import TrackingSettings, run_trial  # noqa: E402
from hairseg_core.search.tuner import REUSE_ACTORS  # noqa: E402
from hairseg_core.threads import configure_threads  # noqa: E402
from hairseg_core.track.runs import Tracker  # noqa: E402
from hairseg_core.track.tags import TAG_TRIAL  # noqa: E402
from hairseg_core.train.trainer import Trainer, TrialData, load_trial_data  # noqa: E402


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
            "ended_at": time.time(),  # wall clock: trials ran in other processes
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


def plain_loop(
    fixed: dict[str, Any], lrs: list[float], data: TrialData, cpus: int
) -> tuple[float, list[float], list[float]]:
    """Wall seconds of the whole loop, of each configuration, and of each configuration's epochs.

    Threads as a trial sets them (torch, OpenCV, OpenMP: ``configure_threads``): with OpenCV's default
    pool the loop's augmentation would use both cores while the trial's uses one.
    """
    configure_threads(cpus)
    start = time.perf_counter()
    each: list[float] = []
    epoch_s: list[float] = []
    for lr in lrs:
        one = time.perf_counter()
        epochs = [r["epoch_seconds"] for r in Trainer({**fixed, "lr_head": lr}, data=data, cpus=cpus).fit()]
        each.append(time.perf_counter() - one)
        epoch_s.append(sum(epochs))
    return time.perf_counter() - start, each, epoch_s


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
    started_at = time.time()
    start = time.perf_counter()
    results = tuner.fit()
    wall = time.perf_counter() - start
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"{len(errors)} trial(s) failed: {errors[0]}")
    records = [json.loads(p.read_text()) for p in sorted(reports.glob("*.json"))]
    for record in records:
        record["started_s"] = record["ended_at"] - record["seconds"] - started_at  # after tuner.fit() began
    trial_runs = tracker.trial_runs(sweep)
    epochs_s = {r.data.tags[TAG_TRIAL]: _epoch_seconds(tracker, r.info.run_id) for r in trial_runs}
    for record in records:
        record["epochs_s"] = epochs_s.get(record["trial_id"], float("nan"))
    return wall, records, len(trial_runs)


def _epoch_seconds(tracker: Tracker, run_id: str) -> float:
    """The trial's training + precise BN + validation time, as its epochs logged it (``epoch_seconds``)."""
    return sum(m.value for m in tracker.client.get_metric_history(run_id, "epoch_seconds"))


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

        before = plain_loop(fixed, lrs, data, args.cpus_per_trial) if args.trials else (float("nan"), [], [])
        runs = {}
        for concurrency in sorted({1, parallel}) if args.trials else []:
            with tempfile.TemporaryDirectory(prefix="hairseg-overhead-") as tmp:
                runs[concurrency] = tune_run(
                    fixed, lrs, data, args.cpus_per_trial, concurrency, Path(tmp), reuse=not args.no_reuse_actors
                )
        if args.trials:
            after = plain_loop(fixed, lrs, data, args.cpus_per_trial)
    finally:
        ray.shutdown()
    # The plain loop ran first and again last: this machine drifts by several per cent over minutes,
    # so the baseline is the mean of the two, and the drift is printed.
    if args.trials:
        plain = (before[0] + after[0]) / 2
        plain_each = [(a + b) / 2 for a, b in zip(before[1], after[1], strict=True)]
        plain_epochs = [(a + b) / 2 for a, b in zip(before[2], after[2], strict=True)]
        drift = after[0] / before[0]
    else:
        plain, plain_each, plain_epochs, drift = float("nan"), [], [], float("nan")

    print(
        f"\n{platform.processor() or platform.machine()}, {total_cpus} CPUs; {args.trials} trials x {args.epochs} "
        f"epochs x {args.steps} steps ({space.fixed.get('backbone')}, crop {space.fixed.get('crop_size')}), "
        f"{args.cpus_per_trial} CPU per trial; ray.init {ray_init_s:.1f} s (not counted below)\n"
    )
    if args.trials:
        print(f"{'run':<24}{'wall s':>9}{'per trial s':>13}{'x plain':>9}")
        rows = {"plain loop (mean)": plain, "  first": before[0], "  last": after[0]}
        rows.update({f"tune, {c} at a time": runs[c][0] for c in runs})
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
        "plain_first_s": before[0] if args.trials else None,
        "plain_last_s": after[0] if args.trials else None,
        "plain_drift": drift,
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
    split: dict[str, float] = {}
    if args.trials > 1:  # where the overhead goes, one trial at a time
        wall1, records1 = runs[1][0], sorted(runs[1][1], key=lambda r: r["started_s"])
        starts = [r["started_s"] for r in records1] + [wall1]
        per_trial = [b - a for a, b in itertools.pairwise(starts)]  # a trial's start to the next one's
        split = {
            "first_trial_starts_s": starts[0],
            "first_trial_s": per_trial[0],
            "plain_first_s": plain_each[0],
            "later_trial_s": statistics.mean(per_trial[1:]),
            "plain_later_s": statistics.mean(plain_each[1:]),
            "later_inside_s": statistics.mean(r["seconds"] for r in records1[1:]),
            "later_epochs_s": statistics.mean(r["epochs_s"] for r in records1[1:]),
            "plain_later_epochs_s": statistics.mean(plain_epochs[1:]),
        }
        steady = split["later_trial_s"] / split["plain_later_s"]
        print("\nwhere the time goes, one trial at a time")
        print(
            f"  tuner.fit() to the first trial's start: {split['first_trial_starts_s']:.1f} s, once per sweep "
            "(worker process, torch/Ray/MLflow import, Tune setup)"
        )
        print(f"  first trial: {split['first_trial_s']:.2f} s against {split['plain_first_s']:.2f} s in the plain loop")
        print(
            f"  trials 2..{args.trials}: {split['later_trial_s']:.2f} s each, start to start "
            f"({split['later_inside_s']:.2f} s inside run_trial), against {split['plain_later_s']:.2f} s: "
            f"x{steady:.3f} per trial once the worker is warm"
        )
        print(
            f"  of which the epochs themselves (train, precise BN, validation; epoch_seconds): "
            f"{split['later_epochs_s']:.2f} s in the trial, {split['plain_later_epochs_s']:.2f} s in the plain loop"
        )
        figures["per_trial_split"] = split
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    if args.trials:  # the last line: the ratios side by side, as JSON
        ratios = {f"tune_{c}x_vs_plain": round(runs[c][0] / plain, 3) for c in runs}
        if split:
            ratios["tune_1x_warm_vs_plain"] = round(split["later_trial_s"] / split["plain_later_s"], 3)
        print(json.dumps(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
