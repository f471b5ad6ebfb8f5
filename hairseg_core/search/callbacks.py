"""Driver-side bookkeeping of MLflow: every trial's run is closed with the status it ended with."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from hairseg_core.search.trial import TrackingSettings
from hairseg_core.track.runs import Tracker
from hairseg_core.track.tags import TAG_EARLY_STOPPED, TAG_EPOCHS_RUN, TAG_TRIAL


class MlflowStatusCallback(Callback):
    """Driver side: closes each trial's MLflow run with the right status.

    A trial stopped by ASHA is killed between epochs, so it cannot close its own run; the
    driver sees every ending (complete, early-stopped, errored) and records it.
    """

    def __init__(self, tracking: TrackingSettings, max_t: int) -> None:
        self.tracking = tracking
        self.max_t = max_t
        self._tracker: Tracker | None = None

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.tracking.tracking_uri, self.tracking.experiment)
        return self._tracker

    def _close(self, trial: Any, status: str) -> None:
        hint = (trial.last_result or {}).get("mlflow_run_id")
        run_id = self.tracker.current_trial_run(self.tracking.sweep, trial.trial_id, hint, self.tracking.parent_run_id)
        if not run_id:
            return
        epochs = int((trial.last_result or {}).get("training_iteration", 0))
        self.tracker.set_tags(
            run_id,
            {
                TAG_EPOCHS_RUN: epochs,
                TAG_EARLY_STOPPED: status == "FINISHED" and epochs < self.max_t,
            },
        )
        # The UI's table and bar charts show a metric's last value; a trial is ranked by its best epoch.
        self.tracker.log_best_metrics(run_id)
        self.tracker.end_run(run_id, status)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Retire the runs of trials this sweep does not have (started just before a driver died, unsaved).

        Only runs this sweep created count (their ``hairseg.parent_run_id`` is this sweep's parent run): a
        run of another sweep, even one with the same name, is never touched.
        """
        known = {trial.trial_id for trial in trials}
        for run in self.tracker.trial_runs(self.tracking.sweep, self.tracking.parent_run_id):
            trial_id = run.data.tags.get(TAG_TRIAL)
            if trial_id not in known:
                self.tracker.retire_orphan_trial_run(
                    run.info.run_id,
                    f"trial {trial_id} started before the driver stopped, and Tune's saved state did not record "
                    "it yet: the resumed sweep does not have this trial and did not continue it",
                )

    def __getstate__(self) -> dict[str, Any]:  # the MLflow client is not picklable; rebuild lazily
        return {**self.__dict__, "_tracker": None}
