"""Running the final stage on what a sweep left behind (``hairseg_core.final.stage`` does the work).

Two callers: the sweep's driver hands over its best trial at the end of a sweep
(:func:`finalize_sweep`), and ``pipelines/finalize.py`` reruns the stage later from MLflow alone
(:func:`run_final_stage`: a sweep's parent run, the newest sweep of an experiment, or any training
checkpoint). After a sweep's final stage (not a dry run) the reproduction report is rebuilt from
MLflow and written to ``exports/<sweep>/report.html``.

The heavy imports (torch, the exporters) wait until the tracking server has answered, so a wrong
``--tracking-uri`` fails in a second.
"""

from __future__ import annotations

import json
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
from mlflow.exceptions import MlflowException
from pydantic import ValidationError

from hairseg_core.config import (
    ConfigError,
    FinalizeSettings,
    SearchSpace,
    TrainConfig,
    format_validation_error,
    load_search_space,
)
from hairseg_core.final.record import FinalRecord, checkpoint_digest
from hairseg_core.final.report import write_report
from hairseg_core.threads import configure_threads
from hairseg_core.track.client import check_tracking, resolve_tracking_uri
from hairseg_core.track.errors import TrackingUnavailable, UnknownExperiment
from hairseg_core.track.retry import with_retries
from hairseg_core.track.runs import Tracker
from hairseg_core.track.tags import TAG_BEST_CHECKPOINT, TAG_STORAGE, TAG_SWEEP


class NoFinishedSweep(LookupError):
    """The experiment has no sweep whose best trial was recorded: there is nothing to finalize."""


def local_checkpoint(path: str, workdir: Path) -> Path:
    """A Tune checkpoint directory (local, or s3:// / gs:// storage) → local checkpoint.pt."""
    if "://" not in path:
        local = Path(path)
    else:
        local = workdir / "checkpoint"
        pyarrow.fs.copy_files(path, str(local))
    return local / "checkpoint.pt" if local.is_dir() else local


def open_record(folder: str | None, checkpoint: Path) -> FinalRecord:
    """The final-stage record of ``checkpoint`` in the sweep's ``folder``; in memory when there is no folder or
    it cannot be read from here (the registry lookups then keep the stage from repeating itself)."""
    digest = checkpoint_digest(checkpoint)
    try:
        return FinalRecord.in_folder(folder, digest)
    except OSError as exc:
        print(f"warning: final-stage record in {folder} not readable here ({exc}); continuing without it")
        return FinalRecord(None, digest)


def finalize_sweep(
    best: Any,
    space: SearchSpace,
    tracker: Tracker,
    parent_run_id: str | None,
    sweep: str,
    dry_run: bool = False,
    record_dir: str | None = None,
) -> int:
    """The sweep's last step: ``best`` is ``hairseg_core.search.results.BestTrial``; returns the exit status.

    ``record_dir`` (the sweep's folder in Tune's storage) holds the stage's record
    (``hairseg_core.final.record``): a resumed or repeated stage continues after its last recorded step.
    A report that cannot be built returns 1 after the model was registered and promoted: only the
    report has to be redone, and the message says how.
    """
    from hairseg_core.final.stage import finalize  # deferred: torch, the exporters and post-processing

    with tempfile.TemporaryDirectory(prefix="hairseg-final-") as tmp:
        ckpt = local_checkpoint(best.checkpoint_path, Path(tmp))
        record = open_record(record_dir, ckpt)
        finalize(
            ckpt, best.train_config, space.finalize, tracker, parent_run_id, sweep=sweep, dry_run=dry_run, record=record
        )
    if parent_run_id and not dry_run:
        try:
            if record.get("report") is None:
                path = report(tracker, parent_run_id, space.finalize.export_dir)
                record.mark("report", path=str(path))
        except Exception as exc:  # the model is registered and promoted: only the report has to be redone
            traceback.print_exc()
            print(
                f"\nerror: the reproduction report could not be built ({type(exc).__name__}: {exc}); the final "
                f"stage itself completed. After fixing the cause rebuild it with\n"
                f"  python pipelines/finalize.py --report-only --run-id {parent_run_id}",
                file=sys.stderr,
            )
            return 1
    return 0


def report(tracker: Tracker, parent_run_id: str, export_dir: str | None = None) -> Path:
    """Write the sweep's reproduction report from MLflow (``hairseg_core.final.report``) and say where."""
    path = write_report(tracker, parent_run_id, export_dir)
    print(f"\nreproduction report: {path.resolve()} (also on MLflow parent run {parent_run_id} as report.html)")
    return path


def _parent_from_experiment(tracker: Tracker) -> Any:
    for run in tracker.latest_sweep_runs():
        if TAG_BEST_CHECKPOINT in run.data.tags:
            return run
    raise NoFinishedSweep(f"experiment {tracker.experiment!r} has no sweep with a best trial yet")


@dataclass(frozen=True)
class FinalStageRequest:
    """What ``pipelines/finalize.py`` was asked to finalize, and how (see its ``--help``).

    ``run_id`` (a sweep's parent run) wins over ``experiment`` (its newest sweep with a best trial);
    ``checkpoint`` finalizes any training checkpoint instead of a sweep's best.
    """

    experiment: str = "hairseg-default"
    run_id: str | None = None
    checkpoint: str | None = None
    space_file: str | None = None
    tracking_uri: str | None = None
    dry_run: bool = False
    promote_margin: float | None = None
    max_test_images: int | None = None
    report_only: bool = False
    #: torch / OpenCV / ONNX Runtime threads (``hairseg_core.threads``); None = the CPUs this process may use
    threads: int | None = None


