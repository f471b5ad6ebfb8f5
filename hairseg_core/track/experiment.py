"""One MLflow experiment and the plain writes every kind of run shares (params, metrics, tags, artifacts).

What each kind of run means (a sweep's parent run, a trial, a final stage, a model version) lives in
its own class built on :class:`ExperimentRuns`; every call here goes through ``with_retries`` with an
explicit run id, never the fluent ``mlflow.start_run`` stack, so a resumed trial writes into its own run.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from hairseg_core.track.client import tracking_client
from hairseg_core.track.errors import UnknownExperiment
from hairseg_core.track.retry import create_once, with_retries
from hairseg_core.track.tags import EXPERIMENT_KIND, TAG_CREATE_TOKEN, TAG_DATASET_CONTEXT, TAG_EXPERIMENT_KIND

#: Tries of ``log_inputs`` when a concurrent run inserted the same dataset first.
_DATASET_RACE_TRIES = 4
#: How the SQL back-ends MLflow supports word a unique-constraint violation (sqlite, MySQL, PostgreSQL, MSSQL).
_UNIQUE_VIOLATION = ("UNIQUE constraint failed", "Duplicate entry", "duplicate key value", "Violation of UNIQUE KEY")


def _is_unique_violation(exc: MlflowException) -> bool:
    return any(marker in str(exc) for marker in _UNIQUE_VIOLATION)


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Nested settings → MLflow params (``scheduler.max_t``), values truncated to MLflow's limit."""
    out: dict[str, str] = {}
    _flatten("", params, out)
    return {k: v[:6000] for k, v in out.items()}


