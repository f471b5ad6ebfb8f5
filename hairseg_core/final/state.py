"""One final stage under way: what it was given and what its steps have made so far, and what it returns."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hairseg_core.config import DataSource, FinalizeSettings, TrainConfig
from hairseg_core.data.splits import LazySplit
from hairseg_core.final.bootstrap import PerImageCounts
from hairseg_core.final.record import FinalRecord
from hairseg_core.track.runs import Tracker


@dataclass
class FinalizeResult:
    table: list[dict[str, Any]]
    export: dict[str, Any]
    decision: dict[str, Any]
    model_version: str | None
    finalize_run_id: str | None = None
    notes: list[str] = field(default_factory=list)
    inference_scale: int | None = None


@dataclass
class FinalStage:
    """The final stage of one checkpoint, filled in by its steps in order (``hairseg_core.final.stage``).

    A step the record says an earlier attempt did fills its part from the record instead of redoing it.
    """

    checkpoint_path: str | Path
    train_config: TrainConfig
    settings: FinalizeSettings
    tracker: Tracker
    parent_run_id: str | None
    sweep: str
    record: FinalRecord
    dry_run: bool
    progress: bool
    #: the network, at the scale it was trained at, and the first test source's images
    model: Any
    scale: int | None
    primary: DataSource
    test: LazySplit
    #: step ``table5``: Table 5, every source's baseline row, example panels, per-image counts, resamples
    table: list[dict[str, Any]] = field(default_factory=list)
    per_source: list[dict[str, Any]] = field(default_factory=list)
    panels: list[np.ndarray] = field(default_factory=list)
    counts: dict[str, PerImageCounts] = field(default_factory=dict)
    weights: np.ndarray | None = None
    #: step ``decision``: the promotion decision, the tags of its interval, notes to print at the end
    decision: dict[str, Any] = field(default_factory=dict)
    tags_of_decision: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: step ``export``: what ``export_all`` reported
    export: dict[str, Any] = field(default_factory=dict)
    #: step ``finalize_run``: the MLflow run holding Table 5 and the exports
    run_id: str = ""

    @property
    def digest(self) -> str:
        """sha256 of the checkpoint: the key of this stage's record and of its registered version."""
        return self.record.digest

    @property
    def export_dir(self) -> Path:
        """``exports/<sweep>/``: the webcam model's folder."""
        return Path(self.settings.export_dir) / self.sweep

    def result(self, model_version: str | None) -> FinalizeResult:
        return FinalizeResult(
            table=self.table,
            export=self.export,
            decision=self.decision,
            model_version=model_version,
            finalize_run_id=self.run_id,
            notes=self.notes,
            inference_scale=self.scale,
        )


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (dataclasses as dicts, anything else as its string): what a record holds."""
    return json.loads(json.dumps(value, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)))
