"""A whole sweep, as ``python pipelines/sweep.py`` runs it: checks, Tune, summary, final stage.

Two steps around the Ray connection, which the entry point owns (library code never touches Ray's
globals): :func:`prepare_sweep` checks everything that can be checked without Ray (space, resume
target, tracking server, Ray address, weights, data) and returns an exit status on the first problem;
:func:`run_sweep` then records the sweep in MLflow, runs or resumes Tune, prints and logs the results
and runs the final stage. Both return the command's exit status: 0 done, 1 no usable trial or a failed
final stage, 2 a check failed, 130 interrupted (resumable).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hairseg_core.config import ConfigError, SearchSpace, load_search_space
from hairseg_core.data.fingerprint import fingerprint_config
from hairseg_core.data.input_path import InputPlan
from hairseg_core.final.selection import finalize_sweep
from hairseg_core.search import state
from hairseg_core.search.cost_estimate import log_estimate, report_actual_cost
from hairseg_core.search.overrides import parse_set
from hairseg_core.search.preflight import PreflightError, check_ray_address, check_trial_inputs
from hairseg_core.track.client import check_tracking, default_artifact_location, resolve_tracking_uri
from hairseg_core.track.errors import TrackingUnavailable
from hairseg_core.track.runs import Tracker, existing_sweep_run
from hairseg_core.track.summary import log_sweep_summary
from hairseg_core.track.tags import TAG_STORAGE
from hairseg_core.track.view import ui_address, view_url
from hairseg_core.train.trainer import TrialData


@dataclass(frozen=True)
class SweepRequest:
    """What the command line asked for (``pipelines/sweep.py --help`` says what each flag means).

    ``default_space`` is the YAML used when neither ``space_file`` nor a resumed sweep names one.
    """

    default_space: str
    space_file: str | None = None
    num_samples: int | None = None
    max_concurrent: int | None = None
    set_pairs: tuple[str, ...] = ()
    experiment: str | None = None
    address: str | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    resume: bool = False
    run_name: str | None = None
    finalize: bool = True
    num_cpus: int | None = None
    quiet: bool = False
    #: take over the sweep's lease even though its holder looks alive (``--break-lease``)
    break_lease: bool = False


@dataclass
class PreparedSweep:
    """A sweep whose checks passed: what to run, where, and what the trials get through the object store."""

    request: SweepRequest
    space: SearchSpace
    experiment: str
    name: str
    storage: str
    tracking_uri: str
    address: str
    weights: dict[str, bytes]
    data: TrialData | None
    #: the cost estimate the cluster check made (``hairseg_core.search.cost_estimate``), logged on the parent run
    plan: Any = None
    #: how trials get their data (memory or stream), chosen in preflight
    input_plan: InputPlan | None = None
    #: this driver's hold on the sweep (``state.Lease``); the entry point releases it when the driver ends
    lease: state.Lease | None = None
    #: the MLflow parent run the sweep created (from its manifest, on ``--resume``)
    parent_run_id: str | None = None

    def release(self) -> None:
        """Give the sweep's lease back (idempotent); a later driver may then take the sweep over."""
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    @property
    def space_file(self) -> str:
        return self.request.space_file or self.request.default_space

    def ray_init_kwargs(self) -> dict[str, Any]:
        """The arguments the entry point passes to ``ray.init`` for this sweep."""
        local = self.address == "local"
        return {
            "address": self.address,
            "num_cpus": self.request.num_cpus if local else None,
            "include_dashboard": False if local else None,
            "log_to_driver": not self.request.quiet,
        }


