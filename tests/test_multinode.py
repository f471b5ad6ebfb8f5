"""The sweep on a real multi-node Ray cluster (three raylets on 127.0.0.1), via ``--address``.

This is the laptop stand-in for ``ray up`` / KubeRay: the driver is a separate process that
joins an existing cluster, the head node offers no CPUs, and each worker node has one, so two
concurrent trials must run on two different nodes. Each trial records the node it ran on in
its MLflow run (``hairseg.node_id``), which is how the test sees where trials landed.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from sweep_helpers import (
    LOOPBACK_DRIVER_ENV,
    STREAM,
    Workspace,
    check_sweep_accounted,
    local_cluster,
    sweep_runs,
    tune_results,
)

pytestmark = pytest.mark.slow

NUM_SAMPLES = 4
EPOCHS = 2
SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v2-b0353104.pth"


def test_sweep_spreads_trials_over_worker_nodes(ws: Workspace) -> None:
    space = ws.space({"num_samples": NUM_SAMPLES, "max_concurrent_trials": 2, "fixed": {"epochs": EPOCHS}, **STREAM})
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


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason="needs ../shared/weights/mobilenet_v2-b0353104.pth")
def test_every_worker_node_gets_the_pretrained_file_from_the_driver(ws: Workspace, tmp_path: Path) -> None:
    """ImageNet weights reach worker nodes whose torch hub caches are empty, with no network at all.

    The driver's cache holds the file; ``HAIRSEG_OFFLINE=1`` everywhere means nothing may download.
    The driver resolves the file once before Ray starts and trials install it into their node's cache
    from the object store (``hairseg_core.search.weights.install_weights``).
    """
    driver_cache = tmp_path / "driver-torch" / "hub" / "checkpoints"
    driver_cache.mkdir(parents=True)
    shutil.copy(SHARED_WEIGHTS, driver_cache / SHARED_WEIGHTS.name)
    worker_homes = [tmp_path / f"worker{i}-torch" for i in range(2)]
    offline = {"HAIRSEG_OFFLINE": "1", "HAIRSEG_WEIGHTS_DIR": ""}
    ws.extra_env.update({**LOOPBACK_DRIVER_ENV, **offline, "TORCH_HOME": str(tmp_path / "driver-torch")})
    space = ws.space({"num_samples": 2, "max_concurrent_trials": 2, "fixed": {"epochs": 1, "pretrained": "imagenet"}})
    envs = [{**offline, "TORCH_HOME": str(home)} for home in worker_homes]
    with local_cluster(workers=2, worker_env=envs) as (cluster, workers):
        sweep = ws.run(["--space", str(space), "--address", cluster.address, "--no-finalize", "--quiet"], timeout=300)
    assert sweep.proc.returncode == 0, sweep.describe()

    runs = sweep_runs(ws.tracking_uri)
    check_sweep_accounted(runs, tune_results(ws.sweep_dir()), 2, 1)
    nodes = {r.data.tags["hairseg.node_id"] for r in runs.trials}
    assert nodes == {w.node_id for w in workers}, "each worker node ran a trial"
    expected = hashlib.sha256(SHARED_WEIGHTS.read_bytes()).hexdigest()
    for home in worker_homes:
        installed = home / "hub" / "checkpoints" / SHARED_WEIGHTS.name
        assert installed.is_file(), f"{installed} was not installed on that worker node"
        assert hashlib.sha256(installed.read_bytes()).hexdigest() == expected
        assert not list(installed.parent.glob("*.part")), "no temporary file left behind"
