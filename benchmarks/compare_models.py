"""Several trained models on the same test images, each difference to the first with a paired bootstrap.

Two studies run one after the other each get one final-stage table, with an interval per model; whether the
second is really better is a question about their *difference* on the same images, which the per-model
intervals answer badly (they overlap long before the difference is noise). This script scores every model the
way the final stage does (network at the scale each was trained at, metrics on the full-resolution masks, one
confusion matrix per image) and bootstraps ``metric(model) - metric(first)`` on shared resamples of the images
(``hairseg_core.final.bootstrap.paired_bootstrap``, the promotion decision's own code).

    .venv/bin/python benchmarks/compare_models.py \\
        --model recipe=/path/a/checkpoint.pt --model lovasz=/path/b/checkpoint.pt \\
        --data ../shared/data/celeb1k --data ../shared/data/figaro1k --threads 2 --json /tmp/compare.json

A model is a checkpoint, an ONNX / TorchScript export or an export folder (``hairseg evaluate --model``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from hairseg_core.data import build_dataset
from hairseg_core.deploy.inference import load_predictor
from hairseg_core.evaluate import evaluate_predictor
from hairseg_core.final.bootstrap import PerImageCounts, bootstrap_weights, metric_interval, paired_bootstrap
from hairseg_core.threads import configure_threads


def _labelled(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"--model takes LABEL=PATH, got {text!r}")
    if not Path(path).exists():
        raise argparse.ArgumentTypeError(f"--model {label}: {path} does not exist")
    return label, Path(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", type=_labelled, action="append", required=True, help="LABEL=PATH; the first is the reference"
    )
    p.add_argument("--data", action="append", required=True, help="a folder-layout data set root; --split is scored")
    p.add_argument("--split", default="test")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core this process may use)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    threads = configure_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {threads} threads")
    report: dict[str, dict] = {}
    for root in args.data:
        dataset = build_dataset("folder", args.split, root=root)
        name = Path(root).name
        counts: dict[str, PerImageCounts] = {}
        scores: dict[str, dict[str, float]] = {}
        for label, path in args.model:
            # "auto": short side at the model's trained base_size, as the final stage's tables run it
            predictor = load_predictor(str(path), device="cpu", intra_op_threads=threads, scale="auto")
            counts[label] = PerImageCounts()
            scores[label] = evaluate_predictor(predictor, dataset, per_image=counts[label], desc=f"{name} {label}")
        weights = bootstrap_weights(len(dataset), args.resamples, seed=0)
        reference = args.model[0][0]
        print(f"\n{name} {args.split}: {len(dataset)} images, 95 % intervals from {args.resamples} paired resamples")
        print(f"{'model':<24} {'mIoU':>7} {'interval':>18} {'minus ' + reference:>14} {'interval':>20}")
        report[name] = {}
        for label, _ in args.model:
            own = metric_interval(counts[label], weights=weights)
            row = {"miou": scores[label]["miou"], "lo": own.lo, "hi": own.hi, "boundary_f": scores[label]["boundary_f"]}
            line = f"{label:<24} {row['miou']:7.4f} [{own.lo:.4f}, {own.hi:.4f}]"
            if label != reference:
                diff = paired_bootstrap(counts[label], counts[reference], weights=weights)
                row.update(diff=diff.diff, diff_lo=diff.lo, diff_hi=diff.hi)
                line += f" {diff.diff:+14.4f} [{diff.lo:+.4f}, {diff.hi:+.4f}]"
            print(line)
            report[name][label] = row
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
