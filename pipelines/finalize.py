"""Final stage of a sweep: CRF / matting evaluation, webcam export, MLflow registry promotion.

    python pipelines/finalize.py [options]     is     hairseg finalize [options]     (hairseg_core/cli/finalize.py)

``python pipelines/finalize.py --help`` lists the options. The package must be installed (``pip install -e .``).
"""

import sys

from hairseg_core.cli import main as hairseg


def main(argv: list[str] | None = None) -> int:
    return hairseg(["finalize", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
