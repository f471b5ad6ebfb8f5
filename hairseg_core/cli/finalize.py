"""``hairseg finalize``: a sweep's final stage (CRF / matting evaluation, webcam export, registry promotion).

The parser needs nothing heavy; MLflow, torch and the stage itself are imported once it has parsed.
"""

from __future__ import annotations

import argparse
from functools import partial

from hairseg_core.threads import available_cpus

DESCRIPTION = """\
Final stage of a sweep: CRF / matting evaluation, webcam export, MLflow registry promotion.

Runs at the end of ``python pipelines/sweep.py`` (unless --no-finalize), or alone:

    python pipelines/finalize.py                       # newest finished sweep of hairseg-default
    python pipelines/finalize.py --experiment hairseg-paper
    python pipelines/finalize.py --run-id <sweep parent run id> --dry-run
    python pipelines/finalize.py --checkpoint runs/m1/checkpoint.pt   # any training checkpoint
    python pipelines/finalize.py --report-only --run-id <sweep parent run id>  # rebuild exports/<sweep>/report.html

(``hairseg finalize ...`` and ``python -m hairseg finalize ...`` are the same command.)

After a sweep's final stage (not a dry run) the reproduction report is written to
``exports/<sweep>/report.html`` and logged to the sweep's parent run.
"""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finalize",
        help="a sweep's final stage: CRF / matting evaluation, webcam export, registry promotion",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help=f"torch / OpenCV / ONNX Runtime threads (default: the CPUs this process may use, here {available_cpus()})",
    )
    p.set_defaults(func=partial(cmd_finalize, parser=p))


def cmd_finalize(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.report_only and args.checkpoint:
        parser.error("--report-only reports on a sweep: give --run-id or --experiment, not --checkpoint")
    # deferred: MLflow, torch and the stage, after argparse could exit
    from hairseg_core.final.selection import FinalStageRequest, run_final_stage

    return run_final_stage(
        FinalStageRequest(
            experiment=args.experiment,
            run_id=args.run_id,
            checkpoint=args.checkpoint,
            space_file=args.space,
            tracking_uri=args.tracking_uri,
            dry_run=args.dry_run,
            promote_margin=args.promote_margin,
            max_test_images=args.max_test_images,
            report_only=args.report_only,
            threads=args.threads,
        )
    )
