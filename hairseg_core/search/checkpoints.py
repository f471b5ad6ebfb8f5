"""Checkpoint recovery: a trial whose newest checkpoint is gone continues from an earlier one.

See :class:`RestoreFromSurvivingCheckpoint` for why Tune's saved state can name a deleted checkpoint.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pyarrow.fs
from ray.train._internal.session import _TrainingResult
from ray.tune import Checkpoint
from ray.tune.result import TRAINING_ITERATION

from hairseg_core.artifact import CHECKPOINT_FILE, CheckpointError, load_model

logger = logging.getLogger(__name__)

_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)$")


def holds_checkpoint_file(checkpoint: Checkpoint) -> bool:
    """Whether ``checkpoint`` still holds its model file (a deletion may have been cut short)."""
    info = checkpoint.filesystem.get_file_info(f"{checkpoint.path.rstrip('/')}/{CHECKPOINT_FILE}")
    return info.type == pyarrow.fs.FileType.File


def surviving_checkpoint(missing: Checkpoint) -> tuple[Checkpoint, int] | None:
    """The newest readable checkpoint its trial wrote before ``missing``, with its epoch; else None.

    Checkpoint folders are numbered in the order a trial reports them, so a lower number was
    written earlier, fully (a trial persists a checkpoint before reporting it).
    """
    parent, _, name = missing.path.rstrip("/").rpartition("/")
    number = _CHECKPOINT_DIR.match(name)
    if number is None:
        return None
    missing_index = int(number.group(1))
    selector = pyarrow.fs.FileSelector(parent, allow_not_found=True)
    earlier = []
    for info in missing.filesystem.get_file_info(selector):
        found = _CHECKPOINT_DIR.match(info.base_name)
        if found and info.type == pyarrow.fs.FileType.Directory and int(found.group(1)) < missing_index:
            earlier.append((int(found.group(1)), info.path))
    for _, path in sorted(earlier, reverse=True):
        candidate = Checkpoint(path, filesystem=missing.filesystem)
        if not holds_checkpoint_file(candidate):
            continue
        try:
            with candidate.as_directory() as local:
                epoch = int(load_model(local, "state")["epoch"])
        except (CheckpointError, OSError) as exc:
            logger.warning("skipping unreadable checkpoint %s: %s", path, exc)
            continue
        return candidate, epoch
    return None


class RestoreFromSurvivingCheckpoint:
    """Trainable mixin: when Tune's checkpoint of a trial is gone, continue from an earlier one.

    Tune deletes a trial's checkpoints beyond ``num_to_keep`` (keeping the best by the metric,
    and the newest) as soon as a new one arrives, but writes its experiment state only every
    few seconds. A driver killed in between (OOM, preemption, a closed laptop) leaves a state
    that names a deleted checkpoint, and Tune's own restore then fails the trial on every retry:
    ``--resume`` would end an unfinished trial ERROR. Any earlier checkpoint is a consistent
    point to continue from: the epochs after it are trained again and reported with the same
    iteration numbers, as when Tune's state merely predates a trial's last epochs. With no
    earlier checkpoint the trial starts over.
    """

    def restore(self, checkpoint_path: Any) -> Any:
        missing = _restored_checkpoint(checkpoint_path)
        if missing is None or holds_checkpoint_file(missing):
            return super().restore(checkpoint_path)  # type: ignore[misc]
        fallback = surviving_checkpoint(missing)
        if fallback is None:
            logger.warning(
                "checkpoint %s of this trial no longer exists and no earlier one does: the trial starts over",
                missing.path,
            )
            return None
        checkpoint, epoch = fallback
        logger.warning(
            "checkpoint %s of this trial no longer exists: continuing from %s (epoch %d)",
            missing.path,
            checkpoint.path,
            epoch,
        )
        return super().restore(_restore_point(checkpoint, epoch))  # type: ignore[misc]


# Ray 2.60 has no public type for what ``Trainable.restore`` receives from the Tune controller: it
# is ``ray.train._internal.session._TrainingResult`` (checkpoint + metrics). ``restore``
# also takes a public ``tune.Checkpoint``, but then resets the trial's ``training_iteration`` to 0,
# so the epochs after the fallback would be reported with wrong iteration numbers and ASHA would
# compare them at the wrong rungs. The private type is therefore used here, and only here; the project's
# other private Ray / Optuna / MLflow names, and what breaks when they change, are in docs/private-names.md.
def _restored_checkpoint(argument: Any) -> Checkpoint | None:
    """The checkpoint Tune asks a trial to restore from, when it passes its internal result type."""
    return argument.checkpoint if isinstance(argument, _TrainingResult) else None


def _restore_point(checkpoint: Checkpoint, epoch: int) -> Any:
    """What ``Trainable.restore`` needs to continue from ``checkpoint`` as iteration ``epoch``."""
    return _TrainingResult(checkpoint=checkpoint, metrics={TRAINING_ITERATION: epoch})
