"""The run behind ``hairseg sweep`` once its command line is parsed: checks, the Ray connection, the sweep.

This module owns the Ray connection (``ray.init`` / ``ray.shutdown``); the rest of the library never calls
``ray.init``. It imports Ray, torch and MLflow: only :mod:`hairseg_core.cli.sweep` imports it, after argparse.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import ray

from hairseg_core.search.driver import PreparedSweep, SweepRequest, prepare_sweep, run_sweep
from hairseg_core.search.gpu_plan import (
    ClusterConfigUnreadable,
    ClusterView,
    NodeShape,
    live_nodes,
    node_types_from_file,
    node_types_from_max_resources,
    torch_gpus,
)
from hairseg_core.search.gpu_preflight import check_cluster, this_machine


def sweep_request(args: argparse.Namespace, default_space: str) -> SweepRequest:
    """The parsed command line as a ``SweepRequest``."""
    return SweepRequest(
        default_space=default_space,
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


def _before_inputs(sweep: PreparedSweep) -> int | None:
    """A local Ray is this machine: whether torch can use a GPU here is known without Ray, so a space
    asking for GPUs on a laptop fails in seconds, before the weights and the data are read."""
    if sweep.address != "local":
        return None
    return check_cluster(sweep, this_machine(sweep.request.num_cpus), estimate=False)


def main(args: argparse.Namespace, default_space: str) -> int:
    """The sweep; its exit status (2 with one ``error:`` line for what can be checked before Tune)."""
    # Our progress at INFO; libraries (onnx exporter passes, alembic) only when something is wrong.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    for name in ("hairseg", "hairseg_core"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        node_types = node_types_from_file(args.cluster_config) if args.cluster_config else None
    except ClusterConfigUnreadable as exc:
        print(f"error: --cluster-config: {exc}", file=sys.stderr)
        return 2

    sweep = prepare_sweep(sweep_request(args, default_space), check_cluster=_before_inputs)  # checks without Ray
    if isinstance(sweep, int):
        return sweep
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")  # experiment state saved often: cheap resume
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A local Ray prestarts one idle Python worker per CPU (~80 MiB each) for tasks; Tune's trial actors
    # never take one (benchmarks/README.md, "Sweep overhead"), so on a sweep they are memory for nothing.
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    try:
        ray.init(**sweep.ray_init_kwargs())
        # What the cluster has (and its autoscaler could add) against what the space asks, before Tune:
        # Tune would otherwise wait for ever for resources no node has.
        status = check_cluster(sweep, cluster_view(sweep.address, node_types, args.cluster_config))
        if status:
            return status
        return run_sweep(sweep)
    finally:
        ray.shutdown()
        sweep.release()  # the sweep's lease: another driver may take the sweep over now


def _autoscaler_node_types() -> list[NodeShape]:
    """The ceiling Ray's autoscaler reports to the GCS (private API: see :func:`cluster_view`); [] if none."""
    try:
        from ray._private.state import state  # private: imported only where it is used, and may move

        return node_types_from_max_resources(state.get_max_resources_from_cluster_config())
    except Exception:  # not reported, or the private API moved: the live nodes are what is known
        return []


def cluster_view(address: str, node_types: list[NodeShape] | None, cluster_config: str | None) -> ClusterView:
    """What the connected Ray cluster has and could add, and what torch can use on this node.

    The node types an autoscaler can add come from, in order: ``--cluster-config``; on a `ray up` head, the
    autoscaler's own copy of the cluster YAML (``~/ray_bootstrap_config.yaml``); else the ceiling Ray's
    autoscaler reports to the GCS (``ray._private.state.state.get_max_resources_from_cluster_config``: a
    private API, the one Ray Train uses for the same check; KubeRay and autoscaler v2 report it). None of
    them: the live nodes are the whole cluster.
    """
    types, source = list(node_types or []), cluster_config
    bootstrap = Path("~/ray_bootstrap_config.yaml").expanduser()
    if node_types is None and address != "local" and bootstrap.is_file():
        try:
            types, source = node_types_from_file(bootstrap), str(bootstrap)
        except ClusterConfigUnreadable:
            types, source = [], None
    if not types and node_types is None and address != "local":
        types = _autoscaler_node_types()
        source = "Ray's autoscaler" if types else None
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
