"""``hairseg sweep``: the hyperparameter sweep (Ray Tune + Optuna + ASHA over a search space, tracked in MLflow).

The parser needs nothing heavy: ``--help`` and a bad option answer in well under a second. Ray, torch and
MLflow are imported by :mod:`hairseg_core.cli.sweep_run` once the command line has parsed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import hairseg_core

DESCRIPTION = """\
Hyperparameter sweep: Ray Tune + Optuna + ASHA over a search space, tracked in MLflow.

    python pipelines/sweep.py                                  # laptop: local Ray, ./mlruns.db, synthetic data
    python pipelines/sweep.py --space search_spaces/paper.yaml --address auto \\
        --storage s3://bucket/hairseg --tracking-uri http://HEAD_IP:5000  # on a `ray up` cluster
    python pipelines/sweep.py --resume [--run-name NAME]       # continue a sweep after its driver died

(``hairseg sweep ...`` and ``python -m hairseg sweep ...`` are the same command.)

At the end the final stage (pipelines/finalize.py) evaluates CRF / matting on the best model,
exports the webcam model and promotes it in the MLflow registry, unless --no-finalize.
"""

#: The space a sweep runs without ``--space``: the clone's ``search_spaces/default.yaml`` (the package is
#: installed from the clone with ``pip install -e .``, so the clone is the package folder's parent).
DEFAULT_SPACE = Path(hairseg_core.__file__).resolve().parent.parent / "search_spaces" / "default.yaml"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="the hyperparameter sweep: Ray Tune + Optuna + ASHA, tracked in MLflow, then the final stage",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sweep_arguments(p)
    p.set_defaults(func=cmd_sweep)


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``pipelines/sweep.py``, as they were."""
    p.add_argument(
        "--space",
        help="search space YAML (default: search_spaces/default.yaml; with --resume: the one the sweep started with)",
    )
    p.add_argument("--num-samples", type=int, help="override the space's num_samples")
    p.add_argument("--max-concurrent", type=int, help="override max_concurrent_trials")
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override the space before validation: a training setting (epochs=1 is fixed.epochs=1) or a "
        "dotted key (scheduler.grace_period=1, finalize.max_test_images=4); a searched setting given here is "
        "pinned to that value (taken out of params and the start points); e.g. a quick smoke run",
    )
    p.add_argument("--experiment", help="MLflow experiment and Tune run prefix (default: hairseg-<space name>)")
    p.add_argument("--address", help="Ray cluster address ('auto' on a cluster node); default: start local Ray")
    p.add_argument("--storage", help="Tune storage: local path, s3://... or gs://... (default ./ray_results)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or ./mlruns.db)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue --run-name, or the newest restorable sweep under --storage (of --experiment if given)",
    )
    p.add_argument(
        "--run-name",
        help="Tune run name to create or resume (default: <experiment>-<timestamp>-<random>); a new sweep "
        "under a name that exists is refused",
    )
    p.add_argument(
        "--break-lease",
        action="store_true",
        help="with --resume: take over the sweep even though its lease names a driver that looks alive (one on "
        "another host that is gone); a dead driver on this host, or one silent for $HAIRSEG_LEASE_STALE_S "
        "(default 600) seconds, is taken over without it",
    )
    p.add_argument("--no-finalize", action="store_true", help="skip CRF/matting evaluation, export, promotion")
    p.add_argument("--num-cpus", type=int, help="CPUs for the local Ray instance (default: all)")
    p.add_argument("--quiet", action="store_true", help="less Ray output")
    p.add_argument(
        "--cluster-config",
        help="the cluster's `ray up` YAML or KubeRay RayJob: the GPU node types its autoscaler can add, for the "
        "GPU check and the cost estimate before Tune starts (default on a `ray up` head: "
        "~/ray_bootstrap_config.yaml; else what Ray's autoscaler reports)",
    )


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.space is None and not args.resume and not DEFAULT_SPACE.is_file():
        print(
            f"error: no --space given, and the default search space {DEFAULT_SPACE} is not there (it comes with "
            "a clone of the repository, installed with `pip install -e .`); pass --space FILE",
            file=sys.stderr,
        )
        return 2
    from hairseg_core.cli import sweep_run  # deferred: Ray, torch and MLflow, after argparse could exit

    return sweep_run.main(args, str(DEFAULT_SPACE))
