"""Hyperparameter sweep: Ray Tune + Optuna + ASHA over a search space, tracked in MLflow.

    python pipelines/sweep.py                                  # laptop: local Ray, ./mlruns.db, synthetic data
    python pipelines/sweep.py --space search_spaces/paper.yaml --address auto \\
        --storage s3://bucket/hairseg --tracking-uri http://HEAD_IP:5000  # on a `ray up` cluster
    python pipelines/sweep.py --resume                         # continue the newest interrupted sweep

At the end the final stage (pipelines/finalize.py) evaluates CRF / matting on the best model,
exports the webcam model and promotes it in the MLflow registry, unless --no-finalize.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a clone without installing: python pipelines/sweep.py
    sys.path.insert(0, str(REPO))

from hairseg_core.config import ConfigError, load_search_space  # noqa: E402
from hairseg_core.tracking import (  # noqa: E402
    Tracker,
    TrackingUnavailable,
    check_tracking,
    default_artifact_location,
    resolve_tracking_uri,
    ui_command,
)

log = logging.getLogger("hairseg.sweep")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default=str(REPO / "search_spaces" / "default.yaml"), help="search space YAML")
    p.add_argument("--num-samples", type=int, help="override the space's num_samples")
    p.add_argument("--max-concurrent", type=int, help="override max_concurrent_trials")
    p.add_argument(
        "--experiment", help="MLflow experiment and Tune run prefix (default: hairseg-<space name>)"
    )
    p.add_argument(
        "--address", help="Ray cluster address ('auto' on a cluster node); default: start local Ray"
    )
    p.add_argument("--storage", help="Tune storage: local path, s3://... or gs://... (default ./ray_results)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or ./mlruns.db)")
    p.add_argument(
        "--resume", action="store_true", help="continue the newest (or --run-name) interrupted sweep"
    )
    p.add_argument("--run-name", help="Tune run name to create or resume (default: <experiment>-<timestamp>)")
    p.add_argument(
        "--no-finalize", action="store_true", help="skip CRF/matting evaluation, export, promotion"
    )
    p.add_argument("--num-cpus", type=int, help="CPUs for the local Ray instance (default: all)")
    p.add_argument("--quiet", action="store_true", help="less Ray output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # 1. Everything that can be checked without Ray is checked first.
    try:
        space = load_search_space(
            args.space, {"num_samples": args.num_samples, "max_concurrent_trials": args.max_concurrent}
        )
    except ConfigError as exc:
        print(f"invalid search space:\n{exc}", file=sys.stderr)
        return 2
    experiment = args.experiment or f"hairseg-{space.name}"
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    try:
        check_tracking(tracking_uri)
    except TrackingUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # Ray workers inherit it
    # "local" rather than None: ray.init(address=None) joins whatever cluster
    # /tmp/ray/ray_current_cluster names (a `ray start`, or a crashed run's stale leftover that
    # then hangs the sweep) instead of starting the local Ray this command promises.
    address = args.address or os.environ.get("RAY_ADDRESS") or "local"
    problem = check_ray_address(address)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    import ray

    from hairseg_core import tune as hs_tune

    storage = args.storage or hs_tune.default_storage_path()
    if args.resume:
        name = args.run_name or hs_tune.latest_sweep(storage, experiment)
        if name is None:
            print(f"error: --resume: no interrupted sweep of {experiment!r} under {storage}", file=sys.stderr)
            return 2
    else:
        name = args.run_name or hs_tune.new_sweep_name(experiment)

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")  # experiment state saved often: cheap resume
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address=address,
        num_cpus=args.num_cpus if address == "local" else None,
        include_dashboard=False if address == "local" else None,
        log_to_driver=not args.quiet,
    )
    try:
        tracker = Tracker(tracking_uri, experiment, default_artifact_location(tracking_uri))
        parent = tracker.start_sweep(name, space.model_dump(), args.space)
        print(f"sweep {name}: {space.num_samples} trials of {args.space}, MLflow parent run {parent}")
        data = hs_tune.share_data(space)
        settings = hs_tune.SweepSettings(
            experiment=experiment,
            storage_path=storage,
            tracking_uri=tracking_uri,
            name=name,
            verbose=0 if args.quiet else 1,
        )
        tuner = hs_tune.build_tuner(space, settings, parent, resume=args.resume, data=data)
        started = time.perf_counter()
        results = tuner.fit()
        elapsed = time.perf_counter() - started
        rows = hs_tune.results_rows(results, space)
        study = hs_tune.optuna_study_from_results(results, space)
        best = hs_tune.best_trial(results, space)
        from hairseg_core.tracking import log_sweep_summary

        log_sweep_summary(tracker, parent, rows, study, best, space.metric)
        print_summary(rows, best, space.metric, elapsed, tracking_uri, experiment)
        status = 0
        if not args.no_finalize:
            from finalize import finalize_sweep  # pipelines/finalize.py, beside this file

            status = finalize_sweep(best=best, space=space, tracker=tracker, parent_run_id=parent, sweep=name)
        tracker.end_run(parent, "FINISHED" if status == 0 else "FAILED")
        return status
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: resume with  python pipelines/sweep.py --resume --run-name {name}"
            f" --storage {storage}",
            file=sys.stderr,
        )
        return 130
    finally:
        ray.shutdown()


def check_ray_address(address: str | None, timeout: float = 5.0) -> str | None:
    """Why a ``host:port`` cluster address is unusable, or None.

    ``ray.init`` retries an unreachable GCS forever (minutes of warnings, no exit), so a typo'd
    port or a head node that is down is caught here with one TCP connect.
    """
    if not address or address in {"auto", "local"}:
        return None
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        return f"Ray address {address!r} (--address / RAY_ADDRESS): expected host:port, ray://host:port, auto"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as exc:
        return (
            f"cannot reach the Ray cluster at {address} ({exc}). Check --address / RAY_ADDRESS, or start "
            "the head node (`ray start --head`); leave both unset to run on a local Ray instead."
        )


def print_summary(rows, best, metric: str, elapsed: float, tracking_uri: str, experiment: str) -> None:
    from hairseg_core.report import format_table

    shown = [{k: v for k, v in r.items() if k != "error" or v} for r in rows]
    print()
    print(format_table(shown, title=f"trials, best {metric} first"))
    print(f"\nbest trial {best.trial_id}: {metric} = {best.metrics.get(metric):.4f}")
    for key, value in sorted(best.config.items()):
        print(f"  {key}: {value}")
    print(f"checkpoint: {best.checkpoint_path}")
    print(f"sweep time: {elapsed / 60:.1f} min")
    print(f"MLflow: experiment {experiment!r}; open the UI with\n  {ui_command(tracking_uri)}")


if __name__ == "__main__":
    sys.exit(main())
