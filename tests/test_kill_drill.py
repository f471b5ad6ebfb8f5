"""A kill-and-resume drill: the driver SIGKILLed at the hard moments of one sweep, resumed after each.

One sweep (4 trials, ASHA, final stage included) is started, and its driver is SIGKILLed with all
of Ray's local processes at each of these moments, each followed by ``--resume`` (which the next
kill interrupts in turn):

1. a trial has started (its MLflow run exists) but written no checkpoint yet;
2. right after a checkpoint: a trial's newest checkpoint folder has just appeared;
3. while ASHA decides: a trial has just reported the epoch of the grace-period rung;
4. during the final stage (Table 5 has started).

The last ``--resume`` runs to the end. Then: every trial is accounted for exactly once (one live
run each, FINISHED, every per-epoch metric logged exactly once per epoch: no restarted attempt
left a repeated step), no trial that had ended before a kill was trained again, the parent run and
one final-stage run are FINISHED (a killed final stage's run is KILLED), and exactly one model
version holds the champion alias.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from mlflow import MlflowClient
from sweep_helpers import (
    EXPERIMENT,
    STREAM,
    SweepProcess,
    Workspace,
    check_sweep_accounted,
    sweep_runs,
    tune_results,
    wait_until,
)

pytestmark = pytest.mark.slow

NUM_SAMPLES = 4
EPOCHS = 4
GRACE = 2
DRILL = {
    "num_samples": NUM_SAMPLES,
    "max_concurrent_trials": 2,
    "fixed": {"epochs": EPOCHS, "max_steps_per_epoch": 5},
    "scheduler": {"type": "asha", "grace_period": GRACE, "reduction_factor": 2},
    "keep_checkpoints": 2,
    "finalize": {"max_test_images": 4, "export_size": 65},
    **STREAM,  # the trials read the node cache: resume and accounting hold on the streaming input path
}


def _alive(sweep: SweepProcess) -> None:
    if sweep.proc.poll() is not None:
        raise AssertionError(f"the sweep ended before the planned kill: {sweep.describe()}")


def _checkpoints(ws: Workspace) -> set[str]:
    if not ws.storage.is_dir() or not any(ws.storage.iterdir()):
        return set()
    return {str(p) for p in ws.sweep_dir().glob("trial_*/checkpoint_*") if (p / "checkpoint.pt").is_file()}


def _trial_started_without_checkpoint(ws: Workspace, sweep: SweepProcess) -> Callable[[], bool]:
    def check() -> bool:
        _alive(sweep)
        runs = sweep_runs(ws.tracking_uri)
        started = {r.data.tags["hairseg.trial_id"] for r in runs.trials if r.info.status == "RUNNING"}
        with_checkpoint = {p.split("trial_")[-1].split("/")[0] for p in _checkpoints(ws)}
        return bool(started - with_checkpoint)

    return check


def _new_checkpoint(ws: Workspace, sweep: SweepProcess) -> Callable[[], bool]:
    seen = _checkpoints(ws)

    def check() -> bool:
        _alive(sweep)
        return bool(_checkpoints(ws) - seen)

    return check


def _at_asha_rung(ws: Workspace, sweep: SweepProcess) -> Callable[[], bool]:
    def check() -> bool:
        _alive(sweep)
        if not ws.storage.is_dir() or not any(ws.storage.iterdir()):
            return False
        return any(len(rows) == GRACE for rows in tune_results(ws.sweep_dir()).values())

    return check


def _in_final_stage(sweep: SweepProcess) -> Callable[[], bool]:
    def check() -> bool:
        _alive(sweep)
        return "final stage:" in sweep.stdout

    return check


def _ended_trials(ws: Workspace) -> dict[str, list[tuple[int, float]]]:
    """History of every trial whose run the driver closed (complete or stopped by ASHA)."""
    runs = sweep_runs(ws.tracking_uri)
    return {
        r.data.tags["hairseg.trial_id"]: runs.history(r.info.run_id) for r in runs.trials if r.info.status == "FINISHED"
    }


def test_driver_killed_at_every_hard_moment_resumes_to_one_exact_record(ws: Workspace) -> None:
    space = ws.space(DRILL)
    base = ["--num-cpus", "2", "--quiet"]
    sweep = ws.start(["--space", str(space), *base], "run0")
    moments = [
        ("before any checkpoint", lambda s: _trial_started_without_checkpoint(ws, s)),
        ("right after a checkpoint", lambda s: _new_checkpoint(ws, s)),
        ("at ASHA's grace-period rung", lambda s: _at_asha_rung(ws, s)),
        ("during the final stage", lambda s: _in_final_stage(s)),
    ]
    kills = []
    ended: dict[str, list[tuple[int, float]]] = {}
    for i, (moment, condition) in enumerate(moments, start=1):
        try:
            wait_until(condition(sweep), 300, f"kill {i}: {moment}", 0.05)
        except AssertionError:
            if moment != "during the final stage" or sweep.proc.poll() is None:
                raise
            pytest.fail(f"the sweep finished before kill {i} ({moment}): {sweep.describe()}")
        survivors = sweep.kill()
        assert not survivors, f"Ray processes survived kill {i}: {survivors}"
        kills.append(moment)
        # trials ended before this kill must never change again
        for trial_id, history in _ended_trials(ws).items():
            ended.setdefault(trial_id, history)
        time.sleep(0.5)
        sweep = ws.start(["--resume", *base], f"resume{i}")
    sweep.wait(600)
    assert sweep.proc.returncode == 0, sweep.describe()
    assert len(kills) == 4

    runs = sweep_runs(ws.tracking_uri)
    check_sweep_accounted(runs, tune_results(ws.sweep_dir()), NUM_SAMPLES, EPOCHS)
    assert runs.parents[0].info.status == "FINISHED"
    by_trial = runs.by_trial()
    for trial_id, history in ended.items():
        assert runs.history(by_trial[trial_id].info.run_id) == history, f"ended trial {trial_id} ran again"

    client = MlflowClient(ws.tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    finals = client.search_runs([experiment.experiment_id], "tags.`hairseg.kind` = 'finalize'")
    statuses = sorted(r.info.status for r in finals)
    assert statuses.count("FINISHED") == 1, f"final-stage runs: {statuses}"
    assert set(statuses) <= {"FINISHED", "KILLED"}, f"a killed final stage must be closed KILLED: {statuses}"
    champion = client.get_model_version_by_alias("hairseg", "champion")
    versions = client.search_model_versions("name='hairseg'")
    aliased = [v.version for v in versions if "champion" in client.get_model_version("hairseg", v.version).aliases]
    assert aliased == [champion.version], f"versions {[v.version for v in versions]}, champion on {aliased}"
    assert re.search(r"registered hairseg v\d+: promoted to @champion", sweep.stdout), sweep.stdout[-2000:]
    print(f"survived {len(kills)} kills: {', '.join(kills)}; superseded runs: {len(runs.superseded)}")


#: Where the final-stage drill kills the driver: after the export is written but before it is swapped in,
#: after the model is logged but before its version is created, right after @champion moved.
FINAL_KILLS = ("export_written", "model_logged", "promotion")


def test_driver_killed_in_export_registration_and_after_promotion_registers_once(ws: Workspace) -> None:
    """SIGKILL inside the final stage at its three non-idempotent points, ``--resume`` after each: exactly one
    model version for the sweep, the alias on it, one FINISHED final-stage run; ``pipelines/finalize.py`` run
    again for the sweep registers nothing."""
    from sweep_helpers import FINALIZE

    from hairseg_core.final.record import PAUSE_ENV, PAUSE_LINE

    space = ws.space(
        {
            "num_samples": 2,
            "fixed": {"epochs": 2},
            "finalize": {"max_test_images": 4, "export_size": 65},
        }
    )
    base = ["--num-cpus", "1", "--quiet"]
    args = ["--space", str(space), "--run-name", "final-drill", *base]
    for i, step in enumerate(FINAL_KILLS):
        ws.extra_env[PAUSE_ENV] = step
        sweep = ws.start(args if i == 0 else ["--resume", "--run-name", "final-drill", *base], f"run{i}")
        wait_until(lambda s=sweep, st=step: _paused(s, f"{PAUSE_LINE} {st}"), 400, f"the pause after {step}", 0.2)
        assert not sweep.kill(), "Ray processes survived the kill"
    ws.extra_env.pop(PAUSE_ENV)
    sweep = ws.run(["--resume", "--run-name", "final-drill", *base], timeout=400, log_name="last")
    assert sweep.proc.returncode == 0, sweep.describe()
    assert "was done before" in sweep.stdout and "promotion decision (recorded" in sweep.stdout, sweep.stdout

    client = MlflowClient(ws.tracking_uri)
    versions = client.search_model_versions("name='hairseg'")
    assert len(versions) == 1, [(v.version, v.tags.get("hairseg.sweep")) for v in versions]
    assert versions[0].tags["hairseg.sweep"] == "final-drill"
    assert client.get_model_version_by_alias("hairseg", "champion").version == versions[0].version
    experiment = client.get_experiment_by_name(EXPERIMENT)
    finals = client.search_runs([experiment.experiment_id], "tags.`hairseg.kind` = 'finalize'")
    statuses = sorted(r.info.status for r in finals)
    assert statuses.count("FINISHED") == 1 and set(statuses) <= {"FINISHED", "KILLED"}, statuses
    assert not list((ws.cwd / "exports").glob(".*")), "a killed export left its temporary folder behind"
    parent = sweep_runs(ws.tracking_uri).parents[0]
    again = ws.run(["--run-id", parent.info.run_id], timeout=300, log_name="finalize-again", script=FINALIZE)
    assert again.proc.returncode == 0, again.describe()
    assert len(client.search_model_versions("name='hairseg'")) == 1, "finalize.py again added a model version"
    assert "was done before" in again.stdout and "promotion decision (recorded" in again.stdout, again.stdout


def _paused(sweep: SweepProcess, line: str) -> bool:
    _alive(sweep)
    return line in sweep.stdout
