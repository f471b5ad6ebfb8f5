"""Inputs and checks of a quantised export: calibration images, and the deployed graph's own test accuracy.

Table 5 measures the eager fp32 network. When ``finalize.quantize`` is ``int8`` the webcam app runs a
different graph, so the final stage measures that one too, on every test source, the way ``hairseg
evaluate`` runs an export (network at the trained scale, metrics on the full-resolution masks), with the
same bootstrap resamples as Table 5 on the first source; ``model.json``'s ``metrics`` then describe the
int8 graph (the fp32 figures are kept beside them with an ``fp32_`` prefix).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hairseg_core.config import TrainConfig
from hairseg_core.data.input_path import source_dataset
from hairseg_core.data.splits import LazySplit
from hairseg_core.deploy.inference import load_predictor
from hairseg_core.final.bootstrap import PerImageCounts, bootstrap_weights, metric_interval
from hairseg_core.final.state import FinalStage
from hairseg_core.final.table5 import TABLE_METRICS
from hairseg_core.final.test_split import load_test_split, test_sources
from hairseg_core.progress import progress_bar
from hairseg_core.train.metrics import SegmentationMetrics


def calibration_images(train_config: TrainConfig, count: int) -> list[np.ndarray]:
    """``count`` training images (RGB uint8, evenly spread over the first training source's train split)."""
    sources = [s for s in train_config.data_sources if s.train]
    if not sources:
        raise ValueError("int8 calibration needs a data source with train: true; none has it")
    split = LazySplit(source_dataset(sources[0], "train"))
    if len(split) == 0:
        raise ValueError(f"int8 calibration: data source {sources[0].name!r} has no train images")
    picks = np.unique(np.linspace(0, len(split) - 1, num=min(count, len(split))).round().astype(int))
    return [split.sample(int(i))[0] for i in picks]


def _scores(predictor: Any, split: Any, desc: str, progress: bool) -> tuple[dict[str, float], PerImageCounts]:
    metrics, counts = SegmentationMetrics(num_classes=2), PerImageCounts()
    for i in progress_bar(range(len(split)), desc=desc, disable=not progress, leave=False):
        image, mask = split.sample(i)
        pred = (predictor(image) >= 0.5).astype(np.int64)
        counts.record(metrics, pred, mask.astype(np.int64), split.names[i])
    scores = metrics.compute()
    return {k: float(scores[k]) for k in TABLE_METRICS}, counts


def evaluate_export(export_dir: Path, stage: FinalStage) -> list[dict[str, Any]]:
    """Every test source scored with the export as ``model.json`` names it (the int8 graph), beside the
    eager network's figures from Table 5; the first source with its bootstrap interval."""
    settings = stage.settings
    predictor = load_predictor(export_dir, scale="auto")
    eager = {row["source"]: row for row in stage.per_source}
    rows = []
    for index, source in enumerate(test_sources(stage.train_config)):
        split = (
            stage.test
            if index == 0
            else load_test_split(stage.train_config, settings.test_split, settings.max_test_images, source)
        )
        scores, counts = _scores(predictor, split, f"export on {source.name}", stage.progress)
        row: dict[str, Any] = {"source": source.name, "images": len(split), **scores}
        if index == 0:
            weights = stage.weights
            if weights is None or weights.shape[1] != len(split):
                weights = bootstrap_weights(len(split), settings.bootstrap_resamples, settings.bootstrap_seed)
            estimate = metric_interval(counts, weights, "miou", settings.promote_confidence)
            row["miou_lo"], row["miou_hi"] = estimate.lo, estimate.hi
        if source.name in eager:
            row["fp32_miou"] = float(eager[source.name]["miou"])
        rows.append(row)
    return rows


def record_export_metrics(export_dir: Path, rows: list[dict[str, Any]]) -> None:
    """``model.json``'s ``metrics`` become the deployed graph's on the first source; fp32 kept as ``fp32_*``."""
    path = export_dir / "model.json"
    data = json.loads(path.read_text())
    fp32 = {f"fp32_{k}": v for k, v in (data.get("metrics") or {}).items() if not k.startswith("fp32_")}
    data["metrics"] = {**{k: rows[0][k] for k in TABLE_METRICS}, **fp32}
    path.write_text(json.dumps(data, indent=2) + "\n")
