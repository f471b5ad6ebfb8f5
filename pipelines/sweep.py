"""Hyperparameter sweep: Ray Tune + Optuna + ASHA over a search space, tracked in MLflow.

    python pipelines/sweep.py [options]     is     hairseg sweep [options]     (hairseg_core/cli/sweep.py)

``python pipelines/sweep.py --help`` lists the options. The package must be installed (``pip install -e .``).
"""

import sys

from hairseg_core.cli import main as hairseg


def main(argv: list[str] | None = None) -> int:
    return hairseg(["sweep", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