def prepare_sweep(
    request: SweepRequest, check_cluster: Callable[[PreparedSweep], int | None] | None = None
) -> PreparedSweep | int:
    """Everything that can be checked without Ray, first; an exit status (after the message) on failure.

    ``check_cluster`` (the entry point's) runs after the cheap checks and before the weights and the data:
    a space asking for GPUs this machine cannot give fails in seconds; a status it returns ends the sweep."""
    storage = state.normalize_storage_path(request.storage)
    overrides: dict[str, Any] = {"num_samples": request.num_samples, "max_concurrent_trials": request.max_concurrent}
    try:
        overrides.update(parse_set(list(request.set_pairs), bare_prefix="fixed"))
    except ValueError as exc:
        print(f"error: --set: {exc}", file=sys.stderr)
        return 2
    try:
        if request.resume:
            space, experiment, name = state.resume_target(
                storage,
                request.default_space,
                overrides,
                space_file=request.space_file,
                experiment=request.experiment,
                run_name=request.run_name,
                changes_settings=bool(request.set_pairs),
            )
        else:
            space = load_search_space(request.space_file or request.default_space, overrides)
            experiment = request.experiment or f"hairseg-{space.name}"
            name = request.run_name or state.new_sweep_name(experiment)
    except ConfigError as exc:
        print(f"error: invalid search space: {exc}", file=sys.stderr)
        return 2
    except state.ResumeError as exc:
        print(f"error: --resume: {exc}", file=sys.stderr)
        return 2
    except state.SweepFinished as done:
        print(done)
        return 0
    tracking_uri = resolve_tracking_uri(request.tracking_uri)
    try:
        check_tracking(tracking_uri)
    except TrackingUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # Ray workers inherit it
    # "local" rather than None: ray.init(address=None) joins whatever cluster
    # /tmp/ray/ray_current_cluster names (a `ray start`, or a crashed run's stale leftover that
    # then hangs the sweep) instead of starting the local Ray this command promises.
    address = request.address or os.environ.get("RAY_ADDRESS") or "local"
    problem = check_ray_address(address)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    sweep = PreparedSweep(request, space, experiment, name, storage, tracking_uri, address, {}, None)
    status = _claim(sweep)  # one name, one sweep, one driver: before anything slow
    if status:
        return status
    try:
        status = _check_inputs(sweep, check_cluster)
    except BaseException:
        sweep.release()
        raise
    if status:
        sweep.release()
        return status
    return sweep


def _check_inputs(sweep: PreparedSweep, check_cluster: Callable[[PreparedSweep], int | None] | None) -> int | None:
    """The cluster check, then the weights and the data the trials need; an exit status on failure."""
    if check_cluster is not None and (status := check_cluster(sweep)):
        return status
    try:
        inputs = check_trial_inputs(sweep.space, finalize=sweep.request.finalize)
    except PreflightError as exc:
        print(exc, file=sys.stderr)
        return 2
    if inputs.plan is not None:
        print(inputs.plan.describe())
    sweep.weights, sweep.data, sweep.input_plan = inputs.weights, inputs.data, inputs.plan
    return None


def _claim(sweep: PreparedSweep) -> int | None:
    """Take the sweep's lease; a new sweep must also have a name no sweep has. An exit status on failure.

    The lease comes first, so that of two drivers starting one name at the same moment one wins the lease
    and the other is refused; then a new sweep's name is checked against the storage (a manifest, Tune's
    state) and the MLflow experiment (a parent run of that name): a new sweep under a taken name would
    reopen the other sweep's parent run, overwrite its manifest and retire its trial runs.
    """
    request, name = sweep.request, sweep.name
    command = state.resume_command(name, sweep.storage, request.address, request.tracking_uri)
    try:
        sweep.lease = state.acquire_lease(sweep.storage, name, break_lease=request.break_lease)
    except state.LeaseHeld as exc:
        if request.resume:
            print(f"error: {exc}", file=sys.stderr)
        else:
            print(
                f"error: sweep {name} already exists ({exc}); a new sweep needs a new --run-name. "
                f"To continue it once that driver has ended: {command}",
                file=sys.stderr,
            )
        return 2
    try:
        if request.resume:
            manifest = state.load_sweep_manifest(sweep.storage, name)
            sweep.parent_run_id = (manifest or {}).get("parent_run_id")
            return None
        taken = state.sweep_in_storage(sweep.storage, name, ignore_lease=True)
        run = existing_sweep_run(sweep.tracking_uri, sweep.experiment, name)
        if run is not None:
            taken = f"MLflow parent run {run} in experiment {sweep.experiment!r}"
        if taken:
            print(
                f"error: sweep {name} already exists ({taken}); a new sweep needs a new --run-name. "
                f"To continue it: {command}",
                file=sys.stderr,
            )
            sweep.release()
            return 2
    except (state.ManifestCorrupt, TrackingUnavailable) as exc:
        print(f"error: sweep {name}: {exc}", file=sys.stderr)
        sweep.release()
        return 2
    return None


