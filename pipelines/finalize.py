"""Final stage of a sweep: CRF / matting evaluation, webcam export, MLflow registry promotion.

Runs at the end of ``python pipelines/sweep.py`` (unless --no-finalize), or alone:

    python pipelines/finalize.py                       # newest finished sweep of hairseg-default
    python pipelines/finalize.py --experiment hairseg-paper
    python pipelines/finalize.py --run-id <sweep parent run id> --dry-run
    python pipelines/finalize.py --checkpoint runs/m1/checkpoint.pt   # any training checkpoint
    python pipelines/finalize.py --report-only --run-id <sweep parent run id>  # rebuild exports/<sweep>/report.html

After a sweep's final stage (not a dry run) the reproduction report is written to
``exports/<sweep>/report.html`` and logged to the sweep's parent run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hairseg_core.config import FinalizeSettings, SearchSpace  # noqa: E402
from hairseg_core.tracking import (  # noqa: E402
    Tracker,
    TrackingUnavailable,
    check_tracking,
    resolve_tracking_uri,
    with_retries,
)


def local_checkpoint(path: str, workdir: Path) -> Path:
    """A Tune checkpoint directory (local, or s3:// / gs:// storage) → local checkpoint.pt."""
    if "://" not in path:
        local = Path(path)
    else:
        import pyarrow.fs

        local = workdir / "checkpoint"
        pyarrow.fs.copy_files(path, str(local))
    return local / "checkpoint.pt" if local.is_dir() else local


def finalize_sweep(
    best: Any, space: SearchSpace, tracker: Tracker, parent_run_id: str | None, sweep: str, dry_run: bool = False
) -> int:
    """The sweep's last step: ``best`` is ``hairseg_core.tune.BestTrial``."""
    from hairseg_core.finalize import finalize

    with tempfile.TemporaryDirectory(prefix="hairseg-final-") as tmp:
        ckpt = local_checkpoint(best.checkpoint_path, Path(tmp))
        finalize(ckpt, best.config, space.finalize, tracker, parent_run_id, sweep=sweep, dry_run=dry_run)
    if parent_run_id and not dry_run:
        try:
            report(tracker, parent_run_id, space.finalize.export_dir)
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
    """Write the sweep's reproduction report from MLflow (``hairseg_core.sweep_report``) and say where."""
    from hairseg_core.sweep_report import write_report

    path = write_report(tracker, parent_run_id, export_dir)
    print(f"\nreproduction report: {path.resolve()} (also on MLflow parent run {parent_run_id} as report.html)")
    return path


def _parent_from_experiment(tracker: Tracker) -> Any:
    for run in tracker.latest_sweep_runs():
        if "hairseg.best_checkpoint" in run.data.tags:
            return run
    raise SystemExit(f"experiment {tracker.experiment!r} has no sweep with a best trial yet")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--experiment", default="hairseg-default", help="MLflow experiment of the sweep")
    src.add_argument("--run-id", help="the sweep's parent run id")
    p.add_argument("--checkpoint", help="finalize this training checkpoint instead of a sweep's best")
    p.add_argument("--space", help="search space YAML whose finalize: block to use (default: the sweep's)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or ./mlruns.db)")
    p.add_argument("--dry-run", action="store_true", help="show the promotion decision, change no registry")
    p.add_argument("--promote-margin", type=float, help="override finalize.promote_margin")
    p.add_argument("--max-test-images", type=int, help="override finalize.max_test_images")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="only (re)build the sweep's reproduction report from MLflow (exports/<sweep>/report.html)",
    )
    args = p.parse_args(argv)
    if args.report_only and args.checkpoint:
        p.error("--report-only reports on a sweep: give --run-id or --experiment, not --checkpoint")

    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    try:
        check_tracking(tracking_uri)
    except TrackingUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from hairseg_core.config import load_search_space
    from hairseg_core.finalize import finalize
    from hairseg_core.train import load_checkpoint

    settings = FinalizeSettings()
    if args.checkpoint:
        state = load_checkpoint(args.checkpoint)
        train_config, checkpoint, parent, sweep = state["train_config"], args.checkpoint, None, "manual"
        tracker = Tracker(tracking_uri, args.experiment)
    else:
        if args.run_id:
            lookup = Tracker(tracking_uri, "unused")
            run = lookup.get_run(args.run_id)
            experiment = with_retries(
                lambda: lookup.client.get_experiment(run.info.experiment_id), "get experiment"
            ).name
            tracker = Tracker(tracking_uri, experiment)
        else:
            tracker = Tracker(tracking_uri, args.experiment)
            run = _parent_from_experiment(tracker)
        parent, sweep = run.info.run_id, run.data.tags["hairseg.sweep"]
        if args.report_only:
            report(tracker, parent)
            return 0
        with tempfile.TemporaryDirectory() as tmp:
            best = json.loads(tracker.download_artifact(parent, "best_trial.json", tmp).read_text())
            space = json.loads(tracker.download_artifact(parent, "search_space.json", tmp).read_text())
        settings = FinalizeSettings(**space.get("finalize", {}))
        train_config, checkpoint = best["config"], best["checkpoint_path"]
    if args.space:
        settings = load_search_space(args.space).finalize
    overrides = {"promote_margin": args.promote_margin, "max_test_images": args.max_test_images}
    settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    with tempfile.TemporaryDirectory(prefix="hairseg-final-") as tmp:
        ckpt = local_checkpoint(checkpoint, Path(tmp))
        finalize(ckpt, train_config, settings, tracker, parent, sweep=sweep, dry_run=args.dry_run)
    if parent and not args.dry_run:
        report(tracker, parent, settings.export_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
