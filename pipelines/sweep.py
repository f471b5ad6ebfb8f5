"""Hyperparameter sweep: Ray Tune + Optuna + ASHA over a search space, tracked in MLflow.

    python pipelines/sweep.py                                  # laptop: local Ray, ./mlruns.db, synthetic data
    python pipelines/sweep.py --space search_spaces/paper.yaml --address auto \\
        --storage s3://bucket/hairseg --tracking-uri http://HEAD_IP:5000  # on a `ray up` cluster
    python pipelines/sweep.py --resume [--run-name NAME]       # continue a sweep after its driver died

At the end the final stage (pipelines/finalize.py) evaluates CRF / matting on the best model,
exports the webcam model and promotes it in the MLflow registry, unless --no-finalize.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a clone without installing: python pipelines/sweep.py
    sys.path.insert(0, str(REPO))

if TYPE_CHECKING:
    from hairseg_core.search.driver import PreparedSweep, SweepRequest
    from hairseg_core.search.gpu_plan import ClusterView, NodeShape

DEFAULT_SPACE = str(REPO / "search_spaces" / "default.yaml")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    return p


def parse_args(argv: list[str] | None = None) -> SweepRequest:
    """The command line as a ``SweepRequest`` (the driver is imported after ``--help`` could exit)."""
    from hairseg_core.search.driver import SweepRequest  # imports Ray's modules; connects to nothing

    args = build_parser().parse_args(argv)
    return SweepRequest(
        default_space=DEFAULT_SPACE,
        space_file=args.space,
        num_samples=args.num_samples,
        max_concurrent=args.max_concurrent,
        set_pairs=tuple(args.set),
        experiment=args.experiment,
        address=args.address,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        resume=args.resume,
        run_name=args.run_name,
        finalize=not args.no_finalize,
        num_cpus=args.num_cpus,
        quiet=args.quiet,
        break_lease=args.break_lease,
    )


def main(argv: list[str] | None = None) -> int:
    # Our progress at INFO; libraries (onnx exporter passes, alembic) only when something is wrong.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    for name in ("hairseg", "hairseg_core"):
        logging.getLogger(name).setLevel(logging.INFO)
    from hairseg_core.search.driver import prepare_sweep, run_sweep  # deferred: torch and Ray, as in parse_args
    from hairseg_core.search.gpu_plan import ClusterConfigUnreadable, node_types_from_file
    from hairseg_core.search.gpu_preflight import check_cluster, this_machine

    cluster_config = build_parser().parse_args(argv).cluster_config
    try:
        node_types = node_types_from_file(cluster_config) if cluster_config else None
    except ClusterConfigUnreadable as exc:
        print(f"error: --cluster-config: {exc}", file=sys.stderr)
        return 2

    def before_inputs(sweep: PreparedSweep) -> int | None:
        """A local Ray is this machine: whether torch can use a GPU here is known without Ray, so a space
        asking for GPUs on a laptop fails in seconds, before the weights and the data are read."""
        if sweep.address != "local":
            return None
        return check_cluster(sweep, this_machine(sweep.request.num_cpus), estimate=False)

    sweep = prepare_sweep(parse_args(argv), check_cluster=before_inputs)  # everything checkable without Ray
    if isinstance(sweep, int):
        return sweep
    import ray  # this entry point owns the Ray connection; the library never calls ray.init

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")  # experiment state saved often: cheap resume
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A local Ray prestarts one idle Python worker per CPU (~80 MiB each) for tasks; Tune's trial actors
    # never take one (benchmarks/README.md, "Sweep overhead"), so on a sweep they are memory for nothing.
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    try:
        ray.init(**sweep.ray_init_kwargs())
        # What the cluster has (and its autoscaler could add) against what the space asks, before Tune:
        # Tune would otherwise wait for ever for resources no node has.
        status = check_cluster(sweep, cluster_view(sweep.address, node_types, cluster_config))
        if status:
            return status
        return run_sweep(sweep)
    finally:
        ray.shutdown()
        sweep.release()  # the sweep's lease: another driver may take the sweep over now


def cluster_view(address: str, node_types: list[NodeShape] | None, cluster_config: str | None) -> ClusterView:
    """What the connected Ray cluster has and could add, and what torch can use on this node.

    The node types an autoscaler can add come from, in order: ``--cluster-config``; on a `ray up` head, the
    autoscaler's own copy of the cluster YAML (``~/ray_bootstrap_config.yaml``); else the ceiling Ray's
    autoscaler reports to the GCS (``ray._private.state.state.get_max_resources_from_cluster_config``: a
    private API, the one Ray Train uses for the same check; KubeRay and autoscaler v2 report it). None of
    them: the live nodes are the whole cluster.
    """
    import ray

    from hairseg_core.search.gpu_plan import (
        ClusterConfigUnreadable,
        ClusterView,
        live_nodes,
        node_types_from_file,
        node_types_from_max_resources,
        torch_gpus,
    )

    types, source = list(node_types or []), cluster_config
    bootstrap = Path("~/ray_bootstrap_config.yaml").expanduser()
    if node_types is None and address != "local" and bootstrap.is_file():
        try:
            types, source = node_types_from_file(bootstrap), str(bootstrap)
        except ClusterConfigUnreadable:
            types, source = [], None
    if not types and node_types is None and address != "local":
        try:
            from ray._private.state import state  # private: see the docstring

            types = node_types_from_max_resources(state.get_max_resources_from_cluster_config())
            source = "Ray's autoscaler" if types else None
        except Exception:  # not reported, or the private API moved: the live nodes are what is known
            types, source = [], None
    gpus, name, memory, problem = torch_gpus()
    return ClusterView(
        address=address,
        nodes=live_nodes(ray.nodes()),
        node_types=tuple(types),
        node_types_source=source,
        torch_gpus=gpus,
        torch_gpu_name=name,
        torch_gpu_memory_gib=memory,
        torch_problem=problem,
    )


if __name__ == "__main__":
    sys.exit(main())
