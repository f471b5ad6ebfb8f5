"""Retiring a trial run that no trial continues: replaced after a restart from an older epoch, or orphaned.

A retired run is tagged with why, closed KILLED and deleted: hidden from the UI and from searches, and
``MlflowClient.restore_run`` brings it back.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from typing import Any

from mlflow.entities import Metric
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from hairseg_core.track.experiment import ExperimentRuns
from hairseg_core.track.retry import with_retries
from hairseg_core.track.tags import (
    TAG_CREATE_TOKEN,
    TAG_NOTE,
    TAG_ORPHANED,
    TAG_SOURCE_GIT_COMMIT,
    TAG_SOURCE_NAME,
    TAG_SOURCE_TYPE,
    TAG_SUPERSEDE_REASON,
    TAG_SUPERSEDED_BY,
    TAG_SUPERSEDES,
)

#: MLflow's own tags a replacement trial run keeps (the name, the description, the source).
_COPIED_MLFLOW_TAGS = {
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_RUN_NAME,
    TAG_NOTE,
    TAG_SOURCE_NAME,
    TAG_SOURCE_TYPE,
    TAG_SOURCE_GIT_COMMIT,
}
_EPOCH_IMAGE = re.compile(r"epoch(\d+)[_.]")


def _epoch_of(artifact_path: str) -> int | None:
    """The epoch of a ``predictions/epoch003.png`` (or older ``epoch003_0.png``) artifact, else None."""
    found = _EPOCH_IMAGE.search(artifact_path.rsplit("/", 1)[-1])
    return int(found.group(1)) if found else None


class RunRetirement(ExperimentRuns):
    """Replaces or retires trial runs, so every trial has exactly one live run holding each epoch once."""

    def supersede_trial_run(self, run_id: str, keep_through: int, reason: str) -> str:
        """Replace a trial's run by a copy holding only its epochs ``1..keep_through``; return the copy.

        Used when an attempt restarts from an older checkpoint (or from scratch) than the run's last
        logged epoch: the epochs after ``keep_through`` are trained again, and logging them into the
        same run would give one epoch two values (MLflow cannot delete logged values). The copy gets
        the run's tags, parameters, every metric value at steps <= ``keep_through`` (system metrics up
        to the moment that epoch was logged) and the per-epoch prediction images of those epochs; the
        old run is tagged ``hairseg.superseded_by`` and deleted (hidden from the UI and from searches;
        ``MlflowClient.restore_run`` brings it back).
        """
        old = self.get_run(run_id)
        keep_tags = {k: v for k, v in old.data.tags.items() if not k.startswith("mlflow.") or k in _COPIED_MLFLOW_TAGS}
        keep_tags[TAG_SUPERSEDES] = run_id
        keep_tags[TAG_SUPERSEDE_REASON] = reason
        keep_tags.pop(TAG_CREATE_TOKEN, None)
        new = self._create_run(
            old.info.experiment_id,
            keep_tags,
            "create replacement trial run",
            run_name=old.info.run_name,
            start_time=old.info.start_time,
        )
        new_id = new.info.run_id
        self.log_params(new_id, dict(old.data.params))
        self.copy_datasets(run_id, new_id)
        self._copy_metrics(run_id, list(old.data.metrics), new_id, keep_through)
        self._copy_epoch_images(run_id, new_id, keep_through)
        self._retire_run(run_id, {TAG_SUPERSEDED_BY: new_id}, "superseded")
        return new_id

    def retire_orphan_trial_run(self, run_id: str, reason: str) -> None:
        """Close and delete the run of a trial the sweep no longer has, saying why (tag ``hairseg.orphaned``).

        A driver killed between a new trial's start and Tune's next save of its experiment state leaves
        that trial's MLflow run behind, but the restored sweep has no such trial and never continues it.
        Left RUNNING it would be an extra row in the runs table, counted by nothing; deleted like a
        superseded run it is hidden from the UI and from searches (``MlflowClient.restore_run`` brings
        it back).
        """
        self._retire_run(run_id, {TAG_ORPHANED: reason}, "orphaned")

    def _retire_run(self, run_id: str, tags: Mapping[str, Any], what: str) -> None:
        """Tag a trial run with why it is retired, close it KILLED and delete it (hidden, restorable)."""
        self.set_tags(run_id, tags)
        with_retries(lambda: self.client.set_terminated(run_id, status="KILLED"), f"end {what} run")
        with_retries(lambda: self.client.delete_run(run_id), f"delete {what} run")

    def _copy_metrics(self, run_id: str, keys: list[str], new_id: str, keep_through: int) -> None:
        """Each of ``keys`` at steps <= ``keep_through``; system metrics up to when that epoch was logged."""
        epoch_time: int | None = None
        metrics: list[Metric] = []
        for key in keys:
            history = with_retries(lambda key=key: self.client.get_metric_history(run_id, key), "read metric history")
            if not key.startswith("system/"):
                kept = [m for m in history if m.step <= keep_through]
                metrics += kept
                if key == "val_miou" and kept:
                    epoch_time = max(m.timestamp for m in kept)
        for key in (k for k in keys if k.startswith("system/")):
            history = with_retries(lambda key=key: self.client.get_metric_history(run_id, key), "read metric history")
            metrics += [m for m in history if epoch_time is not None and m.timestamp <= epoch_time]
        for i in range(0, len(metrics), 500):
            chunk = [Metric(m.key, m.value, m.timestamp, m.step) for m in metrics[i : i + 500]]
            with_retries(lambda chunk=chunk: self.client.log_batch(new_id, metrics=chunk), "copy metrics")

    def _copy_epoch_images(self, src: str, dst: str, keep_through: int) -> None:
        files = with_retries(lambda: self.client.list_artifacts(src, "predictions"), "list artifacts")
        kept = [f.path for f in files if 0 < (_epoch_of(f.path) or 0) <= keep_through]
        if not kept:
            return
        with tempfile.TemporaryDirectory(prefix="hairseg-copy-") as tmp:
            for path in kept:
                local = self.download_artifact(src, path, tmp)
                with_retries(lambda local=local: self.client.log_artifact(dst, str(local), "predictions"), "copy image")
