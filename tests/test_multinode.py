"""The sweep on a real multi-node Ray cluster (three raylets on 127.0.0.1), via ``--address``.

This is the laptop stand-in for ``ray up`` / KubeRay: the driver is a separate process that
joins an existing cluster, the head node offers no CPUs, and each worker node has one, so two
concurrent trials must run on two different nodes. Each trial records the node it ran on in
its MLflow run (``hairseg.node_id``), which is how the test sees where trials landed.
"""

from __future__ import annotations

import pytest
from sweep_helpers import (
    LOOPBACK_DRIVER_ENV,
    Workspace,
    check_sweep_accounted,
    local_cluster,
    sweep_runs,
    tune_results,
)

pytestmark = pytest.mark.slow

NUM_SAMPLES = 4
EPOCHS = 2


def test_sweep_spreads_trials_over_worker_nodes(ws: Workspace) -> None:
    space = ws.space({"num_samples": NUM_SAMPLES, "max_concurrent_trials": 2, "fixed": {"epochs": EPOCHS}})
    ws.extra_env.update(LOOPBACK_DRIVER_ENV)
    with local_cluster(workers=2) as (cluster, workers):
        sweep = ws.run(["--space", str(space), "--address", cluster.address, "--no-finalize", "--quiet"], timeout=300)
        head_id = cluster.head_node.node_id
    assert sweep.proc.returncode == 0, sweep.describe()
    assert "Connecting to existing Ray cluster" in sweep.stderr, "the driver must join, not start, Ray"

    runs = sweep_runs(ws.tracking_uri)
    check_sweep_accounted(runs, tune_results(ws.sweep_dir()), NUM_SAMPLES, EPOCHS)
    nodes = {r.data.tags["hairseg.trial_id"]: r.data.tags["hairseg.node_id"] for r in runs.trials}
    assert set(nodes.values()) == {w.node_id for w in workers}, f"trials per node: {nodes}"
    assert head_id not in nodes.values(), "the CPU-less head node cannot run a trial"
    assert {r.data.tags["hairseg.node_ip"] for r in runs.trials} == {"127.0.0.1"}
