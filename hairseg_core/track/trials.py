"""A trial's MLflow run: found again by its tags, created at most once, its best epoch and system usage logged.

A trial's run is found again by tags (``hairseg.sweep`` + ``hairseg.trial_id``), and its id is also kept
in the trial's checkpoint, so retries and ``--resume`` never create duplicates.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from hairseg_core.track.experiment import ExperimentRuns, flatten_params
from hairseg_core.track.provenance import environment_tags, source_tags
from hairseg_core.track.retry import with_retries
from hairseg_core.track.tags import TAG_KIND, TAG_NOTE, TAG_PARENT, TAG_SUPERSEDED_BY, TAG_SWEEP, TAG_TRIAL


class TrialRuns(ExperimentRuns):
    """The runs of a sweep's trials: one live run per trial, reopened by every attempt of it."""

    def find_trial(self, sweep: str, trial_id: str, parent_run_id: str | None = None) -> str | None:
        """The trial's live run; with ``parent_run_id``, only one that sweep run created."""
        parent = f" and tags.`{TAG_PARENT}` = '{parent_run_id}'" if parent_run_id else ""
        runs = self._find(f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_TRIAL}` = '{trial_id}'{parent}")
        return runs[0].info.run_id if runs else None

    def trial_runs(self, sweep: str, parent_run_id: str | None = None) -> list[Any]:
        """The sweep's live trial runs; with ``parent_run_id``, only those that sweep run created (by id:
        another sweep that once had the same name never counts)."""
        parent = f" and tags.`{TAG_PARENT}` = '{parent_run_id}'" if parent_run_id else ""
        return self._find(f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_KIND}` = 'trial'{parent}")

    def start_trial(
        self,
        sweep: str,
        parent_run_id: str,
        trial_id: str,
        trial_name: str,
        params: Mapping[str, Any],
        run_id: str | None = None,
        sampled: Mapping[str, Any] | None = None,
        datasets: Iterable[Any] = (),
    ) -> str:
        """Return the trial's run: the one given (from its checkpoint), the one tagged for it, or a new one.

        A new run is a top-level run of the experiment (not nested under the sweep's run, which MLflow's
        runs table would show collapsed), linked to its sweep by ``hairseg.sweep`` and
        ``hairseg.parent_run_id``; it gets a description naming its ``sampled`` values, the code's git
        commit and ``datasets`` (:mod:`hairseg_core.data.fingerprint`) as dataset inputs.
        """
        if run_id is None:
            run_id = self.find_trial(sweep, trial_id, parent_run_id)
        if run_id is not None:
            with_retries(lambda: self.client.update_run(run_id, status="RUNNING"), "reopen trial run")
            return run_id
        values = ", ".join(f"{k}={v}" for k, v in (sampled or {}).items()) or "no sampled values"
        tags = {
            TAG_SWEEP: sweep,
            TAG_KIND: "trial",
            TAG_TRIAL: trial_id,
            TAG_PARENT: parent_run_id,
            MLFLOW_RUN_NAME: trial_name,
            TAG_NOTE: f"Trial {trial_id} of sweep **{sweep}**: {values}.",
            **source_tags(),
            **environment_tags(),
        }
        run = self._create_run(self.experiment_id, tags, "create trial run", run_name=trial_name)
        self.log_params(run.info.run_id, flatten_params(params))
        self.log_datasets(run.info.run_id, datasets)
        return run.info.run_id

    def log_best_metrics(self, run_id: str) -> dict[str, float]:
        """``best_val_*`` on a trial's run from its per-epoch history (max, min for losses); returns them.

        MLflow's runs table and bar charts show a metric's last value; ASHA compares trials by their
        best epoch, and a trial's last epoch is often not its best, so the best values are logged too.
        """
        run = self.get_run(run_id)
        best: dict[str, float] = {}
        last_step = 0
        for key in run.data.metrics:
            if not key.startswith("val_"):
                continue
            history = with_retries(lambda key=key: self.client.get_metric_history(run_id, key), "read metric history")
            values = [m.value for m in history if m.value == m.value]  # NaN never wins
            last_step = max([last_step, *(m.step for m in history)])
            if values:
                best[f"best_{key}"] = min(values) if "loss" in key else max(values)
        if best:
            self.log_metrics(run_id, best, step=last_step)
        return best

    def logged_epochs(self, run_id: str, key: str = "val_miou") -> list[int]:
        """The steps (epochs) ``key`` was logged at in ``run_id``, in logging order, repeats included."""
        history = with_retries(lambda: self.client.get_metric_history(run_id, key), "read metric history")
        return [m.step for m in sorted(history, key=lambda m: (m.timestamp, m.step))]

    def current_trial_run(
        self, sweep: str, trial_id: str, hint: str | None, parent_run_id: str | None = None
    ) -> str | None:
        """The trial's live run: ``hint`` (from a checkpoint) unless it was superseded, else the tagged one.

        A checkpoint written before a restarted attempt replaced the trial's run still names the old
        run; that one is deleted and points at its successor (tag ``hairseg.superseded_by``).
        """
        if hint is not None:
            run = self.get_run(hint)
            if run.info.lifecycle_stage != "deleted" and TAG_SUPERSEDED_BY not in run.data.tags:
                return hint
        return self.find_trial(sweep, trial_id, parent_run_id)


def start_system_metrics(run_id: str, tracking_uri: str, interval: float = 10.0) -> Any | None:
    """CPU / memory / GPU usage of this trial's process into its run; None where unavailable."""
    # Its start/stop INFO lines would repeat for every trial in the sweep's console.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor  # deferred, optional: psutil

        monitor = SystemMetricsMonitor(
            run_id, sampling_interval=interval, resume_logging=True, tracking_uri=tracking_uri
        )
        monitor.start()
        return monitor
    except Exception:  # psutil missing, no permission for GPU counters, ...: optional by nature
        return None
