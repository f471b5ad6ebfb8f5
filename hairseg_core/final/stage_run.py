"""Steps ``finalize_run``, ``logged`` and ``finished``: the sweep's final-stage MLflow run, opened once,
given Table 5, the exports and the decision, and closed FINISHED."""

from __future__ import annotations

from typing import Any

import numpy as np

from hairseg_core.deploy.inference import load_predictor
from hairseg_core.deploy.temporal import DEFAULT_SMOOTHER, video_stability
from hairseg_core.final.record import FinalRecord
from hairseg_core.final.state import FinalStage, jsonable
from hairseg_core.final.table5 import TABLE_METRICS
from hairseg_core.track.runs import Tracker
from hairseg_core.track.tags import (
    TAG_INFERENCE_SCALE,
    TAG_METRIC_RESOLUTION,
    TAG_MODEL_VERSION,
    TAG_PROMOTED,
    TAG_PROMOTION_REASON,
)
from hairseg_core.visualize import metrics_bar_figure


def open_finalize_run(stage: FinalStage) -> None:
    """Step ``finalize_run``: continue the run an earlier attempt recorded, or start the sweep's final-stage run."""
    run_id = (stage.record.get("finalize_run") or {}).get("run_id")
    if run_id is not None:
        stage.tracker.reopen_finalize(stage.sweep, run_id)
    else:
        run_id = stage.tracker.start_finalize(
            stage.sweep,
            stage.parent_run_id,
            params={
                "checkpoint": str(stage.checkpoint_path),
                "inference_scale": stage.scale,
                **stage.settings.model_dump(),
            },
        )
        if not stage.dry_run:
            stage.record.mark("finalize_run", run_id=run_id)
    stage.run_id = run_id


def log_stage(stage: FinalStage) -> None:
    """Step ``logged``: Table 5, the per-source table, the examples, the exports and the decision onto the run."""
    if stage.record.get("logged") is not None:
        return
    tracker, run_id, table = stage.tracker, stage.run_id, stage.table
    tracker.set_tags(run_id, {TAG_INFERENCE_SCALE: stage.scale, TAG_METRIC_RESOLUTION: "native"})
    tracker.log_table(run_id, table, "table5/postprocessing.json")
    if len(stage.per_source) > 1:
        tracker.log_table(run_id, stage.per_source, "test/per_source.json")
        tracker.log_metrics(
            run_id, {f"test_{r['source']}_{k}": r[k] for r in stage.per_source for k in TABLE_METRICS}, step=0
        )
    tracker.log_metrics(
        run_id,
        {
            f"test_{r['method'].replace('+', '_')}_{k}": r[k]
            for r in table
            for k in (*TABLE_METRICS, "ms_per_image", "miou_lo", "miou_hi")
        },
        step=0,
    )
    tracker.log_figure(
        run_id,
        metrics_bar_figure(table, ["miou", "fwiou", "boundary_f"], "method", "test split: post-processing"),
        "table5/postprocessing.png",
    )
    for i, panel in enumerate(stage.panels):
        tracker.log_image(run_id, panel, f"table5/examples_{i}.png")
    tracker.log_artifacts(run_id, stage.export_dir, "export")
    _log_export_figures(stage)
    _log_flicker(stage)
    tracker.set_tags(run_id, stage.tags_of_decision)
    _log_promotion_interval(tracker, run_id, stage.decision)
    if not stage.dry_run:
        stage.record.mark("logged")


def _log_export_figures(stage: FinalStage) -> None:
    """The deployed graph's own figures: per-frame latency on one core, and (int8) its test accuracy."""
    metrics: dict[str, float] = {}
    frame_ms = (stage.export.get("latency_ms") or {}).get("frame_1_thread")
    if frame_ms is not None:
        metrics["export_frame_ms_1_thread"] = float(frame_ms)
    for row in stage.export.get("test") or []:
        for key in (*TABLE_METRICS, "miou_lo", "miou_hi"):
            if key in row:
                metrics[f"export_{row['source']}_{key}"] = float(row[key])
    if stage.export.get("test"):
        stage.tracker.log_table(stage.run_id, stage.export["test"], "export/test_int8.json")
    if metrics:
        stage.tracker.log_metrics(stage.run_id, metrics, step=0)


def _log_flicker(stage: FinalStage) -> None:
    """Flicker of the export as the webcam app runs it: shake videos of a few test images
    (``hairseg_core.deploy.temporal``)."""
    test = stage.test
    stability = video_stability(load_predictor(stage.export_dir), [test.sample(i) for i in range(min(3, len(test)))])
    print(
        f"video flicker of the export on shake videos ({DEFAULT_SMOOTHER} smoothing / none): "
        f"{stability['flicker']:.2%} / {stability['flicker_none']:.2%} of pixels, boundary band "
        f"{stability['flicker_boundary']:.2%} / {stability['flicker_boundary_none']:.2%}"
    )
    stage.tracker.log_metrics(stage.run_id, {k: v for k, v in stability.items() if np.isfinite(v)}, step=0)


def _log_promotion_interval(tracker: Tracker, run_id: str, decision: dict[str, Any]) -> None:
    """The paired bootstrap behind the decision as metrics (none for a first model: nothing was compared)."""
    bootstrap = decision.get("bootstrap")
    if bootstrap:
        tracker.log_metrics(
            run_id,
            {
                "promotion_diff": bootstrap["diff"],
                "promotion_diff_mean": bootstrap["diff_mean"],
                "promotion_ci_lo": bootstrap["lo"],
                "promotion_ci_hi": bootstrap["hi"],
                "promotion_images": bootstrap["n_images"],
            },
            step=0,
        )


def finish_run(
    tracker: Tracker,
    run_id: str | None,
    record: FinalRecord,
    version: str,
    promoted: bool,
    decision: dict[str, Any],
    export: dict[str, Any] | None,
) -> None:
    """Step ``finished``: the registered version and its promotion onto the run, and the run closed FINISHED.

    ``export`` is None when an earlier attempt registered the version: its ``finalize.json`` was written then.
    """
    if record.get("finished") is not None or not run_id:
        return
    tracker.set_tags(
        run_id,
        {TAG_MODEL_VERSION: version, TAG_PROMOTED: promoted, TAG_PROMOTION_REASON: decision["reason"]},
    )
    if export is not None:
        tracker.log_dict(run_id, {"decision": decision, "export": jsonable(export)}, "finalize.json")
    if tracker.get_run(run_id).info.status != "FINISHED":
        tracker.end_run(run_id, "FINISHED")
    record.mark("finished")
