"""Step ``registration``: the exported model registered once per (sweep, checkpoint), tagged with its evidence;
then what follows a registration, whether made now or by an earlier attempt (``promotion``, ``finished``)."""

from __future__ import annotations

import json
from typing import Any

from hairseg_core.config import FinalizeSettings
from hairseg_core.final.promotion import decision_line, promote, short_decision
from hairseg_core.final.record import FinalRecord, pause_point
from hairseg_core.final.stage_run import finish_run
from hairseg_core.final.state import FinalizeResult, FinalStage
from hairseg_core.final.table5 import TABLE_METRICS
from hairseg_core.track.runs import Tracker
from hairseg_core.track.tags import (
    TAG_CHECKPOINT_DIGEST,
    TAG_DECISION,
    TAG_EXPORT_DIR,
    TAG_EXPORT_RUN_ID,
    TAG_INFERENCE_SCALE,
    TAG_METRIC_RESOLUTION,
    TAG_PARENT,
    TAG_SWEEP,
    TAG_TEST_IMAGES,
    TAG_TEST_SOURCE,
    TAG_TEST_SPLIT,
)


def registered_version(tracker: Tracker, settings: FinalizeSettings, sweep: str, record: FinalRecord) -> str | None:
    """The version an earlier attempt registered for this sweep and checkpoint: from the record, else by its tags."""
    found = (record.get("registration") or {}).get("version") or tracker.find_model_version(
        settings.registered_model, sweep, record.digest
    )
    return None if found is None else str(found)


def register(stage: FinalStage) -> str:
    """Step ``registration``: the ONNX model with its state-dict checkpoint (nothing pickled), tagged with what
    it was measured on, its Table 5 baseline, every source's scores and the decision with its interval."""
    baseline, export_dir = stage.table[0], stage.export_dir
    version = stage.tracker.register_model(
        stage.run_id,
        export_dir,
        stage.settings.registered_model,
        tags={
            TAG_SWEEP: stage.sweep,
            TAG_CHECKPOINT_DIGEST: stage.digest,
            TAG_DECISION: json.dumps(short_decision(stage.decision)),
            TAG_PARENT: stage.parent_run_id or "",
            TAG_TEST_SPLIT: stage.settings.test_split,
            TAG_TEST_IMAGES: len(stage.test),
            TAG_EXPORT_DIR: str(export_dir.resolve()),
            TAG_EXPORT_RUN_ID: stage.run_id,
            TAG_INFERENCE_SCALE: stage.scale,
            TAG_METRIC_RESOLUTION: "native",
            **{f"test_{k}": f"{baseline[k]:.6f}" for k in TABLE_METRICS},
            TAG_TEST_SOURCE: stage.primary.name,
            **{f"test_{r['source']}_{k}": f"{r[k]:.6f}" for r in stage.per_source for k in TABLE_METRICS},
            **stage.tags_of_decision,
        },
        after_logged=lambda: pause_point("model_logged"),
    )
    stage.record.mark("registration", version=version)
    return version


def after_registration(
    version: str,
    record: FinalRecord,
    settings: FinalizeSettings,
    tracker: Tracker,
    sweep: str,
    export: dict[str, Any] | None = None,
    notes: list[str] | None = None,
) -> FinalizeResult:
    """Promotion and the run's closing, for a version registered now or by an earlier attempt (``export`` None)."""
    name = settings.registered_model
    mv = tracker.get_model_version(name, version)
    decision, when = _recorded_decision(record, mv)
    run_id = (record.get("finalize_run") or {}).get("run_id") or mv.tags.get(TAG_EXPORT_RUN_ID)
    if export is None:  # found, not registered by this call
        print(
            f"final stage of sweep {sweep} on checkpoint {record.digest[:12]} was done before: {name} v{version} "
            f"(found by its tags; nothing registered again)"
        )
        print(f"promotion decision (recorded {when}): {decision_line(decision)}")
    on_it = promote(tracker, name, version, decision, record)
    finish_run(tracker, run_id, record, version, on_it, decision, export)
    print(
        f"\nregistered {name} v{version}: {'promoted to @champion' if on_it else 'not promoted'} ({decision['reason']})"
    )
    for note in notes or []:
        print(note)
    table = (record.get("table5") or {}).get("table", [])
    return FinalizeResult(
        table=table,
        export=export or (record.get("export") or {}).get("export", {}),
        decision=decision,
        model_version=version,
        finalize_run_id=run_id,
        notes=notes or [],
        inference_scale=(decision.get("inference_scale") if isinstance(decision, dict) else None),
    )


def _recorded_decision(record: FinalRecord, version: Any) -> tuple[dict[str, Any], str]:
    """The decision the registration was made with, and where it was recorded: the record, else the version."""
    decided = record.get("decision")
    if decided is not None:
        decision, when = decided["decision"], decided["at"]
    else:
        decision, when = json.loads(version.tags.get(TAG_DECISION) or "{}"), "on the model version"
    if not decision:  # a version registered before decisions were recorded on it
        decision = {"promote": False, "reason": "no recorded decision: the alias is left where it is"}
    return decision, when
