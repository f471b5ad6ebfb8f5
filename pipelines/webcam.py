#!/usr/bin/env python
"""Real-time hair colouring from a camera, a video, an image or a folder of images (paper §5.7).

Each frame goes through the exported model (``hairseg_core.deploy.inference``: letterbox to the model's input
size, ImageNet normalisation, softmax hair probability mapped back to the full frame), temporal smoothing
against flicker (``--smoothing``, ``hairseg_core.deploy.temporal``), and a soft Lab recolouring weighted by
``strength * probability`` (``hairseg_core.deploy.coloring``), so there is no hard mask edge.

Examples::

    python pipelines/webcam.py --model exports/webcam --source 0 --color red
    python pipelines/webcam.py --model models:/hairseg@champion --source clip.mp4 --headless --output out.mp4
    python pipelines/webcam.py --model model.onnx --source photos/ --headless --output coloured/
    python pipelines/webcam.py --model exports/webcam --web --port 8000    # in the browser (hairseg_core.deploy.web)

Window keys: ``c``/space next colour, ``+``/``-`` strength, ``q``/Esc quit. Output: ``.mp4`` (mp4v),
``.avi`` (MJPG), ``.mkv`` (FFV1, lossless) video; an image path for a single image; otherwise a directory
of PNG frames (lossless).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clone without installing the package
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from hairseg_core.builders import UnknownNameError  # noqa: E402
from hairseg_core.cli import add_web_arguments  # noqa: E402
from hairseg_core.deploy.coloring import NAMED_COLORS, parse_color, recolor  # noqa: E402
from hairseg_core.deploy.inference import HairPredictor, InferenceError, load_predictor  # noqa: E402
from hairseg_core.deploy.temporal import DEFAULT_SMOOTHER, SMOOTHERS, Smoother, build_smoother  # noqa: E402
from hairseg_core.deploy.video_io import FrameSink, SourceError, open_source  # noqa: E402
from hairseg_core.threads import available_cpus, configure_threads  # noqa: E402

COLOR_CYCLE = ("red", "copper", "blonde", "platinum", "blue", "purple", "pink", "green")
WINDOW = "hairseg webcam"


# ------------------------------------------------------------------------------------------------- loop


def _gui_available() -> bool:
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
        return True
    except cv2.error:
        return False


def _overlay(frame_bgr: np.ndarray, fps: float, color: str, strength: float) -> None:
    text = f"{fps:5.1f} fps  {color}  strength {strength:.1f}   [c] colour [+/-] strength [q] quit"
    cv2.putText(frame_bgr, text, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(frame_bgr, text, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)


def describe_model(spec: str, predictor: HairPredictor) -> str:
    """The start-up line: which model, back-end and input size, and whether that is the trained scale.

    The model is only accurate at the object scale it was trained at; an export made at another size
    (or before the scale was recorded) is worth flagging before someone judges the model by it.
    """
    size, trained = predictor.input_size, predictor.metadata.train_scale
    text = f"model {spec} ({predictor.backend}): frames letterboxed to {size} px"
    if trained is None:
        return text + " (the export records no trained scale)"
    if trained == size:
        return text + ", the scale it was trained at"
    return text + f", but it was trained at {trained} px: re-export at that size for full accuracy"


def make_smoother(name: str | None, momentum: float | None) -> Smoother:
    """``--smoothing`` (default: the flicker benchmark's best) and the older ``--smooth`` EMA momentum.

    ``--smooth M`` alone keeps its old meaning (EMA with momentum M, 0 = none); with ``--smoothing ema`` it
    sets that EMA's momentum; with any other method it is refused rather than silently ignored.
    """
    if momentum is None:
        return build_smoother(name or DEFAULT_SMOOTHER)
    if name is None:
        return build_smoother("none") if momentum == 0 else build_smoother("ema", momentum=momentum)
    if name == "ema":
        return build_smoother("ema", momentum=momentum)
    raise ValueError(f"--smooth sets the EMA momentum; it does not apply to --smoothing {name}")


def run(args: argparse.Namespace) -> dict[str, float]:
    """Process the source; returns ``{"frames", "seconds", "fps"}``. Raises SourceError / ValueError."""
    parse_color(args.color)  # fail on a bad colour before opening anything
    colors = [args.color] + [c for c in COLOR_CYCLE if c != args.color.strip().lower()]
    if not 0.0 <= args.strength <= 1.0:
        raise ValueError(f"--strength must be in [0, 1], got {args.strength}")
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError(f"--max-frames must be >= 1, got {args.max_frames}")
    if args.headless and args.output is None:
        raise ValueError("--headless needs --output (a video file, an image file or a directory)")
    smoother = make_smoother(args.smoothing, args.smooth)

    threads = configure_threads(args.threads)  # torch, OpenCV and ONNX Runtime from one count
    source = open_source(args.source, camera_timeout=args.camera_timeout)
    show = not args.headless
    try:
        # eager PyTorch runs channels-last by default: 1.1-1.2x faster here (benchmarks/README.md)
        predictor = load_predictor(
            args.model, args.backend, intra_op_threads=threads, channels_last=not args.no_channels_last
        )
        if show and not _gui_available():
            raise SourceError("OpenCV has no GUI support here (opencv-python-headless?); use --headless --output")
        if not args.quiet:
            print(describe_model(args.model, predictor), file=sys.stderr)
    except BaseException:
        source.close()  # release the camera before reporting
        raise
    sink = FrameSink(Path(args.output), source.fps) if args.output else None
    if sink is not None and sink.mode == "image" and args.max_frames != 1 and source.count != 1:
        source.close()
        raise SourceError(f"{sink.target}: an image output holds one frame; give a directory or a video file")

    total = source.count if args.max_frames is None else min(source.count or args.max_frames, args.max_frames)
    progress = None
    if args.headless:
        progress = tqdm(total=total, unit="frame", desc="colouring", disable=args.quiet)
    color_index, strength, fps_ema, frames = 0, float(args.strength), 0.0, 0
    start = time.perf_counter()
    try:
        for name, frame_bgr in source:
            if args.max_frames is not None and frames >= args.max_frames:
                break
            tick = time.perf_counter()
            rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
            if source.independent:
                smoother.reset()  # unrelated images must not bleed into each other
            prob = smoother(predictor(rgb), rgb)  # the frame: for motion-aware smoothing
            out_bgr = cv2.cvtColor(recolor(rgb, prob, colors[color_index], strength), cv2.COLOR_RGB2BGR)
            if sink is not None:
                sink.write(name, out_bgr)
            frames += 1
            instant = 1.0 / max(time.perf_counter() - tick, 1e-6)
            fps_ema = instant if frames == 1 else 0.9 * fps_ema + 0.1 * instant
            if progress is not None:
                progress.update(1)
                progress.set_postfix(fps=f"{fps_ema:.1f}", refresh=False)
            if show:
                _overlay(out_bgr, fps_ema, colors[color_index], strength)
                cv2.imshow(WINDOW, out_bgr)
                key = cv2.waitKey(0 if source.independent else 1) & 0xFF
                if key in (ord("q"), 27):
                    break
                if key in (ord("c"), ord(" ")):
                    color_index = (color_index + 1) % len(colors)
                elif key in (ord("+"), ord("=")):
                    strength = min(1.0, strength + 0.1)
                elif key == ord("-"):
                    strength = max(0.0, strength - 0.1)
    finally:
        source.close()
        if sink is not None:
            sink.close()
        if progress is not None:
            progress.close()
        if show:
            cv2.destroyAllWindows()
    seconds = time.perf_counter() - start
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds if seconds > 0 else 0.0}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model", required=True, help="export dir, .onnx/.ts/.pt file or models:/hairseg@champion")
    parser.add_argument("--source", default="0", help="camera index, video file, image file or image directory")
    parser.add_argument(
        "--color", default="red", help=f"'#RRGGBB' or one of: {', '.join(sorted(NAMED_COLORS))} (default red)"
    )
    parser.add_argument("--strength", type=float, default=0.8, help="colour strength in [0, 1] (default 0.8)")
    parser.add_argument(
        "--smoothing",
        choices=SMOOTHERS.names(),
        default=None,
        help=f"temporal smoothing of the mask (default {DEFAULT_SMOOTHER}: least flicker, benchmarks/README.md)",
    )
    parser.add_argument(
        "--smooth", type=float, default=None, help="EMA momentum: alone it means --smoothing ema (0 = none)"
    )
    parser.add_argument(
        "--backend",
        choices=["onnx", "torchscript", "eager"],
        default=None,
        help="default: from the file suffix; onnx for an export directory",
    )
    parser.add_argument("--output", default=None, help="out.mp4 | out.avi | out.mkv (lossless) | out.png | DIR")
    parser.add_argument("--headless", action="store_true", help="no window; write --output with a progress bar")
    parser.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"CPU threads for ONNX Runtime / PyTorch / OpenCV (default: the CPUs this process may use, here "
        f"{available_cpus()})",
    )
    parser.add_argument("--no-channels-last", action="store_true", help="eager back-end: keep NCHW weights")
    parser.add_argument("--camera-timeout", type=float, default=5.0, help="seconds to wait for the first frame")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    web = parser.add_argument_group(
        "browser", "--web: serve a page that runs the ONNX export in the browser on the user's camera instead"
    )
    web.add_argument("--web", action="store_true", help="serve the hair-colouring web page (Ctrl-C stops it)")
    add_web_arguments(web)
    return parser


def run_web(args: argparse.Namespace) -> int:
    """``--web``: the page gets the colour, strength and smoothing; the rest of the options are the desktop app's."""
    from hairseg_core.deploy.web.ortweb import OrtWebError
    from hairseg_core.deploy.web.server import PAGE_SMOOTHERS, serve_forever
    from hairseg_core.track.errors import TrackingUnavailable  # deferred: MLflow only when it is used

    smoothing = args.smoothing or PAGE_SMOOTHERS[0]
    if args.smooth is not None:
        smoothing = "none" if args.smooth == 0 else "ema"
    try:
        serve_forever(
            args.model,
            host=args.host,
            port=args.port,
            open_browser=not args.no_browser,
            color=args.color,
            strength=args.strength,
            smoothing=smoothing,
            threads=args.web_threads,
        )
    except (FileNotFoundError, ValueError, OrtWebError, OSError, TrackingUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hairseg_core.track.errors import TrackingUnavailable  # deferred: MLflow only when it is used

    if args.web:
        return run_web(args)
    try:
        stats = run(args)
    except (SourceError, InferenceError, UnknownNameError, ValueError, FileNotFoundError, TrackingUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"{stats['frames']} frames in {stats['seconds']:.1f} s ({stats['fps']:.1f} fps)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