class FinalStageInputError(ValueError):
    """What ``pipelines/finalize.py`` was pointed at does not exist or is not a sweep (one-line message)."""


def stored_train_config(stored: Any, where: str) -> TrainConfig:
    """A trial's settings as a checkpoint or ``best_trial.json`` stored them, typed again at this one boundary.

    From here to the export the final stage passes a :class:`TrainConfig`; a record that no longer
    validates (edited by hand, or written by an incompatible version) fails here, saying which.
    """
    try:
        return TrainConfig.model_validate(stored)
    except ValidationError as exc:
        raise FinalStageInputError(
            format_validation_error(exc, f"{where}: its training settings do not validate")
        ) from None


def run_final_stage(request: FinalStageRequest) -> int:
    """The final stage alone, from what MLflow recorded; returns the exit status.

    2: the tracking server is unreachable or refuses the login, or the run id, experiment, checkpoint or
    space given does not exist or cannot be read (one line, nothing created: a look-up never creates a
    sqlite store or an experiment); 1: the experiment has no finished sweep; 0 otherwise.
    """
    from hairseg_core.artifact import CheckpointError  # deferred: torch

    try:
        return _run_final_stage(request)
    except (TrackingUnavailable, FinalStageInputError, UnknownExperiment, CheckpointError, ConfigError) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        more = f" (+{len(lines) - 1} more line(s))" if len(lines) > 1 else ""
        print(f"error: {lines[0]}{more}", file=sys.stderr)
        return 2


def _sweep_run(tracker: Tracker, run_id: str) -> Any:
    """The sweep parent run ``run_id``; a one-line error when there is none or it is no sweep's."""
    try:
        run = tracker.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}:
            raise FinalStageInputError(f"--run-id {run_id}: no such MLflow run in {tracker.tracking_uri}") from None
        raise
    if TAG_SWEEP not in run.data.tags:
        raise FinalStageInputError(
            f"--run-id {run_id}: run {run.info.run_name!r} is not a hairseg sweep's parent run (no hairseg.sweep tag)"
        )
    return run


def _run_final_stage(request: FinalStageRequest) -> int:
    tracking_uri = resolve_tracking_uri(request.tracking_uri)
    # A sweep's final stage looks its sweep up: the store must exist. A checkpoint's may start a new store.
    if request.checkpoint and not Path(request.checkpoint).is_file() and "://" not in request.checkpoint:
        raise FinalStageInputError(f"--checkpoint {request.checkpoint}: no such file")
    if request.checkpoint:  # read before a new store is created for it: a refused file leaves nothing behind
        from hairseg_core.artifact import load_model  # deferred: torch

        load_model(request.checkpoint, "state")
    check_tracking(tracking_uri, must_exist=not request.checkpoint)
    if request.space_file:
        load_search_space(request.space_file)  # a bad --space fails before any work
    # Deferred until the tracking server answered (module docstring): torch, the exporters, post-processing.
    from hairseg_core.artifact import load_model  # deferred: torch
    from hairseg_core.final.stage import finalize

    configure_threads(request.threads)

    settings = FinalizeSettings()
    if request.checkpoint:
        state = load_model(request.checkpoint, "state")
        train_config, checkpoint, parent, sweep = state["train_config"], request.checkpoint, None, "manual"
        train_config = stored_train_config(train_config, f"checkpoint {request.checkpoint}")
        folder = None
        tracker = Tracker(tracking_uri, request.experiment)
    else:
        if request.run_id:
            lookup = Tracker(tracking_uri, "unused", create=False)
            run = _sweep_run(lookup, request.run_id)
            experiment = with_retries(
                lambda: lookup.client.get_experiment(run.info.experiment_id), "get experiment"
            ).name
            tracker = Tracker(tracking_uri, experiment)
        else:
            tracker = Tracker(tracking_uri, request.experiment, create=False)
            try:
                run = _parent_from_experiment(tracker)
            except NoFinishedSweep as exc:
                print(exc, file=sys.stderr)
                return 1
        parent, sweep = run.info.run_id, run.data.tags[TAG_SWEEP]
        folder = run.data.tags.get(TAG_STORAGE)  # the sweep's folder: its final-stage record
        if request.report_only:
            report(tracker, parent)
            return 0
        with tempfile.TemporaryDirectory() as tmp:
            try:
                best = json.loads(tracker.download_artifact(parent, "best_trial.json", tmp).read_text())
                space = json.loads(tracker.download_artifact(parent, "search_space.json", tmp).read_text())
            except (MlflowException, TrackingUnavailable, OSError, ValueError) as exc:
                raise FinalStageInputError(
                    f"sweep run {parent} ({sweep}) has no readable best_trial.json / search_space.json: its trials "
                    f"have not finished (python pipelines/sweep.py --resume --run-name {sweep}) "
                    f"[{type(exc).__name__}]"
                ) from None
        settings = FinalizeSettings(**space.get("finalize", {}))
        train_config = stored_train_config(best["config"], f"best_trial.json of sweep run {parent} ({sweep})")
        checkpoint = best["checkpoint_path"]
    if request.space_file:
        settings = load_search_space(request.space_file).finalize
    overrides = {"promote_margin": request.promote_margin, "max_test_images": request.max_test_images}
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    with tempfile.TemporaryDirectory(prefix="hairseg-final-") as tmp:
        ckpt = local_checkpoint(checkpoint, Path(tmp))
        record = open_record(folder, ckpt)
        finalize(ckpt, train_config, settings, tracker, parent, sweep=sweep, dry_run=request.dry_run, record=record)
    if parent and not request.dry_run and record.get("report") is None:
        path = report(tracker, parent, settings.export_dir)
        record.mark("report", path=str(path))
    return 0
