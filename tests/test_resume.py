"""``--resume`` after the sweep's driver is SIGKILLed mid-sweep, Ray's local processes with it.

The harsh case on purpose: a laptop lid closed, an OOM kill or a preempted head node gives
the driver no chance to save anything, so resume must work from what Tune had already
written (experiment state, checkpoints) and what MLflow holds. What must hold afterwards:
every trial ran exactly once to its end (Tune and MLflow agree), trials that had finished
before the kill were not trained again, and the sweep kept its one parent run.
"""

from __future__ import annotations

import re

import pytest
from sweep_helpers import (
    Workspace,
    check_sweep_accounted,
    make_workspace,
    process_tree,
    sweep_runs,
    tune_results,
    wait_until,
)

NUM_SAMPLES = 4
EPOCHS = 3


@pytest.fixture
def ws(tmp_path, tmp_path_factory) -> Workspace:
    workspace = make_workspace(tmp_path, tmp_path_factory)
    yield workspace
    workspace.cleanup()


def _parent_id(stdout: str) -> str:
    found = re.search(r"MLflow parent run (\w+)", stdout)
    assert found, f"no parent run id in the sweep output:\n{stdout[-2000:]}"
    return found.group(1)


def test_resume_after_driver_sigkill(ws: Workspace) -> None:
    space = ws.space({"num_samples": NUM_SAMPLES, "fixed": {"epochs": EPOCHS}})
    args = ["--space", str(space), "--no-finalize", "--num-cpus", "2", "--quiet"]
    first = ws.start(args, "first")

    def finished_and_running() -> bool:
        """A trial has ended and another one has a checkpointed epoch (Tune wrote its result)."""
        if first.proc.poll() is not None:
            raise AssertionError(f"the sweep ended before it could be interrupted: {first.describe()}")
        if not ws.storage.is_dir() or not any(ws.storage.iterdir()):
            return False
        runs = sweep_runs(ws.tracking_uri)
        done = {r.data.tags["hairseg.trial_id"] for r in runs.trials if r.info.status == "FINISHED"}
        results = tune_results(ws.sweep_dir())
        return bool(done) and any(t not in done for t in results)

    wait_until(finished_and_running, 240, "one finished trial and one running trial", interval=0.2)
    tree = process_tree(first.proc.pid)
    assert any("raylet" in " ".join(p.cmdline()) for p in tree), "the driver should own a local Ray"
    survivors = first.kill()
    assert not survivors, f"processes survived SIGKILL: {survivors}"
    assert not [p for p in tree if p.is_running() and p.status() != "zombie"], "Ray processes leaked"

    before = sweep_runs(ws.tracking_uri)
    finished_before = {
        r.data.tags["hairseg.trial_id"]: (before.history(r.info.run_id), r.data.tags["hairseg.epochs_run"])
        for r in before.trials
        if r.info.status == "FINISHED"
    }
    results_before = tune_results(ws.sweep_dir())
    assert finished_before
    interrupted = [t for t in results_before if t not in finished_before]
    assert interrupted, "the kill should have caught a trial mid-run"

    second = ws.run(["--resume", *args], timeout=300, log_name="resume")
    assert second.proc.returncode == 0, second.describe()
    assert _parent_id(second.stdout) == _parent_id(first.stdout), "resume must reopen the sweep's parent run"

    after = sweep_runs(ws.tracking_uri)
    results = tune_results(ws.sweep_dir())
    check_sweep_accounted(after, results, NUM_SAMPLES, EPOCHS)
    assert after.parents[0].info.status == "FINISHED"
    by_trial = after.by_trial()
    for trial_id, (history, epochs_run) in finished_before.items():
        run = by_trial[trial_id]
        assert after.history(run.info.run_id) == history, f"finished trial {trial_id} was trained again"
        assert run.data.tags["hairseg.epochs_run"] == epochs_run
        assert len(results[trial_id]) == len(results_before[trial_id]), f"Tune re-ran finished {trial_id}"
    for trial_id in interrupted:
        tags = by_trial[trial_id].data.tags
        checkpointed = len(results_before[trial_id])
        assert int(tags["hairseg.restored_from_epoch"]) >= min(checkpointed, 1), (
            f"trial {trial_id} had {checkpointed} checkpointed epochs but restarted from "
            f"epoch {tags['hairseg.restored_from_epoch']}"
        )


def test_resume_without_a_sweep_fails_clearly(ws: Workspace) -> None:
    space = ws.space()
    sweep = ws.run(["--space", str(space), "--resume", "--no-finalize", "--quiet"], timeout=120)
    assert sweep.proc.returncode == 2, sweep.describe()
    assert "no interrupted sweep of 'hairseg-tiny'" in sweep.stderr
    assert str(ws.storage) in sweep.stderr