def run_sweep(sweep: PreparedSweep) -> int:
    """Record, run (or resume) and summarise the sweep, then its final stage; Ray must be connected."""
    from hairseg_core.search import results as sweep_results  # deferred: Optuna
    from hairseg_core.search.summary import resume_hint  # deferred: Optuna

    request, space, name, storage = sweep.request, sweep.space, sweep.name, sweep.storage
    hint = resume_hint(name, storage, request.address, request.tracking_uri)
    try:
        tracker = Tracker(sweep.tracking_uri, sweep.experiment, default_artifact_location(sweep.tracking_uri))
        parent, view = _record_sweep(sweep, tracker)
        results, elapsed = _run_tune(sweep, tracker, parent)
        progress = sweep_results.sweep_progress(results, space.num_samples)
        if progress.unfinished:
            # Tune catches the first Ctrl-C (SIGINT/SIGUSR1), saves its state and *returns*: the
            # sweep is not over, so it must be neither summarised as done nor finalized.
            tracker.end_run(parent, "KILLED")
            _explain_unfinished(results, progress, space.num_samples)
            print(hint, file=sys.stderr)
            return 130
        if progress.completed == space.num_samples:
            state.mark_sweep_finished(storage, name)  # errored trials keep it resumable (retried)
        return _summarise_and_finalize(sweep, tracker, parent, view, results, progress, elapsed)
    except KeyboardInterrupt:
        print(hint, file=sys.stderr)
        return 130


def _record_sweep(sweep: PreparedSweep, tracker: Tracker) -> tuple[str, str]:
    """Open (or reopen) the MLflow parent run and, for a new sweep, its manifest; the parent run id and UI view.

    Both come before Tune starts: ``--resume`` reads the parent run's id back from the manifest (``_claim``).
    """
    request, space, name, storage = sweep.request, sweep.space, sweep.name, sweep.storage
    parent = tracker.start_sweep(
        name,
        space.model_dump(),
        sweep.space_file,
        resume=request.resume,
        parent_run_id=sweep.parent_run_id,
        tags={TAG_STORAGE: state.sweep_dir(storage, name)},
    )
    if not request.resume:
        state.save_sweep_manifest(storage, name, sweep.experiment, space, sweep.space_file, parent_run_id=parent)
        if sweep.data is not None:  # decoded here for every trial: the trials' runs copy these inputs
            tracker.log_datasets(parent, fingerprint_config(space.trial_config({})))
    if sweep.input_plan is not None:
        tracker.set_tags(parent, sweep.input_plan.tags())
    view_key = tracker.save_sweep_view(name, space.model_dump())  # the UI view comparing this sweep's trials
    view = view_url(ui_address(sweep.tracking_uri), tracker.experiment_id, view_key)
    print(f"sweep {name}: {space.num_samples} trials of space {space.name!r}, MLflow parent run {parent}")
    if sweep.plan is not None:
        log_estimate(tracker, parent, sweep.plan)
    return parent, view


