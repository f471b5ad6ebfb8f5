"""Hyperparameter sweep: Ray Tune + Optuna + ASHA over a search space, tracked in MLflow.

    python pipelines/sweep.py                                  # laptop: local Ray, ./mlruns.db, synthetic data
    python pipelines/sweep.py --space search_spaces/paper.yaml --address auto \\
        --storage s3://bucket/hairseg --tracking-uri http://HEAD_IP:5000  # on a `ray up` cluster
    python pipelines/sweep.py --resume [--run-name NAME]       # continue a sweep after its driver died

At the end the final stage (pipelines/finalize.py) evaluates CRF / matting on the best model,
exports the webcam model and promotes it in the MLflow registry, unless --no-finalize.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a clone without installing: python pipelines/sweep.py
    sys.path.insert(0, str(REPO))

from hairseg_core.config import ConfigError, SearchSpace, load_search_space  # noqa: E402
from hairseg_core.data.errors import DataError  # noqa: E402
from hairseg_core.tracking import (  # noqa: E402
    Tracker,
    TrackingUnavailable,
    check_tracking,
    default_artifact_location,
    resolve_tracking_uri,
    ui_address,
    ui_command,
    view_url,
)

log = logging.getLogger("hairseg.sweep")
DEFAULT_SPACE = str(REPO / "search_spaces" / "default.yaml")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--space",
        help="search space YAML (default: search_spaces/default.yaml; with --resume: the one the sweep started with)",
    )
    p.add_argument("--num-samples", type=int, help="override the space's num_samples")
    p.add_argument("--max-concurrent", type=int, help="override max_concurrent_trials")
    p.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override the space before validation: a training setting (epochs=1 is fixed.epochs=1) or a "
        "dotted key (scheduler.grace_period=1, finalize.max_test_images=4); e.g. a quick smoke run",
    )
    p.add_argument("--experiment", help="MLflow experiment and Tune run prefix (default: hairseg-<space name>)")
    p.add_argument("--address", help="Ray cluster address ('auto' on a cluster node); default: start local Ray")
    p.add_argument("--storage", help="Tune storage: local path, s3://... or gs://... (default ./ray_results)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or ./mlruns.db)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue --run-name, or the newest restorable sweep under --storage (of --experiment if given)",
    )
    p.add_argument("--run-name", help="Tune run name to create or resume (default: <experiment>-<timestamp>)")
    p.add_argument("--no-finalize", action="store_true", help="skip CRF/matting evaluation, export, promotion")
    p.add_argument("--num-cpus", type=int, help="CPUs for the local Ray instance (default: all)")
    p.add_argument("--quiet", action="store_true", help="less Ray output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Our progress at INFO; libraries (onnx exporter passes, alembic) only when something is wrong.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    for name in ("hairseg", "hairseg_core"):
        logging.getLogger(name).setLevel(logging.INFO)
    # 1. Everything that can be checked without Ray is checked first.
    from hairseg_core import tune as hs_tune  # imports Ray's modules; connects to nothing

    storage = hs_tune.normalize_storage_path(args.storage)
    overrides = {"num_samples": args.num_samples, "max_concurrent_trials": args.max_concurrent}
    try:
        overrides.update(parse_set(args.set))
    except ValueError as exc:
        print(f"error: --set: {exc}", file=sys.stderr)
        return 2
    try:
        if args.resume:
            space, experiment, name = resume_target(args, storage, overrides)
        else:
            space_file = args.space or DEFAULT_SPACE
            space = load_search_space(space_file, overrides)
            experiment = args.experiment or f"hairseg-{space.name}"
            name = args.run_name or hs_tune.new_sweep_name(experiment)
    except ConfigError as exc:
        print(f"invalid search space:\n{exc}", file=sys.stderr)
        return 2
    except ResumeError as exc:
        print(f"error: --resume: {exc}", file=sys.stderr)
        return 2
    except SweepFinished as done:
        print(done)
        return 0
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    try:
        check_tracking(tracking_uri)
    except TrackingUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # Ray workers inherit it
    # "local" rather than None: ray.init(address=None) joins whatever cluster
    # /tmp/ray/ray_current_cluster names (a `ray start`, or a crashed run's stale leftover that
    # then hangs the sweep) instead of starting the local Ray this command promises.
    address = args.address or os.environ.get("RAY_ADDRESS") or "local"
    problem = check_ray_address(address)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    # Pretrained weights first (cheaper than decoding data): resolved (fetched once if missing),
    # loaded strictly into their backbone, then handed to every trial through the object store (no trial downloads).
    from hairseg_core.models import WeightsMismatchError, WeightsNotFoundError

    try:
        weights = hs_tune.sweep_weights(space)
    except (WeightsNotFoundError, WeightsMismatchError) as exc:
        print(f"\nerror: pretrained weights: {exc}", file=sys.stderr)
        return 2

    # The data every trial shares is decoded here, before Ray and before the MLflow parent run:
    # a corrupt image or a wrong path fails in seconds, naming the file.
    try:
        data = hs_tune.share_data(space)
    except (DataError, ValueError, FileNotFoundError) as exc:  # DataError names the file
        names = ", ".join(repr(s.dataset) for s in space.trial_config({}).data_sources)
        print(f"\nerror: dataset {names}: {exc}", file=sys.stderr)
        return 2

    if not args.no_finalize and data is not None:  # same data for every trial: its test split is known now
        from hairseg_core.finalize import check_test_split

        split = space.finalize.test_split
        try:
            check_test_split(space.trial_config({}).model_dump(), split)
        except (DataError, ValueError, FileNotFoundError) as exc:
            print(
                f"\nerror: the final stage needs the {split!r} split: {exc}\n"
                "  set finalize.test_split in the search space, or pass --no-finalize",
                file=sys.stderr,
            )
            return 2

    import ray

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")  # experiment state saved often: cheap resume
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address=address,
        num_cpus=args.num_cpus if address == "local" else None,
        include_dashboard=False if address == "local" else None,
        log_to_driver=not args.quiet,
    )
    try:
        tracker = Tracker(tracking_uri, experiment, default_artifact_location(tracking_uri))
        parent = tracker.start_sweep(name, space.model_dump(), args.space or DEFAULT_SPACE)
        if not args.resume:
            hs_tune.save_sweep_manifest(storage, name, experiment, space, args.space or DEFAULT_SPACE)
            if data is not None:  # decoded here for every trial: the trials' runs copy these inputs
                from hairseg_core.data.fingerprint import fingerprint_config

                tracker.log_datasets(parent, fingerprint_config(space.trial_config({})))
        view_key = tracker.save_sweep_view(name, space.model_dump())  # the UI view comparing this sweep's trials
        view = view_url(ui_address(tracking_uri), tracker.experiment_id, view_key)
        print(f"sweep {name}: {space.num_samples} trials of space {space.name!r}, MLflow parent run {parent}")
        settings = hs_tune.SweepSettings(
            experiment=experiment,
            storage_path=storage,
            tracking_uri=tracking_uri,
            name=name,
            verbose=0 if args.quiet else 1,
        )
        tuner = hs_tune.build_tuner(space, settings, parent, resume=args.resume, data=data, weights=weights)
        started = time.perf_counter()
        results = tuner.fit()
        elapsed = time.perf_counter() - started
        progress = hs_tune.sweep_progress(results, space.num_samples)
        if progress.unfinished:
            # Tune catches the first Ctrl-C (SIGINT/SIGUSR1), saves its state and *returns*: the
            # sweep is not over, so it must be neither summarised as done nor finalized.
            tracker.end_run(parent, "KILLED")
            print(f"\n{progress.ended} of {space.num_samples} trials ended before the stop signal.", file=sys.stderr)
            print(resume_hint(name, storage, args), file=sys.stderr)
            return 130
        if progress.completed == space.num_samples:
            hs_tune.mark_sweep_finished(storage, name)  # errored trials keep it resumable (retried)
        rows = hs_tune.results_rows(results, space)
        if progress.completed == 0:
            print_errors(rows)
            tracker.end_run(parent, "FAILED")
            print("\nerror: every trial errored (after its retries); nothing to summarise or finalize", file=sys.stderr)
            return 1
        study = hs_tune.optuna_study_from_results(results, space)
        selection = report_front(results, space, tracker, parent)
        if selection is None:  # the select: rule matched no trial; the message is printed
            tracker.log_table(parent, rows, "results/trials.json")
            tracker.end_run(parent, "FAILED")
            return 1
        best = hs_tune.best_trial(results, space, selection.point)
        from hairseg_core.tracking import log_sweep_summary

        log_sweep_summary(tracker, parent, rows, study, best, space.metric)
        print_summary(rows, best, space.metric, elapsed, tracking_uri, experiment, view)
        print(f"picked for export: trial {best.trial_id}: {selection.reason}")
        status = 0
        if not args.no_finalize:
            from finalize import finalize_sweep  # pipelines/finalize.py, beside this file

            try:
                status = finalize_sweep(best=best, space=space, tracker=tracker, parent_run_id=parent, sweep=name)
            except Exception as exc:  # the trials are safe; only this stage has to run again
                traceback.print_exc()
                print(
                    f"\nerror: the final stage failed ({type(exc).__name__}: {exc}). The sweep's trials are "
                    f"complete and recorded; after fixing the cause run\n"
                    f"  python pipelines/finalize.py --run-id {parent}",
                    file=sys.stderr,
                )
                status = 1
        if status == 0 and progress.completed == space.num_samples:
            hs_tune.mark_sweep_finalized(storage, name, skipped=args.no_finalize)
        tracker.end_run(parent, "FINISHED" if status == 0 else "FAILED")
        return status
    except KeyboardInterrupt:
        print(resume_hint(name, storage, args), file=sys.stderr)
        return 130
    finally:
        ray.shutdown()


def parse_set(pairs: list[str]) -> dict[str, object]:
    """``["epochs=1", "scheduler.grace_period=1"]`` → ``{"fixed.epochs": 1, "scheduler.grace_period": 1}``."""
    import yaml

    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        out[key if "." in key else f"fixed.{key}"] = yaml.safe_load(value)
    return out


def resume_hint(name: str, storage: str, args: argparse.Namespace) -> str:
    address = f" --address {args.address}" if args.address else ""
    tracking = f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""
    return (
        f"interrupted: finished trials are kept; resume with\n"
        f"  python pipelines/sweep.py --resume --run-name {name} --storage {storage}{address}{tracking}"
    )


class ResumeError(Exception):
    """``--resume`` cannot find the sweep, or was given settings that contradict it."""


class SweepFinished(Exception):
    """``--resume`` named a sweep whose trials all ended: not an error, nothing to do."""


def resume_target(args: argparse.Namespace, storage: str, overrides: dict) -> tuple[SearchSpace, str, str]:
    """(search space, MLflow experiment, Tune run name) of the sweep ``--resume`` continues.

    The space and experiment come from the manifest the sweep wrote when it started, so
    ``--resume --run-name NAME`` is enough; a ``--space`` that differs from it is refused,
    because restored trials would silently train with other fixed settings.
    """
    from hairseg_core import tune as hs_tune

    if args.set:
        raise ResumeError("--set would change the settings of a sweep being resumed; it keeps the ones it started with")
    given = load_search_space(args.space, overrides) if args.space else None
    wanted = args.experiment or (f"hairseg-{given.name}" if given else None)
    name = args.run_name or hs_tune.latest_sweep(storage, wanted)
    if name is None:
        which = f"of experiment {wanted!r} " if wanted else ""
        raise ResumeError(f"no unfinished restorable sweep {which}under {storage} (pass --run-name and --storage)")
    manifest = hs_tune.load_sweep_manifest(storage, name)
    if manifest is None:  # a sweep without a manifest: trust the command line
        space = given or load_search_space(DEFAULT_SPACE, overrides)
        return space, args.experiment or f"hairseg-{space.name}", name
    if hs_tune.sweep_done(manifest):
        raise SweepFinished(
            f"sweep {name} already finished ({manifest['finished']}): every trial ran to its end, nothing to "
            f"resume. Redo its final stage with: python pipelines/finalize.py --experiment {manifest['experiment']}"
        )
    stored: SearchSpace = manifest["space"]
    if given is not None:
        ignore = {"num_samples", "max_concurrent_trials"}
        old, new = stored.model_dump(exclude=ignore), given.model_dump(exclude=ignore)
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if changed:
            raise ResumeError(
                f"{args.space} differs from the search space sweep {name} started with "
                f"({manifest.get('space_file')}) in: {', '.join(changed)}. Resume without --space "
                "(the stored one is used) or start a new sweep."
            )
    if args.experiment and args.experiment != manifest["experiment"]:
        raise ResumeError(f"sweep {name} logs to MLflow experiment {manifest['experiment']!r}, not {args.experiment!r}")
    return stored, manifest["experiment"], name


def check_ray_address(address: str | None, timeout: float = 5.0) -> str | None:
    """Why a ``host:port`` cluster address is unusable, or None.

    ``ray.init`` retries an unreachable GCS forever (minutes of warnings, no exit), so a typo'd
    port or a head node that is down is caught here with one TCP connect.
    """
    if not address or address in {"auto", "local"}:
        return None
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        return f"Ray address {address!r} (--address / RAY_ADDRESS): expected host:port, ray://host:port, auto"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as exc:
        return (
            f"cannot reach the Ray cluster at {address} ({exc}). Check --address / RAY_ADDRESS, or start "
            "the head node (`ray start --head`); leave both unset to run on a local Ray instead."
        )


def print_errors(rows) -> None:
    failed = [r for r in rows if r.get("error")]
    if failed:
        print(f"\n{len(failed)} trial(s) errored (after their retries); error.txt in each trial folder has the trace:")
        for row in failed:
            print(f"  trial {row['trial_id']}: {row['error']}")


def report_front(results, space: SearchSpace, tracker: Tracker, parent: str):
    """Print the Pareto front and log it to the parent run; return the trial ``select:`` picks, or None.

    None (after printing why, naming the rule and the closest trial) when no trial satisfies the rule:
    the trials stay recorded, only the export has nothing to take.
    """
    import json

    from hairseg_core import tune as hs_tune
    from hairseg_core.pareto import describe_rule, format_front, log_front

    front = hs_tune.sweep_front(results, space)
    machines = hs_tune.latency_machines(results)
    rows = log_front(
        tracker,
        parent,
        front.points,
        space.objectives,
        front.front,
        space.select,
        front.selection,
        front.error,
        extra=hs_tune.FRONT_EXTRA_METRICS,
    )
    if machines:
        tracker.set_tags(parent, {"hairseg.latency_machines": json.dumps(machines)})
    if len(space.objectives) > 1:  # one objective: the front is just the best trial(s), logged only
        print()
        print(format_front(rows, space.objectives, describe_rule(space.select, space.objectives)))
    if machines:
        settings = space.finalize
        size = settings.export_size or "base_size"
        print(
            f"latency: median of {settings.latency_repeats} CPU passes at {size} px, batch 1, on {'; '.join(machines)}"
        )
    if front.selection is None:
        print(
            f"\nerror: {front.error}\n  The trials are complete and recorded (MLflow parent run {parent}); nothing was "
            "exported. Any trial's checkpoint can be finalized alone: python pipelines/finalize.py --checkpoint PATH",
            file=sys.stderr,
        )
    return front.selection


def print_summary(
    rows, best, metric: str, elapsed: float, tracking_uri: str, experiment: str, view: str | None = None
) -> None:
    from hairseg_core.report import format_table

    shown = [{k: v for k, v in r.items() if k != "error"} for r in rows]
    print()
    print(format_table(shown, title=f"trials, best {metric} first"))
    print_errors(rows)
    print(f"\npicked trial {best.trial_id} (select: below): {metric} = {best.metrics.get(metric):.4f}")
    for key, value in sorted(best.config.items()):
        print(f"  {key}: {value}")
    print(f"checkpoint: {best.checkpoint_path}")
    print(f"sweep time: {elapsed / 60:.1f} min")
    print(f"MLflow: experiment {experiment!r}; open the UI with\n  {ui_command(tracking_uri)}")
    if view:
        print(f"this sweep's trials side by side (table; add &compareRunsMode=CHART for the charts):\n  {view}")


if __name__ == "__main__":
    sys.exit(main())
