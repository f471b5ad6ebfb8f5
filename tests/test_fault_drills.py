"""Fault drills from the cluster issue, on a real multi-node Ray cluster on 127.0.0.1.

1. A worker node dies (raylet and its workers SIGKILLed) while a trial trains there: Tune must
   restart that trial from its last checkpoint on the surviving node, and the sweep must end
   with every trial recorded exactly once in MLflow.
2. The MLflow server goes down and comes back mid-sweep: tracking calls wait and retry, the
   sweep completes, and every epoch any trial reported (before, during and after the outage)
   is in MLflow.

Both use FIFO scheduling so that every trial must reach its last epoch: a trial that silently
lost epochs or restarted from scratch shows up in its epoch history.
"""

from __future__ import annotations

import time

import pytest
from sweep_helpers import (
    LOOPBACK_DRIVER_ENV,
    STREAM,
    MlflowServer,
    Workspace,
    check_sweep_accounted,
    local_cluster,
    sweep_runs,
    tune_results,
    wait_until,
)

pytestmark = pytest.mark.slow

NUM_SAMPLES = 3
EPOCHS = 4
DRILL_SPACE = {
    "num_samples": NUM_SAMPLES,
    "max_concurrent_trials": 2,
    "fixed": {"epochs": EPOCHS, "max_steps_per_epoch": 4},
    "scheduler": {"type": "fifo"},
    **STREAM,  # a restarted trial on another node maps its node's cache, checked against the driver's files
}
#: Seconds the MLflow server stays down: several of the drill's epochs, so a trial that is training
#: (not in a call) when the server dies reaches its next log call inside the outage.
OUTAGE_S = 10


@pytest.fixture
def ws(ws: Workspace) -> Workspace:
    """conftest's workspace, with the driver on the loopback address the local cluster uses."""
    ws.extra_env.update(LOOPBACK_DRIVER_ENV)
    return ws


def _alive(sweep) -> None:
    if sweep.proc.poll() is not None:
        raise AssertionError(f"the sweep ended before the fault was injected: {sweep.describe()}")


@pytest.mark.parametrize(
    "data_input",
    ["stream", "memory"],
    ids=["node-cache", "object-store"],  # both input paths: the restarted trial must find its data on the survivor
)
def test_worker_node_loss_restarts_trial_from_checkpoint(ws: Workspace, data_input: str) -> None:
    space = ws.space({**DRILL_SPACE, "data": {"input": data_input}})
    with local_cluster(workers=2) as (cluster, (victim, survivor)):
        sweep = ws.start(["--space", str(space), "--address", cluster.address, "--no-finalize", "--quiet"])

        def trial_mid_run_on_victim() -> tuple[str, int] | None:
            """A trial on the victim node with >= 1 checkpointed epoch and epochs still to go."""
            _alive(sweep)
            if not ws.storage.is_dir() or not any(ws.storage.iterdir()):
                return None
            results = tune_results(ws.sweep_dir())
            for run in sweep_runs(ws.tracking_uri).trials:
                trial_id = run.data.tags["hairseg.trial_id"]
                done = len(results.get(trial_id, []))
                if run.data.tags.get("hairseg.node_id") == victim.node_id and 1 <= done < EPOCHS - 1:
                    return trial_id, done
            return None

        trial_id, checkpointed = wait_until(trial_mid_run_on_victim, 240, "a trial mid-run on the victim node", 0.2)
        pids_before = {row["pid"] for row in tune_results(ws.sweep_dir())[trial_id]}
        cluster.remove_node(victim, allow_graceful=False)
        sweep.wait(300)
    assert sweep.proc.returncode == 0, sweep.describe()

    runs = sweep_runs(ws.tracking_uri)
    results = tune_results(ws.sweep_dir())
    check_sweep_accounted(runs, results, NUM_SAMPLES, EPOCHS)
    assert all(max(r["epoch"] for r in rows) == EPOCHS for rows in results.values())
    tags = runs.by_trial()[trial_id].data.tags
    assert tags["hairseg.node_id"] == survivor.node_id, "the trial should have moved to the surviving node"
    restored = int(tags["hairseg.restored_from_epoch"])
    assert restored >= checkpointed, (
        f"trial {trial_id} had {checkpointed} checkpointed epochs but restarted from epoch {restored}"
    )
    rows_after = [r for r in results[trial_id] if r["pid"] not in pids_before]
    assert rows_after and rows_after[0]["epoch"] == restored + 1, "training continued after the checkpoint"


def test_mlflow_server_restart_mid_sweep(ws: Workspace, tmp_path) -> None:
    server = MlflowServer(tmp_path / "mlflow-server")
    space = ws.space({**DRILL_SPACE, "finalize": {"max_test_images": 4, "export_size": 65}})
    try:
        server.start()
        with local_cluster(workers=2) as (cluster, _):
            sweep = ws.start(
                # not --quiet: the trials' log lines (their retry warnings) reach the driver's output; the final
                # stage runs too: its registration and promotion go through the restarted server
                ["--space", str(space), "--address", cluster.address, "--tracking-uri", server.uri]
            )

            def one_finished_one_running() -> dict[str, list[tuple[int, float]]] | None:
                """A finished trial, and a running one with >= 2 epochs to go (it will log in the outage)."""
                _alive(sweep)
                runs = sweep_runs(server.uri)
                finished = [r for r in runs.trials if r.info.status == "FINISHED"]
                running = [
                    r
                    for r in runs.trials
                    if r.info.status == "RUNNING" and len(runs.history(r.info.run_id)) <= EPOCHS - 2
                ]
                if finished and running:
                    return {r.data.tags["hairseg.trial_id"]: runs.history(r.info.run_id) for r in finished}
                return None

            finished_before = wait_until(one_finished_one_running, 240, "a finished and a running trial", 0.3)
            # A crash, not a drain: SIGKILL, so a request in flight fails at once instead of hanging
            # in the shutdown. The window starts at the first refused /health and ends before the
            # restart begins: the server is certainly down for all of it.
            down_at = server.stop(grace=0)
            time.sleep(OUTAGE_S)  # trials keep training and try to log while the server is away
            server.start()
            up_at = time.time()  # start() returns at the first healthy /health: down until then
            sweep.wait(300)
        assert sweep.proc.returncode == 0, sweep.describe()

        runs = sweep_runs(server.uri)
        check_sweep_accounted(runs, tune_results(ws.sweep_dir()), NUM_SAMPLES, EPOCHS)
        for trial_id, history in finished_before.items():
            assert runs.history(runs.by_trial()[trial_id].info.run_id) == history, f"{trial_id} changed"
        # Proof that the outage was hit, not slept through: a tracking call made while the server was
        # down was retried (tracking.with_retries logs each retry) and the sweep still accounts for
        # every epoch above. A trial is usually inside a call when the server dies (its tiny epochs
        # take less time than its panels' uploads), so it waits in the retry backoff for the whole
        # outage: the retry line, not a metric's timestamp, is what shows the call was made.
        output = sweep.stdout + sweep.stderr
        retries = [line for line in output.splitlines() if "MLflow call '" in line and "; retry " in line]
        assert retries, f"no tracking call was retried during the {up_at - down_at:.1f} s outage: the drill missed"
        # the final stage, after the outage: exactly one version for the sweep, and the alias on it
        versions = runs.client.search_model_versions("name='hairseg'")
        assert len(versions) == 1, [v.version for v in versions]
        assert versions[0].tags["hairseg.sweep"] == runs.parents[0].data.tags["hairseg.sweep"]
        assert runs.client.get_model_version_by_alias("hairseg", "champion").version == versions[0].version
    finally:
        server.stop()
