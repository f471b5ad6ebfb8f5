"""The ``hairseg`` console script: the one front door to the sweep, its final stage, the webcam app and the tools.

This package is the only part of ``hairseg_core`` that parses a command line; each module builds the parser
of one command group and composes library calls. Every parser is built from light modules only, so
``hairseg ... --help`` and a bad option answer before Ray, torch, MLflow, OpenCV or ONNX Runtime are imported
(each command imports what it needs once its command line has parsed).

    hairseg sweep [--space search_spaces/paper.yaml] [--resume] ...      (= python pipelines/sweep.py)
    hairseg finalize [--run-id ID | --experiment NAME] [--dry-run] ...   (= python pipelines/finalize.py)
    hairseg webcam --model exports/webcam --source 0 [--web] ...         (= python pipelines/webcam.py)
    hairseg train --config configs/mobilenet.yaml [--output runs/m1] [--set epochs=3 ...]
    hairseg evaluate --model runs/m1/checkpoint.pt --data ../shared/data/figaro1k [--split test]
    hairseg validate search_spaces/paper.yaml
    hairseg validate-cluster cluster.yaml [--require-filled]
    hairseg data download figaro1k --dest ~/data
    hairseg data prepare celebamask_hq --root ~/data/CelebAMask-HQ [--check]
    hairseg data synthetic [--root DIR]
    hairseg data cache [--prune-days DAYS]
    hairseg weights fetch [BACKBONE ...] [--space search_spaces/paper.yaml] [--mirror URL] [--offline]
    hairseg weights list
    hairseg tracking-server --host 127.0.0.1 --port 5000 [--env-file FILE] [--artifacts-destination s3://...]
    hairseg web serve|fetch|verify

``python -m hairseg ...`` and ``python -m hairseg_core.cli ...`` are the same command.
"""

from __future__ import annotations

import argparse

from hairseg_core.cli import checks, data, finalize, servers, sweep, train, webcam, weights
from hairseg_core.cli.options import add_web_arguments

__all__ = ["add_web_arguments", "build_parser", "main"]

#: The command groups, in the order ``hairseg --help`` lists them.
COMMAND_GROUPS = (train, checks, data, weights, servers, sweep, finalize, webcam)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hairseg", description="DeepLabv3+ hair segmentation tools")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
