"""Step ``table5``: the paper's Table 5 (Baseline, +CRF, +Matting, +CRF+Matting) on the test split, with intervals.

Acc, Acc_class, mIoU, fwIoU, boundary F and ms/image per variant. The network runs at the scale it was
trained at (short side = ``base_size``, ``hairseg_core.scaling``); its probabilities are resized back to the
full image, where CRF, matting and the metrics work. Each variant's mIoU carries a bootstrap interval from
the same resamples the promotion decision uses; every further test source gets the network alone.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from hairseg_core.config import FinalizeSettings, TrainConfig
from hairseg_core.data.splits import RawSplit, sample_dicts
from hairseg_core.deploy.inference import HairPredictor
from hairseg_core.evaluate import evaluate_predictor
from hairseg_core.final.bootstrap import PerImageCounts, bootstrap_weights, metric_interval
from hairseg_core.final.state import FinalStage, jsonable
from hairseg_core.final.test_split import load_test_split, test_sources
from hairseg_core.postprocess.pipeline import build_table5_variants
from hairseg_core.progress import progress_bar
from hairseg_core.text_table import format_table
from hairseg_core.train.metrics import SegmentationMetrics
from hairseg_core.visualize import overlay

TABLE_METRICS = ("acc", "acc_class", "miou", "fwiou", "boundary_f")


def other_sources_table(
    predictor: HairPredictor, train_config: TrainConfig, settings: FinalizeSettings, progress: bool = True
) -> list[dict[str, Any]]:
    """The network alone (no CRF / matting) on the test split of every further test source."""
    rows = []
    for source in test_sources(train_config)[1:]:
        test = load_test_split(train_config, settings.test_split, settings.max_test_images, source)
        scores = evaluate_predictor(predictor, sample_dicts(test), progress=progress, desc=f"testing {source.name}")
        rows.append({"source": source.name, "images": len(test), **{k: float(scores[k]) for k in TABLE_METRICS}})
    return rows


def postprocessing_table(
    predictor: HairPredictor,
    test: RawSplit,
    settings: FinalizeSettings,
    progress: bool = True,
    per_image: dict[str, PerImageCounts] | None = None,
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Table 5: each variant's metrics and ms/image; plus example panels (image | variants).

    The network runs once per image, at the predictor's scale; CRF and matting get the probabilities
    resized back to the full image, which they refine against the full-resolution photo. Each
    variant's time is the network's plus its own. ``per_image``, when given, is filled with each
    variant's per-image counts (``{variant: PerImageCounts}``) for the bootstrap intervals.
    """
    processors = build_table5_variants(settings.crf, settings.matting)
    metrics = {name: SegmentationMetrics(num_classes=2) for name in processors}
    seconds = dict.fromkeys(processors, 0.0)
    panels = []
    for i in progress_bar(range(len(test)), desc="post-processing table", disable=not progress, leave=False):
        image, mask = test.sample(i)
        start = time.perf_counter()
        probs = predictor.probabilities(image)
        net = time.perf_counter() - start
        outputs = {}
        for name, proc in processors.items():
            start = time.perf_counter()
            hair = proc(image, probs)
            seconds[name] += net + time.perf_counter() - start
            pred, target = (hair >= 0.5).astype(np.int64), mask.astype(np.int64)
            if per_image is None:
                metrics[name].update(pred, target)
            else:
                per_image.setdefault(name, PerImageCounts()).record(metrics[name], pred, target, test.names[i])
            outputs[name] = hair
        if i < 4:
            gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
            tiles = [image] + [t for name in processors for t in (gap, overlay(image, outputs[name]))]
            panels.append(np.concatenate(tiles, axis=1))
    rows = []
    for name in processors:
        scores = metrics[name].compute()
        row = {"method": name, **{k: float(scores[k]) for k in TABLE_METRICS}}
        row["ms_per_image"] = 1000.0 * seconds[name] / len(test)
        rows.append(row)
    return rows, panels


def add_intervals(
    table: list[dict[str, Any]],
    counts: dict[str, PerImageCounts],
    weights: np.ndarray,
    confidence: float,
    metric: str = "miou",
) -> None:
    """Put ``<metric>_lo`` / ``<metric>_hi`` (bootstrap percentile interval) into each Table 5 row.

    All variants use the same resamples (``weights``), so overlapping intervals mean the same thing
    in every row; with 40 test images a CRF "gain" of 0.003 usually sits well inside them.
    """
    for row in table:
        estimate = metric_interval(counts[row["method"]], weights, metric, confidence)
        row[f"{metric}_lo"], row[f"{metric}_hi"] = estimate.lo, estimate.hi


def evaluate_table5(stage: FinalStage) -> None:
    """Step ``table5``: evaluate (and record) Table 5 and the per-source table, or read them back; print them.

    Read back only when the decision was recorded too: deciding needs the per-image counts, which the
    record does not keep, so a stage stopped between the two evaluates again.
    """
    evaluated, decided = stage.record.get("table5"), stage.record.get("decision")
    if evaluated is None or decided is None:
        _evaluate(stage)
        stage.record.mark(
            "table5", table=jsonable(stage.table), per_source=jsonable(stage.per_source), images=len(stage.test)
        )
    else:
        stage.table, stage.per_source = evaluated["table"], evaluated["per_source"]
        print(f"Table 5 of this checkpoint was evaluated at {evaluated['at']}; continuing after it")
    settings = stage.settings
    print()
    title = (
        f"post-processing on the test split (paper Table 5), network at {stage.scale} px, metrics at native size; "
        f"miou_lo/miou_hi: {settings.promote_confidence:.0%} bootstrap interval "
        f"({settings.bootstrap_resamples} resamples)"
    )
    print(format_table(stage.table, title=title))
    if len(stage.per_source) > 1:
        print()
        title = f"test split of every data source, network at {stage.scale} px, native size"
        print(format_table(stage.per_source, title=title))


def _evaluate(stage: FinalStage) -> None:
    """Table 5 with its intervals, the examples and the per-image counts; then every source's baseline."""
    settings, test = stage.settings, stage.test
    predictor = HairPredictor.from_model(stage.model, scale=stage.scale)
    stage.table, stage.panels = postprocessing_table(
        predictor, test, settings, progress=stage.progress, per_image=stage.counts
    )
    # one set of resamples for Table 5's intervals and the promotion decision
    stage.weights = bootstrap_weights(len(test), settings.bootstrap_resamples, settings.bootstrap_seed)
    add_intervals(stage.table, stage.counts, stage.weights, settings.promote_confidence)
    # every source's test split, network alone: the first source's row is Table 5's baseline
    baseline = {k: stage.table[0][k] for k in TABLE_METRICS}
    stage.per_source = [{"source": stage.primary.name, "images": len(test), **baseline}]
    stage.per_source += other_sources_table(predictor, stage.train_config, settings, progress=stage.progress)