def _run_tune(sweep: PreparedSweep, tracker: Tracker, parent: str) -> tuple[Any, float]:
    """Build the tuner (data shared through the object store in memory mode) and fit it; results and seconds."""
    from hairseg_core.search.shared_data import share_in_object_store  # deferred: Ray
    from hairseg_core.search.tuner import SweepSettings, build_tuner  # deferred: Optuna

    request, space = sweep.request, sweep.space
    settings = SweepSettings(
        experiment=sweep.experiment,
        storage_path=sweep.storage,
        tracking_uri=sweep.tracking_uri,
        name=sweep.name,
        verbose=0 if request.quiet else 1,
    )
    data = sweep.data
    if data is not None and sweep.input_plan is not None and sweep.input_plan.mode == "memory":
        data = share_in_object_store(data)  # one copy per node, read zero-copy by every trial there
    tuner = build_tuner(space, settings, parent, resume=request.resume, data=data, weights=sweep.weights)
    del data
    started = time.perf_counter()
    results = tuner.fit()
    elapsed = time.perf_counter() - started
    if sweep.plan is not None:
        report_actual_cost(tracker, parent, sweep.plan, results, elapsed, space.resources.gpu)
    return results, elapsed


def _explain_unfinished(results: Any, progress: Any, num_samples: int) -> None:
    """Why Tune returned before every trial ended: a stop signal, or trials lost from its saved state."""
    if len(results) < num_samples and progress.ended == len(results):
        # No trial was left running, so no stop signal ended this: Tune's restored state had fewer
        # trials than its searcher had counted (see search/restore_state.py); resuming creates the rest.
        print(
            f"\nTune ended with {len(results)} of {num_samples} trials created, all ended; "
            "the others were lost from its saved state and are created by resuming.",
            file=sys.stderr,
        )
    else:
        print(f"\n{progress.ended} of {num_samples} trials ended before the stop signal.", file=sys.stderr)


def _summarise_and_finalize(
    sweep: PreparedSweep, tracker: Tracker, parent: str, view: str, results: Any, progress: Any, elapsed: float
) -> int:
    """Summary, Pareto pick and final stage of a sweep whose trials all ended; closes the parent run."""
    from hairseg_core.search import results as sweep_results  # deferred: Optuna
    from hairseg_core.search.summary import print_errors, print_summary, report_front  # deferred: Optuna

    request, space, name, storage = sweep.request, sweep.space, sweep.name, sweep.storage
    rows = sweep_results.results_rows(results, space)
    if progress.completed == 0:
        print_errors(rows)
        tracker.end_run(parent, "FAILED")
        print("\nerror: every trial errored (after its retries); nothing to summarise or finalize", file=sys.stderr)
        return 1
    study = sweep_results.optuna_study_from_results(results, space)
    selection = report_front(results, space, tracker, parent)
    if selection is None:  # the select: rule matched no trial; the message is printed
        tracker.log_table(parent, rows, "results/trials.json")
        tracker.end_run(parent, "FAILED")
        return 1
    best = sweep_results.best_trial(results, space, selection.point)
    log_sweep_summary(tracker, parent, rows, study, best, space.metric)
    print_summary(rows, best, space.metric, elapsed, sweep.tracking_uri, sweep.experiment, view)
    print(f"picked for export: trial {best.trial_id}: {selection.reason}")
    status = 0
    if request.finalize:
        status = _final_stage(best, space, tracker, parent, name, state.sweep_dir(storage, name))
    if status == 0 and progress.completed == space.num_samples:
        state.mark_sweep_finalized(storage, name, skipped=not request.finalize)
    tracker.end_run(parent, "FINISHED" if status == 0 else "FAILED")
    return status


def _final_stage(best: Any, space: SearchSpace, tracker: Tracker, parent: str, name: str, folder: str) -> int:
    """The final stage on the sweep's pick; a failure there leaves the trials safe and says how to rerun it."""
    try:
        return finalize_sweep(
            best=best, space=space, tracker=tracker, parent_run_id=parent, sweep=name, record_dir=folder
        )
    except Exception as exc:  # the trials are safe; only this stage has to run again
        traceback.print_exc()
        print(
            f"\nerror: the final stage failed ({type(exc).__name__}: {exc}). The sweep's trials are "
            f"complete and recorded; after fixing the cause run\n"
            f"  python pipelines/finalize.py --run-id {parent}",
            file=sys.stderr,
        )
        return 1
