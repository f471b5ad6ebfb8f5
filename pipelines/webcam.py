#!/usr/bin/env python
"""Real-time hair colouring from a camera, a video, an image or a folder of images (paper §5.7).

    python pipelines/webcam.py [options]     is     hairseg webcam [options]     (hairseg_core/cli/webcam.py)

``python pipelines/webcam.py --help`` lists the options; the frame loop is ``hairseg_core/deploy/webcam.py``.
The package must be installed (``pip install -e .``).
"""

import sys

from hairseg_core.cli import main as hairseg


def main(argv: list[str] | None = None) -> int:
    return hairseg(["webcam", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
