"""``hairseg webcam``: real-time hair colouring from a camera, a video, an image or a folder (paper §5.7).

The parser is built from names spelled out here, so ``hairseg webcam --help`` and a bad option answer
without OpenCV, ONNX Runtime or torch; the run (:mod:`hairseg_core.cli.webcam_run`) imports them after.
"""

from __future__ import annotations

import argparse

from hairseg_core.cli.options import add_web_arguments
from hairseg_core.threads import available_cpus

DESCRIPTION = """\
Real-time hair colouring from a camera, a video, an image or a folder of images (paper §5.7).

Each frame goes through the exported model (``hairseg_core.deploy.inference``: letterbox to the model's input
size, ImageNet normalisation, softmax hair probability mapped back to the full frame), temporal smoothing
against flicker (``--smoothing``, ``hairseg_core.deploy.temporal``), and a soft Lab recolouring weighted by
``strength * probability`` (``hairseg_core.deploy.coloring``), so there is no hard mask edge. The frame loop
is ``hairseg_core.deploy.webcam``.

Examples::

    hairseg webcam --model exports/webcam --source 0 --color red
    hairseg webcam --model models:/hairseg@champion --source clip.mp4 --headless --output out.mp4
    hairseg webcam --model model.onnx --source photos/ --headless --output coloured/
    hairseg webcam --model exports/webcam --web --port 8000    # in the browser (hairseg_core.deploy.web)

(``python pipelines/webcam.py ...`` and ``python -m hairseg webcam ...`` are the same command.)

Window keys: ``c``/space next colour, ``+``/``-`` strength, ``q``/Esc quit. Output: ``.mp4`` (mp4v),
``.avi`` (MJPG), ``.mkv`` (FFV1, lossless) video; an image path for a single image; otherwise a directory
of PNG frames (lossless).
"""

#: ``hairseg_core.deploy.coloring.NAMED_COLORS``, ``hairseg_core.deploy.temporal.SMOOTHERS`` and its
#: ``DEFAULT_SMOOTHER``, spelled out so that the parser needs neither module (both import OpenCV);
#: tests/test_front_door.py checks that they agree.
COLOR_NAMES = (
    "auburn",
    "black",
    "blonde",
    "blue",
    "brown",
    "chestnut",
    "copper",
    "ginger",
    "green",
    "pink",
    "platinum",
    "purple",
    "red",
    "silver",
    "teal",
)
SMOOTHER_NAMES = ("ema", "flow_ema", "gated", "gated_hysteresis", "hysteresis", "none")
DEFAULT_SMOOTHER = "flow_ema"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "webcam",
        help="colour the hair of a camera, video, image or folder live (or serve the browser page: --web)",
        description=DESCRIPTION,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    add_webcam_arguments(p)
    p.set_defaults(func=cmd_webcam)


def add_webcam_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``pipelines/webcam.py``, as they were."""
    p.add_argument("--model", required=True, help="export dir, .onnx/.ts/.pt file or models:/hairseg@champion")
    p.add_argument("--source", default="0", help="camera index, video file, image file or image directory")
    p.add_argument("--color", default="red", help=f"'#RRGGBB' or one of: {', '.join(COLOR_NAMES)} (default red)")
    p.add_argument("--strength", type=float, default=0.8, help="colour strength in [0, 1] (default 0.8)")
    p.add_argument(
        "--smoothing",
        choices=SMOOTHER_NAMES,
        default=None,
        help=f"temporal smoothing of the mask (default {DEFAULT_SMOOTHER}: least flicker, benchmarks/README.md)",
    )
    p.add_argument("--smooth", type=float, default=None, help="EMA momentum: alone it means --smoothing ema (0 = none)")
    p.add_argument(
        "--backend",
        choices=["onnx", "torchscript", "eager"],
        default=None,
        help="default: from the file suffix; onnx for an export directory",
    )
    p.add_argument("--output", default=None, help="out.mp4 | out.avi | out.mkv (lossless) | out.png | DIR")
    p.add_argument("--headless", action="store_true", help="no window; write --output with a progress bar")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"CPU threads for ONNX Runtime / PyTorch / OpenCV (default: the CPUs this process may use, here "
        f"{available_cpus()})",
    )
    p.add_argument("--no-channels-last", action="store_true", help="eager back-end: keep NCHW weights")
    p.add_argument("--camera-timeout", type=float, default=5.0, help="seconds to wait for the first frame")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    web = p.add_argument_group(
        "browser", "--web: serve a page that runs the ONNX export in the browser on the user's camera instead"
    )
    web.add_argument("--web", action="store_true", help="serve the hair-colouring web page (Ctrl-C stops it)")
    add_web_arguments(web)


def cmd_webcam(args: argparse.Namespace) -> int:
    from hairseg_core.cli import webcam_run  # deferred: OpenCV, ONNX Runtime, torch, MLflow

    return webcam_run.main(args)