class ExperimentRuns:
    """An experiment's runs, found, created and written to; cheap to construct in each Ray worker."""

    def __init__(
        self, tracking_uri: str, experiment: str, artifact_location: str | None = None, create: bool = True
    ) -> None:
        """``create=False``: a look-up; an experiment that does not exist raises :class:`UnknownExperiment`."""
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self._create = create
        self.client = tracking_client(tracking_uri)
        self._artifact_location = artifact_location
        self._experiment_id: str | None = None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = with_retries(self._ensure_experiment, "get/create experiment")
        return self._experiment_id

    def _ensure_experiment(self) -> str:
        """The experiment's id, creating it tagged as model training (an older one gets the tag now).

        Without ``mlflow.experimentKind`` MLflow 3's UI guesses, and an experiment it cannot classify
        opens in the GenAI view (traces, no runs table).
        """
        found = self.client.get_experiment_by_name(self.experiment)
        if found is None and not self._create:
            known = sorted(e.name for e in self.client.search_experiments(max_results=50))
            raise UnknownExperiment(
                f"no MLflow experiment {self.experiment!r} in {self.tracking_uri} (experiments: {', '.join(known)})"
            )
        if found is not None:
            if found.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND and self._create:
                self.client.set_experiment_tag(found.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
            return found.experiment_id
        try:
            return self.client.create_experiment(
                self.experiment,
                artifact_location=self._artifact_location,
                tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND},
            )
        except MlflowException:  # created concurrently by another process
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    # ----------------------------------------------------------------- find and create
    def _find(self, filter_string: str) -> list[Any]:
        return with_retries(
            lambda: self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1000),
            "search runs",
        )

    def _create_run(self, experiment_id: str, tags: Mapping[str, Any], what: str, **kwargs: Any) -> Any:
        """``create_run`` at most once: tagged with a fresh token, found by it if an answer was lost."""
        token = uuid.uuid4().hex
        tags = {**tags, TAG_CREATE_TOKEN: token}

        def lookup() -> Any | None:
            runs = self.client.search_runs([experiment_id], filter_string=f"tags.`{TAG_CREATE_TOKEN}` = '{token}'")
            return runs[0] if runs else None

        return create_once(lambda: self.client.create_run(experiment_id, tags=tags, **kwargs), lookup, what)

    def get_run(self, run_id: str) -> Any:
        return with_retries(lambda: self.client.get_run(run_id), "get run")

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        RunStatus.from_string(status)  # validates the name
        with_retries(lambda: self.client.set_terminated(run_id, status=status), "end run")

    # ----------------------------------------------------------------- params, metrics, tags, inputs
    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            chunk = items[i : i + 100]
            with_retries(lambda chunk=chunk: self.client.log_batch(run_id, params=chunk), "log params")

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
        with_retries(lambda: self.client.log_batch(run_id, metrics=batch), "log metrics")

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        with_retries(lambda: self.client.log_batch(run_id, tags=batch), "set tags")

    def log_datasets(self, run_id: str, fingerprints: Iterable[Any], context: str = "training") -> None:
        """The run's data sources as MLflow dataset inputs (the UI's Dataset column and run page)."""
        inputs = [
            DatasetInput(
                Dataset(
                    name=f.name,
                    digest=f.digest[:36],
                    source_type="local",
                    source=json.dumps({"uri": f.root}),
                    profile=json.dumps({"dataset": f.dataset, **{f"num_{k}": v for k, v in f.counts.items()}}),
                ),
                tags=[InputTag(TAG_DATASET_CONTEXT, context)],
            )
            for f in fingerprints
        ]
        if inputs:
            self._log_inputs(run_id, inputs)

    def _log_inputs(self, run_id: str, inputs: list[DatasetInput]) -> None:
        """``log_inputs``, once more when another run registered the same dataset at the same moment.

        MLflow's stores look a dataset up by (experiment, name, digest) and insert it if absent, in two
        statements: two sweeps (or trials) of one experiment logging one data set at the same instant
        make the slower insert fail its unique constraint (seen with two sweeps started together on one
        ``mlflow server``). The failed call changed nothing; the retry finds the dataset and only links it.
        """
        for attempt in range(_DATASET_RACE_TRIES):
            try:
                with_retries(lambda: self.client.log_inputs(run_id, datasets=inputs), "log dataset inputs")
                return
            except MlflowException as exc:
                if attempt + 1 == _DATASET_RACE_TRIES or not _is_unique_violation(exc):
                    raise
                time.sleep(0.2 * (attempt + 1))

    def copy_datasets(self, src_run_id: str, dst_run_id: str) -> None:
        """Log the dataset inputs of one run onto another (a trial fed the sweep's shared data)."""
        run = self.get_run(src_run_id)
        datasets = list(run.inputs.dataset_inputs) if run.inputs is not None else []
        if datasets:
            with_retries(lambda: self.client.log_inputs(dst_run_id, datasets=datasets), "copy dataset inputs")

    # ----------------------------------------------------------------- artifacts
    def log_image(self, run_id: str, image: Any, artifact_file: str) -> None:
        with_retries(lambda: self.client.log_image(run_id, image, artifact_file=artifact_file), "log image")

    def log_figure(self, run_id: str, figure: Any, artifact_file: str) -> None:
        with_retries(lambda: self.client.log_figure(run_id, figure, artifact_file), "log figure")

    def log_table(self, run_id: str, rows: list[dict[str, Any]], artifact_file: str) -> None:
        frame = pd.DataFrame(rows)
        with_retries(lambda: self.client.log_table(run_id, frame, artifact_file), "log table")
        buf = io.StringIO()
        frame.to_csv(buf, index=False)
        with_retries(
            lambda: self.client.log_text(run_id, buf.getvalue(), artifact_file.rsplit(".", 1)[0] + ".csv"),
            "log csv",
        )

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        with_retries(lambda: self.client.log_artifacts(run_id, str(local_dir), artifact_path), "log artifacts")

    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        with_retries(lambda: self.client.log_dict(run_id, dict(data), artifact_file), "log dict")

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        with_retries(lambda: self.client.log_text(run_id, text, artifact_file), "log text")

    def download_artifact(self, run_id: str, path: str, dst: str | Path) -> Path:
        return Path(with_retries(lambda: self.client.download_artifacts(run_id, path, str(dst)), "download artifact"))
