"""The run behind ``hairseg webcam`` once its command line is parsed: open, then colour or serve.

Imports OpenCV, ONNX Runtime and torch (the predictor), and MLflow for a ``models:/`` model: only
:mod:`hairseg_core.cli.webcam` imports it, after argparse is done.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hairseg_core.builders import UnknownNameError
from hairseg_core.deploy.inference import InferenceError, load_predictor
from hairseg_core.deploy.video_io import FrameSink, SourceError, open_source
from hairseg_core.deploy.web.ortweb import OrtWebError
from hairseg_core.deploy.web.server import PAGE_SMOOTHERS, serve_forever
from hairseg_core.deploy.webcam import (
    ColourControls,
    Window,
    colour_cycle,
    describe_model,
    gui_available,
    make_smoother,
    run_loop,
)
from hairseg_core.progress import progress_bar
from hairseg_core.threads import configure_threads
from hairseg_core.track.errors import TrackingUnavailable


def main(args: argparse.Namespace) -> int:
    """Exit status 2 with one ``error:`` line for a bad source, model, colour or option."""
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


def run(args: argparse.Namespace) -> dict[str, float]:
    """Process the source; returns ``{"frames", "seconds", "fps"}``. Raises SourceError / ValueError."""
    colors = colour_cycle(args.color)  # fail on a bad colour before opening anything
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
        if show and not gui_available():
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
    bar = progress_bar(total=total, unit="frame", desc="colouring", disable=args.quiet) if args.headless else None
    return run_loop(
        source,
        predictor,
        smoother,
        ColourControls(colors, float(args.strength)),
        sink=sink,
        max_frames=args.max_frames,
        window=Window() if show else None,
        bar=bar,
    )


def run_web(args: argparse.Namespace) -> int:
    """``--web``: the page gets the colour, strength and smoothing; the rest of the options are the desktop app's."""
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
