"""MLflow tracking: a sweep against a real ``mlflow server`` over HTTP, and ``Tracker`` itself.

The server is what a cluster uses (``--tracking-uri http://HEAD:5000``): Ray workers on other
machines cannot share a sqlite file. The sweep test proves every run, metric and artifact goes
through the server (artifacts proxied into its ``--artifacts-destination``), none to the
working directory. The ``Tracker`` tests pin the properties retries and resume rely on: a
trial's run is found again instead of duplicated, and unusable stores fail clearly.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from sweep_helpers import (
    MlflowServer,
    Workspace,
    check_sweep_accounted,
    free_port,
    make_workspace,
    sweep_runs,
    tune_results,
)

from hairseg_core.track.client import check_tracking, resolve_tracking_uri
from hairseg_core.track.errors import SweepNameTaken, TrackingUnavailable
from hairseg_core.track.experiment import flatten_params
from hairseg_core.track.retry import with_retries
from hairseg_core.track.runs import Tracker
from hairseg_core.track.tags import TAG_KIND, TAG_SWEEP, TAG_TRIAL


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[MlflowServer]:
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as srv:
        yield srv


@pytest.fixture
def tracker(server: MlflowServer) -> Tracker:
    """A Tracker on the live server, in an experiment of its own."""
    return Tracker(server.uri, f"unit-{uuid.uuid4().hex[:8]}")


def test_sweep_tracks_through_server(server: MlflowServer, tmp_path, tmp_path_factory) -> None:
    ws: Workspace = make_workspace(tmp_path, tmp_path_factory, local_store=False)
    try:
        space = ws.space({"num_samples": 2, "fixed": {"epochs": 2}})
        sweep = ws.run(
            [
                "--space",
                str(space),
                "--tracking-uri",
                server.uri,
                "--no-finalize",
                "--num-cpus",
                "2",
                "--quiet",
            ],
            timeout=300,
        )
    finally:
        ws.cleanup()
    assert sweep.proc.returncode == 0, sweep.describe()
    assert server.uri in sweep.stdout

    runs = sweep_runs(server.uri)
    check_sweep_accounted(runs, tune_results(ws.sweep_dir()), num_samples=2, epochs=2)
    parent = runs.parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:"), "artifacts must be proxied by the server"
    # Artifacts landed in the server's destination folder, nothing in the sweep's directory.
    stored = {p.relative_to(server.artifacts).as_posix() for p in server.artifacts.rglob("*") if p.is_file()}
    assert any(p.endswith(f"{parent.info.run_id}/artifacts/results/trials.csv") for p in stored), stored
    for trial in runs.trials:
        assert any(f"{trial.info.run_id}/artifacts/predictions/" in p for p in stored)
    assert not (ws.cwd / "mlruns.db").exists() and not (ws.cwd / "mlartifacts").exists()


# ----------------------------------------------------------------------------- Tracker
def test_start_trial_reuses_the_trials_run(tracker: Tracker) -> None:
    parent = tracker.start_sweep("sweep-a", {"name": "t", "num_samples": 2, "params": {}})
    params = {"lr_head": 0.001, "dataset_options": {"size": 97}}
    first = tracker.start_trial("sweep-a", parent, "t1", "trial_t1", params)
    tracker.log_metrics(first, {"val_miou": 0.5}, step=1)
    tracker.end_run(first, "FAILED")  # e.g. the worker died; Tune retries the trial

    again = tracker.start_trial("sweep-a", parent, "t1", "trial_t1", params)  # found by its tags
    from_checkpoint = tracker.start_trial("sweep-a", parent, "t1", "trial_t1", params, run_id=first)
    other_trial = tracker.start_trial("sweep-a", parent, "t2", "trial_t2", params)
    other_sweep = tracker.start_trial("sweep-b", parent, "t1", "trial_t1", params)
    assert again == from_checkpoint == first
    assert len({first, other_trial, other_sweep}) == 3

    run = tracker.client.get_run(first)
    assert run.info.status == "RUNNING", "a reopened trial run is running again"
    assert run.data.tags[TAG_TRIAL] == "t1" and run.data.tags[TAG_SWEEP] == "sweep-a"
    assert run.data.tags[TAG_KIND] == "trial" and run.data.tags["hairseg.parent_run_id"] == parent
    assert "mlflow.parentRunId" not in run.data.tags, "trial runs are top-level rows of MLflow's table"
    assert run.data.params == {"lr_head": "0.001", "dataset_options.size": "97"}
    assert [m.value for m in tracker.client.get_metric_history(first, "val_miou")] == [0.5]
    assert {r.info.run_id for r in tracker.trial_runs("sweep-a")} == {first, other_trial}


def test_the_sweep_end_retires_runs_of_trials_tune_never_recorded(tracker: Tracker) -> None:
    """A trial started just before the driver died, unsaved in Tune's state: its run is closed, tagged, hidden."""
    from types import SimpleNamespace

    from hairseg_core.search.callbacks import MlflowStatusCallback
    from hairseg_core.search.trial import TrackingSettings

    parent = tracker.start_sweep("sweep-o", {"name": "t", "num_samples": 2, "params": {}})
    kept = tracker.start_trial("sweep-o", parent, "t1", "trial_t1", {})
    orphan = tracker.start_trial("sweep-o", parent, "t2", "trial_t2", {})
    other_sweep = tracker.start_trial("sweep-p", parent, "t9", "trial_t9", {})
    # a trial run of another sweep that carries the same name (another parent run): never this sweep's to retire
    same_name = tracker.start_trial("sweep-o", "another-parent-run", "t7", "trial_t7", {})
    callback = MlflowStatusCallback(TrackingSettings(tracker.tracking_uri, tracker.experiment, "sweep-o", parent), 3)
    # Tune passes its Trial objects; the callback reads only their ids.
    callback.on_experiment_end(trials=[SimpleNamespace(trial_id="t1")])

    assert {r.info.run_id for r in tracker.trial_runs("sweep-o", parent)} == {kept}
    assert tracker.client.get_run(same_name).info.lifecycle_stage == "active", "retired by name, not by run id"
    assert tracker.client.get_run(same_name).info.status == "RUNNING"
    gone = tracker.client.get_run(orphan)
    assert gone.info.lifecycle_stage == "deleted" and gone.info.status == "KILLED"
    assert "Tune's saved state did not record" in gone.data.tags["hairseg.orphaned"]
    assert tracker.client.get_run(kept).info.status == "RUNNING", "a known trial's run is the driver's to close"
    assert tracker.client.get_run(other_sweep).info.lifecycle_stage == "active", "another sweep's trials untouched"


