"""``--resume`` after the sweep's driver is SIGKILLed mid-sweep, Ray's local processes with it.

The harsh case on purpose: a laptop lid closed, an OOM kill or a preempted head node gives
the driver no chance to save anything, so resume must work from what Tune had already
written (experiment state, checkpoints) and what MLflow holds. What must hold afterwards:
every trial is recorded once and to its end (Tune and MLflow agree), a trial that had ended
before the kill (completed, or stopped by ASHA) keeps its MLflow record unchanged and does
not train past the epoch it ended at, and the sweep keeps its one parent run.

The kill lands right after a trial's run was closed, while Tune's experiment state (saved
every few seconds) may still show that trial running: the window that used to make resume
train ASHA-stopped trials on to the last epoch.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from pathlib import Path

from mlflow import MlflowClient
from sweep_helpers import (
    STREAM,
    SweepProcess,
    Workspace,
    check_sweep_accounted,
    process_tree,
    sweep_runs,
    tune_results,
    wait_until,
)

NUM_SAMPLES = 4
EPOCHS = 3


def _parent_id(stdout: str) -> str:
    found = re.search(r"MLflow parent run (\w+)", stdout)
    assert found, f"no parent run id in the sweep output:\n{stdout[-2000:]}"
    return found.group(1)


def _wait_for_finished_and_running(ws: Workspace, sweep: SweepProcess) -> None:
    """Until a trial has just ended (its run is closed) while another one is training.

    "Training" means its run is open *and* it has at least two epochs left: a run still open
    after its last epoch may be closed by the driver before the signal lands, and then no
    trial would be caught mid-training.
    """

    def finished_and_running() -> bool:
        if sweep.proc.poll() is not None:
            raise AssertionError(f"the sweep ended before it could be interrupted: {sweep.describe()}")
        runs = sweep_runs(ws.tracking_uri)
        finished = any(r.info.status == "FINISHED" for r in runs.trials)
        training = any(
            r.info.status == "RUNNING" and len(runs.history(r.info.run_id)) <= EPOCHS - 2 for r in runs.trials
        )
        return finished and training

    wait_until(finished_and_running, 240, "one finished trial and one running trial", interval=0.2)


def test_resume_after_driver_sigkill(ws: Workspace) -> None:
    # keep_checkpoints 2 (as the shipped spaces): Tune then saves its experiment state only every
    # TUNE_GLOBAL_CHECKPOINT_S, not after each checkpoint, so the kill can land between a trial's
    # end and the state file that records it, the case resume must handle.
    space = ws.space(
        {
            "num_samples": NUM_SAMPLES,
            "max_concurrent_trials": 2,
            "fixed": {"epochs": EPOCHS},
            "keep_checkpoints": 2,
            **STREAM,  # resume on the streaming input path (the Ctrl-C test below keeps the memory path)
        }
    )
    args = ["--space", str(space), "--no-finalize", "--num-cpus", "2", "--quiet"]
    first = ws.start(args, "first")

    _wait_for_finished_and_running(ws, first)
    tree = process_tree(first.proc.pid)
    assert any("raylet" in " ".join(p.cmdline()) for p in tree), "the driver should own a local Ray"
    survivors = first.kill()
    assert not survivors, f"Ray processes survived the driver's SIGKILL: {survivors}"

    before = sweep_runs(ws.tracking_uri)
    finished_before = {
        r.data.tags["hairseg.trial_id"]: (before.history(r.info.run_id), r.data.tags["hairseg.epochs_run"])
        for r in before.trials
        if r.info.status == "FINISHED"
    }
    interrupted = {
        r.data.tags["hairseg.trial_id"]: (r.info.run_id, len(before.history(r.info.run_id)))
        for r in before.trials
        if r.info.status == "RUNNING"
    }
    assert finished_before and interrupted

    # No --space: the sweep's manifest (written beside Tune's state) supplies space and experiment.
    resume_args = [a for a in args if a not in ("--space", str(space))]
    second = ws.run(["--resume", *resume_args], timeout=300, log_name="resume")
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
        assert run.data.tags["hairseg.epochs_run"] == epochs_run, f"finished trial {trial_id} ran on"
    for trial_id, (old_run, logged) in interrupted.items():
        if trial_id not in results:  # it had just started: Tune's saved state never recorded it
            orphan = after.client.get_run(old_run)
            assert orphan.info.lifecycle_stage == "deleted" and "hairseg.orphaned" in orphan.data.tags
            print(f"trial {trial_id}: started just before the kill, unknown to the resumed sweep, run retired")
            continue
        # It continues from the newest checkpoint Tune's saved state knows, which may be older
        # than the newest epoch it logged (the state is saved every few seconds), never newer.
        run = by_trial[trial_id]
        restored = int(run.data.tags["hairseg.restored_from_epoch"])
        assert 0 <= restored <= logged, f"trial {trial_id} restored from epoch {restored}, had logged {logged}"
        if restored == logged:  # continued from its last logged epoch: the same run goes on
            assert run.info.run_id == old_run and "hairseg.supersedes" not in run.data.tags
        else:  # restarted from an older point: a copy holding epochs 1..restored replaced the run
            assert run.data.tags["hairseg.supersedes"] == old_run, f"trial {trial_id} restarted in its old run"
            assert after.client.get_run(old_run).info.lifecycle_stage == "deleted"
        print(f"trial {trial_id}: logged {logged} epochs before the kill, continued from epoch {restored}")


def test_resume_without_a_sweep_fails_clearly(ws: Workspace) -> None:
    space = ws.space()
    sweep = ws.run(["--space", str(space), "--resume", "--no-finalize", "--quiet"], timeout=120)
    assert sweep.proc.returncode == 2, sweep.describe()
    assert "no unfinished restorable sweep of experiment 'hairseg-tiny'" in sweep.stderr
    assert str(ws.storage) in sweep.stderr


def test_resume_refuses_a_different_search_space(ws: Workspace) -> None:
    """Restored trials would train with other fixed settings: refused before Ray starts, naming the keys."""
    from hairseg_core.config import load_search_space
    from hairseg_core.search.state import load_sweep_manifest, save_sweep_manifest

    original = ws.space()
    save_sweep_manifest(str(ws.storage), "hairseg-tiny-1", "hairseg-tiny", load_search_space(original), str(original))
    manifest = load_sweep_manifest(str(ws.storage), "hairseg-tiny-1")
    assert manifest is not None and manifest["space"] == load_search_space(original)

    changed = ws.space({"fixed": {"epochs": 7}, "seed": 3}, name="tiny.yaml")
    sweep = ws.run(["--resume", "--run-name", "hairseg-tiny-1", "--space", str(changed), "--quiet"], timeout=120)
    assert sweep.proc.returncode == 2, sweep.describe()
    assert "differs from the search space sweep hairseg-tiny-1 started with" in sweep.stderr
    assert "fixed, seed" in sweep.stderr
    assert "Traceback" not in sweep.stderr


def test_ctrl_c_stops_without_finalizing_and_resume_completes(ws: Workspace) -> None:
    """Tune swallows the first Ctrl-C and returns normally: the sweep must not finalize or close as done."""
    space = ws.space({"num_samples": NUM_SAMPLES, "max_concurrent_trials": 2, "fixed": {"epochs": EPOCHS}})
    first = ws.start(["--space", str(space), "--num-cpus", "2", "--quiet"], "first")  # final stage on
    _wait_for_finished_and_running(ws, first)
    os.killpg(first.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the foreground group
    assert first.wait(180) == 130, first.describe()
    assert "interrupted: finished trials are kept; resume with" in first.stderr
    assert f"--resume --run-name {ws.sweep_dir().name}" in first.stderr

    before = sweep_runs(ws.tracking_uri)
    assert before.parents[0].info.status == "KILLED"
    assert "post-processing on the test split" not in first.stdout, "an interrupted sweep was finalized"
    assert not (ws.cwd / "exports").exists()
    assert MlflowClient(ws.tracking_uri).search_registered_models() == []

    second = ws.run(["--resume", "--no-finalize", "--num-cpus", "2", "--quiet"], timeout=300, log_name="resume")
    assert second.proc.returncode == 0, second.describe()
    after = sweep_runs(ws.tracking_uri)
    check_sweep_accounted(after, tune_results(ws.sweep_dir()), NUM_SAMPLES, EPOCHS)
    assert after.parents[0].info.status == "FINISHED"


def test_surviving_checkpoint_is_the_newest_complete_earlier_one(tmp_path) -> None:
    """Unit level: numbering decides "earlier"; a folder whose file is gone (deletion cut short) is skipped."""
    from ray.tune import Checkpoint
    from sweep_helpers import tiny_train_config

    from hairseg_core.artifact import CHECKPOINT_FILE
    from hairseg_core.search.checkpoints import surviving_checkpoint
    from hairseg_core.train.trainer import Trainer

    trainer = Trainer(tiny_train_config(tmp_path))
    trial = tmp_path / "trial_x"
    for index in (0, 1, 2, 4):
        trainer.epoch = index + 1
        trainer.save_checkpoint(trial / f"checkpoint_{index:06d}" / CHECKPOINT_FILE)
    (trial / "checkpoint_000002" / CHECKPOINT_FILE).unlink()

    found = surviving_checkpoint(Checkpoint(str(trial / "checkpoint_000003")))
    assert found is not None
    checkpoint, epoch = found
    assert (Path(checkpoint.path).name, epoch) == ("checkpoint_000001", 2)

    assert surviving_checkpoint(Checkpoint(str(trial / "checkpoint_000000"))) is None
    assert surviving_checkpoint(Checkpoint(str(tmp_path / "elsewhere" / "checkpoint_000005"))) is None


def test_resume_when_the_checkpoint_tune_recorded_was_deleted(ws: Workspace) -> None:
    """Tune deletes checkpoints beyond keep_checkpoints at once but saves its state every few
    seconds: a driver killed in between leaves a state naming a deleted checkpoint, and Tune's
    own restore then errors the trial on every retry. Resume must continue such a trial from
    its newest earlier checkpoint, or from scratch when it has none, and finish the sweep.

    The state is made that way on purpose: a Ctrl-C'd sweep (state saved with both trials
    mid-training), then one trial loses the checkpoint Tune recorded, the other every one.
    """
    from ray.tune import ExperimentAnalysis

    from hairseg_core.artifact import load_model

    epochs = 6
    space = ws.space(
        {
            "num_samples": 2,
            "max_concurrent_trials": 2,
            "fixed": {"epochs": epochs},
            "scheduler": {"type": "fifo"},
            "keep_checkpoints": 2,
        }
    )
    first = ws.start(["--space", str(space), "--no-finalize", "--num-cpus", "2", "--quiet"], "first")

    def both_mid_training() -> bool:
        # Counted in Tune's result files, which the driver writes as it registers each checkpoint
        # (MLflow gets an epoch earlier, from the trial): the state saved at Ctrl-C then holds two.
        if first.proc.poll() is not None:
            raise AssertionError(f"the sweep ended before it could be interrupted: {first.describe()}")
        sweeps = [p for p in ws.storage.iterdir() if p.is_dir()] if ws.storage.is_dir() else []
        try:
            done = [len(rows) for rows in tune_results(sweeps[0]).values()] if sweeps else []
        except ValueError:  # a result line caught half-written
            return False
        return len(done) == 2 and all(2 <= n <= epochs - 2 for n in done)

    wait_until(both_mid_training, 240, "both trials with 2 to 4 epochs done", interval=0.2)
    os.killpg(first.proc.pid, signal.SIGINT)
    assert first.wait(180) == 130, first.describe()

    trials = sorted(ExperimentAnalysis(str(ws.sweep_dir())).trials, key=lambda t: t.trial_id)
    assert len(trials) == 2 and all(t.checkpoint is not None for t in trials), trials
    partly, wholly = trials
    lost = Path(partly.checkpoint.path)
    earlier = [p for p in lost.parent.glob("checkpoint_*") if p.name < lost.name]
    assert earlier, f"keep_checkpoints 2 should have kept a checkpoint before {lost}"
    expected_epoch = load_model(max(earlier), "state")["epoch"]
    shutil.rmtree(lost)
    for folder in Path(wholly.checkpoint.path).parent.glob("checkpoint_*"):
        shutil.rmtree(folder)

    second = ws.run(["--resume", "--no-finalize", "--num-cpus", "2", "--quiet"], timeout=300, log_name="resume")
    assert second.proc.returncode == 0, second.describe()
    after = sweep_runs(ws.tracking_uri)
    check_sweep_accounted(after, tune_results(ws.sweep_dir()), 2, epochs)
    by_trial = after.by_trial()
    assert by_trial[partly.trial_id].data.tags["hairseg.restored_from_epoch"] == str(expected_epoch)
    assert by_trial[wholly.trial_id].data.tags["hairseg.restored_from_epoch"] == "0"
    assert all(int(run.data.tags["hairseg.epochs_run"]) == epochs for run in after.trials)
