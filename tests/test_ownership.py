"""One name, one sweep, one driver: names, the lease, atomic and corrupt manifests (issue 28).

Fast tests against the real filesystem and a real sqlite MLflow store; the slow one runs real sweeps.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sweep_helpers import EXPERIMENT, Workspace, sweep_runs, wait_until

from hairseg_core.search import state


def test_generated_names_are_unique_in_the_same_second() -> None:
    names = {state.new_sweep_name("hairseg-tiny") for _ in range(200)}
    assert len(names) == 200
    assert all(n.startswith("hairseg-tiny-") for n in names)


def test_manifest_written_atomically_and_a_corrupt_one_named_and_skipped(tmp_path: Path, caplog) -> None:
    storage = str(tmp_path)
    uri = state.manifest_uri(storage, "s1")
    state.write_json_atomic(uri, {"experiment": "e", "n": 1})
    state.write_json_atomic(uri, {"experiment": "e", "n": 2})
    assert json.loads(Path(uri).read_text())["n"] == 2
    assert [p.name for p in (tmp_path / "s1").iterdir()] == [state.SWEEP_MANIFEST], "no temporary file left"
    Path(uri).write_text('{"experiment": "e", "spa')  # a torn write from before the atomic manifest
    with pytest.raises(state.ManifestCorrupt, match=r"s1/hairseg_sweep.json is corrupt"):
        state.load_sweep_manifest(storage, "s1")
    assert state.latest_sweep(storage) is None
    assert "skipping sweep s1" in caplog.text
    with pytest.raises(state.ResumeError, match="sweep s1: .* is corrupt"):
        state.resume_target(storage, "unused.yaml", {}, run_name="s1")


def test_lease_refuses_a_second_driver_and_breaks_a_stale_one(tmp_path: Path, monkeypatch) -> None:
    storage = str(tmp_path)
    lease = state.acquire_lease(storage, "s1", interval=0.1)
    held = json.loads((tmp_path / "s1" / state.SWEEP_LEASE).read_text())
    assert held["host"] == socket.gethostname() and held["pid"] == os.getpid()
    assert state.sweep_in_storage(storage, "s1") is not None
    with pytest.raises(state.LeaseHeld, match=r"sweep s1 is being run by another driver .*--break-lease"):
        state.acquire_lease(storage, "s1")
    time.sleep(0.35)
    assert json.loads((tmp_path / "s1" / state.SWEEP_LEASE).read_text())["heartbeat"] > held["heartbeat"]
    taken = state.acquire_lease(storage, "s1", break_lease=True)  # --break-lease
    time.sleep(0.3)
    assert lease.lost is not None, "the old holder notices it lost the lease"
    lease.release()  # not its lease any more: left alone
    assert json.loads((tmp_path / "s1" / state.SWEEP_LEASE).read_text())["token"] == taken.holder["token"]
    taken.release()
    assert not (tmp_path / "s1").exists(), "a driver that never started Tune leaves nothing behind"

    # a dead driver on this host: taken over without asking
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    state.write_json_atomic(
        f"{storage}/s2/{state.SWEEP_LEASE}",
        {"host": socket.gethostname(), "pid": int(dead.stdout), "heartbeat": time.time(), "token": "x"},
    )
    state.acquire_lease(storage, "s2").release()
    # a holder on another host, silent for longer than HAIRSEG_LEASE_STALE_S
    monkeypatch.setenv(state.LEASE_STALE_ENV, "60")
    old = {"host": "elsewhere", "pid": 1, "heartbeat": time.time() - 120, "token": "y"}
    state.write_json_atomic(f"{storage}/s3/{state.SWEEP_LEASE}", old)
    state.acquire_lease(storage, "s3").release()
    state.write_json_atomic(f"{storage}/s3/{state.SWEEP_LEASE}", {**old, "heartbeat": time.time()})
    with pytest.raises(state.LeaseHeld, match="host elsewhere pid 1"):
        state.acquire_lease(storage, "s3")


@pytest.mark.slow
def test_a_second_sweep_under_a_running_name_is_refused_before_ray(ws: Workspace) -> None:
    """The done-when: started twice under one --run-name while the first runs, the second exits 2 before Ray
    (so does a second --resume driver), and the first finishes with every trial run FINISHED, none deleted."""
    # the final stage keeps the first driver busy (and its sweep unfinished) while the others start
    space = ws.space({"num_samples": 2, "finalize": {"max_test_images": 4, "export_size": 65}})
    args = ["--space", str(space), "--num-cpus", "2", "--quiet"]
    first = ws.start([*args, "--run-name", "shared-name"], "first")
    wait_until(lambda: first.proc.poll() is not None or sweep_runs(ws.tracking_uri).trials, 240, "a trial run")
    assert first.proc.poll() is None, first.describe()
    started = time.monotonic()
    second = ws.start([*args, "--run-name", "shared-name"], "second")
    resumed = ws.start(["--resume", "--run-name", "shared-name", "--quiet"], "resume")
    second.wait(120)
    refused_in = time.monotonic() - started
    resumed.wait(120)
    assert second.proc.returncode == 2, second.describe()
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "sweep shared-name" in lines[0], second.stderr
    assert "python pipelines/sweep.py --resume --run-name shared-name" in lines[0]
    assert "Started a local Ray instance" not in second.stdout + second.stderr and "Traceback" not in second.stderr
    assert resumed.proc.returncode == 2, resumed.describe()
    assert "is being run by another driver" in resumed.stderr and f"pid {first.proc.pid}" in resumed.stderr
    first.wait(300)
    assert first.proc.returncode == 0, first.describe()
    runs = sweep_runs(ws.tracking_uri, EXPERIMENT)
    assert len(runs.parents) == 1 and not runs.superseded, "no run deleted"
    assert len(runs.trials) == 2 and {r.info.status for r in runs.trials} == {"FINISHED"}
    assert not (ws.storage / "shared-name" / state.SWEEP_LEASE).exists(), "the lease is released at the end"
    print(f"second start refused in {refused_in:.1f} s")


@pytest.mark.slow
def test_two_sweeps_at_once_on_one_server_and_one_cluster_keep_to_their_own(ws: Workspace, tmp_path: Path) -> None:
    """Two sweeps run concurrently against one ``mlflow server`` and one local Ray cluster, sharing a storage;
    one is killed and resumed. Each sweep's runs, model version and manifest are exactly its own."""
    from mlflow import MlflowClient
    from sweep_helpers import LOOPBACK_DRIVER_ENV, MlflowServer, local_cluster

    ws.extra_env.update(LOOPBACK_DRIVER_ENV)
    space = ws.space(
        {
            "num_samples": 1,
            "fixed": {"epochs": 2},
            "scheduler": {"type": "fifo"},
            "finalize": {"max_test_images": 4, "export_size": 65},
        }
    )
    with MlflowServer(tmp_path / "server") as server, local_cluster(workers=2) as (cluster, _):
        common = ["--space", str(space), "--address", cluster.address, "--tracking-uri", server.uri, "--quiet"]
        alpha = ws.start([*common, "--run-name", "alpha"], "alpha")
        beta = ws.start([*common, "--run-name", "beta"], "beta")
        wait_until(
            lambda: (
                alpha.proc.poll() is not None
                or any(r.data.tags["hairseg.sweep"] == "alpha" for r in sweep_runs(server.uri).trials)
            ),
            300,
            "alpha's trial run",
        )
        assert alpha.proc.poll() is None, alpha.describe()
        alpha.kill()  # the driver only: the cluster, the server and beta go on
        alpha = ws.start(["--resume", "--run-name", "alpha", *common[2:]], "alpha-resume")
        for sweep in (alpha, beta):
            sweep.wait(500)
            assert sweep.proc.returncode == 0, sweep.describe()
        runs = sweep_runs(server.uri)
        client = MlflowClient(server.uri)
        parents = {r.data.tags["hairseg.sweep"]: r for r in runs.parents}
        assert sorted(parents) == ["alpha", "beta"] and {r.info.status for r in runs.parents} == {"FINISHED"}
        for name, parent in parents.items():
            own = [r for r in runs.trials if r.data.tags["hairseg.parent_run_id"] == parent.info.run_id]
            assert own and all(r.data.tags["hairseg.sweep"] == name for r in own)
            assert {r.info.status for r in own} == {"FINISHED"}
            manifest = json.loads((ws.storage / name / state.SWEEP_MANIFEST).read_text())
            assert manifest["parent_run_id"] == parent.info.run_id and manifest.get("finalized")
            versions = client.search_model_versions(f"name='hairseg' and tags.`hairseg.sweep` = '{name}'")
            assert len(versions) == 1 and versions[0].tags["hairseg.parent_run_id"] == parent.info.run_id
        for run in runs.superseded:  # retired runs (an orphan of alpha's kill) are alpha's own
            assert run.data.tags["hairseg.parent_run_id"] == parents["alpha"].info.run_id, run.data.tags
        assert len(client.search_model_versions("name='hairseg'")) == 2