def test_start_sweep_reopens_the_parent_run(tracker: Tracker) -> None:
    space = {
        "name": "t",
        "num_samples": 3,
        "scheduler": {"grace_period": 1},
        "params": {"lr": {"type": "float"}},
    }
    parent = tracker.start_sweep("sweep-r", space)
    tracker.end_run(parent, "KILLED")
    assert tracker.start_sweep("sweep-r", space, resume=True) == parent
    assert tracker.start_sweep("sweep-r", space, resume=True, parent_run_id=parent) == parent
    with pytest.raises(SweepNameTaken, match="already has a sweep named sweep-r"):
        tracker.start_sweep("sweep-r", space)  # a new sweep never reopens another's run
    run = tracker.client.get_run(parent)
    assert run.info.status == "RUNNING"
    assert run.data.params["scheduler.grace_period"] == "1"
    assert run.data.params["search_space"] == '{"lr": {"type": "float"}}'
    assert tracker.find_parent("sweep-other") is None


def test_end_run_rejects_unknown_status(tracker: Tracker) -> None:
    run_id = tracker.start_trial("s", "p", "t", "trial_t", {})
    with pytest.raises(Exception, match="DONE. Valid run status strings"):
        tracker.end_run(run_id, "DONE")
    assert tracker.client.get_run(run_id).info.status == "RUNNING"


def test_flatten_params() -> None:
    flat = flatten_params(
        {"a": 1, "nested": {"b": [1, 2], "c": {"d": None}}, "long": "x" * 7000, "choices": ("ce", "focal")}
    )
    assert flat == {
        "a": "1",
        "nested.b": "[1, 2]",
        "nested.c.d": "None",
        "long": "x" * 6000,
        "choices": '["ce", "focal"]',
    }


# ----------------------------------------------------------------------------- failing stores
def test_check_tracking_accepts_live_stores(server: MlflowServer, tmp_path: Path) -> None:
    check_tracking(server.uri)
    check_tracking(f"sqlite:///{tmp_path / 'fresh.db'}")  # created on first use
    assert (tmp_path / "fresh.db").is_file()


def test_check_tracking_names_an_unreachable_server() -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=f"cannot reach the MLflow tracking server at {uri}"):
        check_tracking(uri, timeout=2)
    assert time.monotonic() - started < 10, "a refused connection must fail at once, not after retries"


def test_check_tracking_names_a_missing_sqlite_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(TrackingUnavailable, match=f"folder {missing} is missing or not writable"):
        check_tracking(f"sqlite:///{missing / 'mlruns.db'}")
    assert not missing.exists()


def test_with_retries_rides_out_short_outages() -> None:
    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionRefusedError("server restarting")
        return "ok"

    assert with_retries(flaky, "flaky call", attempts=5, delay=0.05) == "ok"
    assert len(calls) == 3
    assert calls[2] - calls[1] >= calls[1] - calls[0] >= 0.05, "backoff grows between attempts"


def test_with_retries_gives_up_clearly() -> None:
    def down() -> None:
        raise MlflowException("503 Service Unavailable")

    with pytest.raises(TrackingUnavailable, match=r"MLflow call 'log metrics' failed 3 times over \d+ s .*: 503"):
        with_retries(down, "log metrics", attempts=3, delay=0.01)


def test_dead_http_server_fails_within_the_retry_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that stays down fails the call clearly, instead of MLflow's minutes of HTTP retries."""
    mlflow_http = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")
    mlflow_http += ("MLFLOW_HTTP_REQUEST_TIMEOUT",)
    for name in mlflow_http:
        monkeypatch.setenv(name, "placeholder")  # records the original value for teardown
        monkeypatch.delenv(name)
    monkeypatch.setenv("HAIRSEG_TRACKING_RETRY_S", "3")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    tracker = Tracker(f"http://127.0.0.1:{port}", "nowhere")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"  # MLflow's own retries kept short
    with pytest.raises(TrackingUnavailable, match=r"'get/create experiment' failed \d+ times .*retry budget 3 s"):
        _ = tracker.experiment_id


def test_retry_budget_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAIRSEG_TRACKING_RETRY_S", "soon")
    with pytest.raises(ValueError, match="HAIRSEG_TRACKING_RETRY_S='soon': expected a number of seconds"):
        with_retries(lambda: None, "anything")


def test_with_retries_does_not_hide_programming_errors() -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise KeyError("not a tracking outage")

    with pytest.raises(KeyError):
        with_retries(broken, "broken", attempts=5, delay=0.01)
    assert len(calls) == 1


def test_resolve_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(workdir=tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlruns.db'}"
    assert resolve_tracking_uri("sqlite:///rel/x.db", workdir=tmp_path) == f"sqlite:///{tmp_path.resolve()}/rel/x.db"
    assert resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(workdir=tmp_path) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("http://other:5000") == "http://other:5000"
