"""The sweep's final stage: best model → Table 5 → webcam export → registry promotion, one step at a time.

1. The best trial's best checkpoint is loaded (``weights_only=True``) with the test split.
2. ``table5`` (:mod:`~hairseg_core.final.table5`): the test split evaluated as Baseline, +CRF, +Matting,
   +CRF+Matting (the paper's Table 5) at the network's trained scale, metrics at native resolution.
3. ``decision`` (:mod:`~hairseg_core.final.promotion`): the current champion re-evaluated on the same
   images at its own trained scale; promoted on the lower bound of a paired bootstrap interval.
4. ``export`` (:mod:`~hairseg_core.final.export_folder`): TorchScript and ONNX into ``exports/<sweep>/``.
5. ``finalize_run`` and ``logged`` (:mod:`~hairseg_core.final.stage_run`): the final-stage MLflow run.
6. ``registration`` (:mod:`~hairseg_core.final.registration`) as ``hairseg``, then ``promotion`` (the
   ``champion`` alias) and ``finished`` (the run closed).

Each step is recorded (:mod:`~hairseg_core.final.record`) as it completes, so a resumed or repeated stage
continues after the last one. All MLflow calls go through ``hairseg_core.track``.
"""

from __future__ import annotations

from pathlib import Path

from hairseg_core.artifact import load_model
from hairseg_core.config import FinalizeSettings, TrainConfig
from hairseg_core.final.export_folder import write_export
from hairseg_core.final.promotion import decide
from hairseg_core.final.record import FinalRecord, checkpoint_digest
from hairseg_core.final.registration import after_registration, register, registered_version
from hairseg_core.final.stage_run import log_stage, open_finalize_run
from hairseg_core.final.state import FinalizeResult, FinalStage, jsonable
from hairseg_core.final.table5 import evaluate_table5
from hairseg_core.final.test_split import load_test_split, test_sources
from hairseg_core.scaling import model_train_scale
from hairseg_core.track.runs import Tracker


def finalize(
    checkpoint_path: str | Path,
    train_config: TrainConfig,
    settings: FinalizeSettings,
    tracker: Tracker,
    parent_run_id: str | None,
    sweep: str,
    dry_run: bool = False,
    progress: bool = True,
    record: FinalRecord | None = None,
) -> FinalizeResult:
    """Run the whole final stage for one checkpoint; see the module docstring.

    Idempotent per (``sweep``, checkpoint): each step is recorded in ``record`` (``hairseg_core.final.record``;
    in memory when None) and skipped when a later call finds it done, and a model version registered for
    this sweep and checkpoint (found by its tags) is never registered again. A repeat after the stage ended
    changes nothing and prints the recorded decision with its interval. A dry run reads and records nothing.
    """
    digest = checkpoint_digest(checkpoint_path)
    if dry_run or record is None or record.digest != digest:
        record = FinalRecord(None, digest)
    found = None if dry_run else registered_version(tracker, settings, sweep, record)
    if found is not None:
        return after_registration(found, record, settings, tracker, sweep)
    stage = _load(checkpoint_path, train_config, settings, tracker, parent_run_id, sweep, record, dry_run, progress)
    evaluate_table5(stage)
    decide(stage)
    write_export(stage)
    open_finalize_run(stage)
    log_stage(stage)
    if dry_run:
        return _end_dry_run(stage)
    version = register(stage)
    return after_registration(version, record, settings, tracker, sweep, export=stage.export, notes=stage.notes)


def _load(
    checkpoint_path: str | Path,
    train_config: TrainConfig,
    settings: FinalizeSettings,
    tracker: Tracker,
    parent_run_id: str | None,
    sweep: str,
    record: FinalRecord,
    dry_run: bool,
    progress: bool,
) -> FinalStage:
    """The checkpoint's network at its trained scale and the first test source's images; says what it evaluates."""
    model = load_model(checkpoint_path, "eager")
    scale = model_train_scale(model)
    primary = test_sources(train_config)[0]
    test = load_test_split(train_config, settings.test_split, settings.max_test_images, primary)
    print(
        f"final stage: {len(test)} {primary.name} {settings.test_split} images, checkpoint {checkpoint_path}, "
        f"network at short side {scale} px (its training base_size), metrics at native resolution"
    )
    return FinalStage(
        checkpoint_path=checkpoint_path,
        train_config=train_config,
        settings=settings,
        tracker=tracker,
        parent_run_id=parent_run_id,
        sweep=sweep,
        record=record,
        dry_run=dry_run,
        progress=progress,
        model=model,
        scale=scale,
        primary=primary,
        test=test,
    )


def _end_dry_run(stage: FinalStage) -> FinalizeResult:
    """A dry run stops before the registry: it says what it would do and closes its run."""
    decision = stage.decision
    print(f"\n[dry run] would {'promote' if decision['promote'] else 'not promote'}: {decision['reason']}")
    for note in stage.notes:
        print(note)
    stage.tracker.log_dict(stage.run_id, {"decision": decision, "export": jsonable(stage.export)}, "finalize.json")
    stage.tracker.end_run(stage.run_id, "FINISHED")
    return stage.result(model_version=None)
