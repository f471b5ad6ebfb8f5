"""A sweep's runs in MLflow: its parent run, its final-stage run, and :class:`Tracker`, which a sweep hands around.

Design choices, and why:

* One parent run per sweep, found by its tags (``hairseg.sweep`` + ``hairseg.kind = sweep``); a new sweep
  never reopens a run of the same name, a resumed one reopens the run its manifest recorded.
* Trial runs (:mod:`hairseg_core.track.trials`) are top-level runs of the experiment tied to the sweep by
  tags, retired ones are deleted (:mod:`hairseg_core.track.retire`), and the final stage's model goes to
  the registry (:mod:`hairseg_core.track.registry`). Each job is a class of its own on
  :class:`~hairseg_core.track.experiment.ExperimentRuns`; :class:`Tracker` is all of them on one client.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from hairseg_core.track.client import tracking_client
from hairseg_core.track.errors import SweepNameTaken
from hairseg_core.track.experiment import ExperimentRuns, flatten_params
from hairseg_core.track.provenance import environment_tags, source_tags
from hairseg_core.track.registry import ModelRegistry
from hairseg_core.track.retire import RunRetirement
from hairseg_core.track.retry import with_retries
from hairseg_core.track.tags import TAG_KIND, TAG_NOTE, TAG_SWEEP, VIEW_TAG_PREFIX
from hairseg_core.track.trials import TrialRuns
from hairseg_core.track.view import view_envelope, view_key


def existing_sweep_run(tracking_uri: str, experiment: str, sweep: str) -> str | None:
    """The parent run of a sweep named ``sweep`` in ``experiment``, or None; creates nothing (no experiment)."""
    client = tracking_client(tracking_uri)
    found = with_retries(lambda: client.get_experiment_by_name(experiment), "get experiment")
    if found is None:
        return None
    runs = with_retries(
        lambda: client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_KIND}` = 'sweep'",
            max_results=1,
        ),
        "search runs",
    )
    return runs[0].info.run_id if runs else None


class SweepRuns(ExperimentRuns):
    """A sweep's parent run: created once per sweep name, reopened on resume, with its saved UI view."""

    def find_parent(self, sweep: str) -> str | None:
        runs = self._find(f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_KIND}` = 'sweep'")
        return runs[0].info.run_id if runs else None

    def start_sweep(
        self,
        sweep: str,
        space: Mapping[str, Any],
        space_file: str | None = None,
        resume: bool = False,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> str:
        """Create the sweep's parent run and log the search space; on ``resume``, reopen it.

        A resumed sweep reopens ``parent_run_id`` (the run its manifest recorded), or the run of its name
        for sweeps from before the manifest had it. A new sweep never reopens a run: a name that already
        has a parent run is refused (``SweepNameTaken``), since reopening would mix two sweeps' records.
        """
        if resume:
            existing = parent_run_id or self.find_parent(sweep)
            if existing:
                with_retries(lambda: self.client.update_run(existing, status="RUNNING"), "reopen parent run")
                return existing
        elif self.find_parent(sweep):
            raise SweepNameTaken(f"experiment {self.experiment!r} already has a sweep named {sweep}")
        note = (
            f"Sweep **{sweep}**: {space.get('num_samples', '?')} trials of search space "
            f"`{space.get('name', '?')}`, objective `{space.get('metric', '?')}` ({space.get('mode', '?')}). "
            "Each trial is a run of its own in this experiment, tagged `hairseg.sweep`; this run holds the "
            "search space, the results table, the best configuration and the Optuna plots, and its child "
            "run `<sweep>-finalize` holds Table 5, the exports and the registered model."
        )
        tags = {
            TAG_SWEEP: sweep,
            TAG_KIND: "sweep",
            MLFLOW_RUN_NAME: sweep,
            TAG_NOTE: note,
            **source_tags(),
            **environment_tags(),
            **{k: str(v) for k, v in (tags or {}).items()},
        }
        run = self._create_run(self.experiment_id, tags, "create parent run", run_name=sweep)
        run_id = run.info.run_id
        params = flatten_params({k: v for k, v in space.items() if k != "params"})
        params["search_space"] = json.dumps(space.get("params", {}), sort_keys=True)
        self.log_params(run_id, params)
        self.log_dict(run_id, dict(space), "search_space.json")
        if space_file and Path(space_file).is_file():
            with_retries(lambda: self.client.log_artifact(run_id, space_file), "log search space file")
        return run_id

    def save_sweep_view(self, sweep: str, space: Mapping[str, Any]) -> str:
        """Save the UI view a sweep is compared in (an experiment tag) and return its share key.

        ``<ui>/#/experiments/<id>/runs?viewStateShareKey=<key>`` then opens the runs table filtered to
        this sweep, best trial first, with the sampled parameters and the validation metrics as columns,
        and a chart view comparing every trial. The view is also listed in the page's saved-views menu.
        """
        key = view_key(sweep)
        envelope = view_envelope(sweep, space)
        with_retries(
            lambda: self.client.set_experiment_tag(self.experiment_id, VIEW_TAG_PREFIX + key, envelope),
            "save sweep view",
        )
        return key

    def latest_sweep_runs(self, max_results: int = 50) -> list[Any]:
        """The experiment's sweep parent runs, newest first."""
        return with_retries(
            lambda: self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{TAG_KIND}` = 'sweep'",
                order_by=["attributes.start_time DESC"],
                max_results=max_results,
            ),
            "search sweep runs",
        )


class FinalStageRuns(ExperimentRuns):
    """A sweep's final-stage run (``<sweep>-finalize``): at most one FINISHED per completed final stage."""

    def start_finalize(self, sweep: str, parent_run_id: str | None, params: Mapping[str, Any]) -> str:
        """A child run of the sweep holding Table 5, the exports and the registered model.

        A final stage whose process was killed left its run RUNNING; it is closed KILLED here, so a
        sweep has at most one FINISHED final-stage run per completed final stage.
        """
        self._close_stale_finalize_runs(sweep)
        tags = {TAG_SWEEP: sweep, TAG_KIND: "finalize", MLFLOW_RUN_NAME: f"{sweep}-finalize"}
        if parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        run = self._create_run(self.experiment_id, tags, "create finalize run", run_name=tags[MLFLOW_RUN_NAME])
        self.log_params(run.info.run_id, flatten_params(params))
        return run.info.run_id

    def reopen_finalize(self, sweep: str, run_id: str) -> None:
        """Continue the final-stage run an earlier attempt created (recorded in the sweep's final-stage record);
        other final-stage runs of the sweep left RUNNING by killed attempts are closed KILLED."""
        self._close_stale_finalize_runs(sweep, keep=run_id)
        with_retries(lambda: self.client.update_run(run_id, status="RUNNING"), "reopen finalize run")

    def _close_stale_finalize_runs(self, sweep: str, keep: str | None = None) -> None:
        """Close KILLED the sweep's final-stage runs that killed attempts left RUNNING (all but ``keep``)."""
        stale = self._find(f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_KIND}` = 'finalize'")
        for run in stale:
            if run.info.status == "RUNNING" and run.info.run_id != keep:
                self.end_run(run.info.run_id, "KILLED")


class Tracker(SweepRuns, TrialRuns, RunRetirement, FinalStageRuns, ModelRegistry):
    """MLflow operations of one sweep; cheap to construct in each Ray worker.

    Every job's class on one client and experiment, for the code that does several (the driver, a trial,
    the final stage); each job's methods are in its own class.
    """
