#!/usr/bin/env python
"""Real-time hair colouring from a camera, a video, an image or a folder of images (paper §5.7).

Each frame goes through the exported model (``hairseg_core.inference``: letterbox to the model's input
size, ImageNet normalisation, softmax hair probability mapped back to the full frame), an optional EMA
across frames against flicker, and a soft Lab recolouring weighted by ``strength * probability``
(``hairseg_core.coloring``), so there is no hard mask edge.

Examples::

    python pipelines/webcam.py --model exports/webcam --source 0 --color red
    python pipelines/webcam.py --model models:/hairseg@champion --source clip.mp4 --headless --output out.mp4
    python pipelines/webcam.py --model model.onnx --source photos/ --headless --output coloured/

Window keys: ``c``/space next colour, ``+``/``-`` strength, ``q``/Esc quit. Output: ``.mp4`` (mp4v),
``.avi`` (MJPG), ``.mkv`` (FFV1, lossless) video; an image path for a single image; otherwise a directory
of PNG frames (lossless).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a clone without installing the package
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from hairseg_core.coloring import NAMED_COLORS, TemporalSmoother, parse_color, recolor  # noqa: E402
from hairseg_core.inference import HairPredictor, InferenceError, load_predictor  # noqa: E402
from hairseg_core.registry import UnknownNameError  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_FOURCC = {".mp4": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}
COLOR_CYCLE = ("red", "copper", "blonde", "platinum", "blue", "purple", "pink", "green")
WINDOW = "hairseg webcam"


class SourceError(RuntimeError):
    """The input cannot be opened or yields no frames."""


# ---------------------------------------------------------------------------------------------- sources


class FrameSource:
    """Iterates ``(name, frame_bgr)``; ``independent`` means frames are unrelated images (no smoothing)."""

    kind = "source"
    fps: float = 30.0
    count: int | None = None
    independent = False

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file."""


class ImageSource(FrameSource):
    kind = "images"
    independent = True

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.count = len(paths)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for path in self.paths:
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                raise SourceError(f"{path}: cannot read image")
            yield path.stem, frame


class CaptureSource(FrameSource):
    """A camera or a video file through ``cv2.VideoCapture``; the first frame is read eagerly (with a
    timeout for cameras) so a dead device fails at start-up with a message instead of hanging."""

    def __init__(self, capture: cv2.VideoCapture, label: str, kind: str, first_frame_timeout: float) -> None:
        self.capture, self.label, self.kind = capture, label, kind
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else 30.0
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.count = frames if kind == "video" and frames > 0 else None
        self._first = self._read_first(first_frame_timeout)

    def _read_first(self, timeout: float) -> np.ndarray:
        result: list[tuple[bool, np.ndarray | None]] = []
        reader = threading.Thread(target=lambda: result.append(self.capture.read()), daemon=True)
        reader.start()
        reader.join(timeout)
        if reader.is_alive():
            raise SourceError(f"{self.label}: opened but delivered no frame within {timeout:.0f} s")
        ok, frame = result[0]
        if not ok or frame is None:
            self.close()
            raise SourceError(f"{self.label}: opened but returned no frame (empty or undecodable {self.kind})")
        return frame

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        index = 0
        frame: np.ndarray | None = self._first
        while frame is not None:
            yield f"frame_{index:06d}", frame
            index += 1
            ok, frame = self.capture.read()
            if not ok:
                frame = None

    def close(self) -> None:
        self.capture.release()


def open_source(spec: str, camera_timeout: float = 5.0) -> FrameSource:
    """Camera index (``"0"``), video file, image file or image directory → a :class:`FrameSource`."""
    if spec.isdigit():
        index = int(spec)
        if sys.platform.startswith("linux") and not Path(f"/dev/video{index}").exists():
            raise SourceError(f"camera {index}: /dev/video{index} does not exist (no camera attached?)")
        capture = cv2.VideoCapture(index)
        if not capture.isOpened():
            raise SourceError(f"camera {index}: cannot be opened (missing, busy or no permission)")
        return CaptureSource(capture, f"camera {index}", "camera", camera_timeout)
    path = Path(spec).expanduser()
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise SourceError(f"{path}: directory has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return ImageSource(images)
    if not path.is_file():
        raise SourceError(f"source {spec!r} not found: expected a camera index, a video, an image or a directory")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSource([path])
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise SourceError(f"{path}: OpenCV cannot open this file as a video")
    return CaptureSource(capture, str(path), "video", camera_timeout)


# ------------------------------------------------------------------------------------------------ sinks


class FrameSink:
    """Writes processed BGR frames to a video file, a single image or a PNG directory (created lazily)."""

    def __init__(self, target: Path, fps: float) -> None:
        self.target, self.fps = target, fps
        self.mode = (
            "video"
            if target.suffix.lower() in VIDEO_FOURCC
            else "image"
            if target.suffix.lower() in IMAGE_SUFFIXES
            else "dir"
        )
        self._writer: cv2.VideoWriter | None = None
        self.written = 0

    def write(self, name: str, frame_bgr: np.ndarray) -> None:
        if self.mode == "video":
            if self._writer is None:
                self.target.parent.mkdir(parents=True, exist_ok=True)
                fourcc = cv2.VideoWriter_fourcc(*VIDEO_FOURCC[self.target.suffix.lower()])
                height, width = frame_bgr.shape[:2]
                self._writer = cv2.VideoWriter(str(self.target), fourcc, self.fps, (width, height))
                if not self._writer.isOpened():
                    raise SourceError(f"{self.target}: OpenCV cannot write this video format")
            self._writer.write(frame_bgr)
        else:
            if self.mode == "image":
                if self.written:
                    raise SourceError(f"{self.target}: an image output holds one frame; give a directory instead")
                path = self.target
            else:
                path = self.target / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(path), frame_bgr):
                raise SourceError(f"{path}: cannot write image")
        self.written += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


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
    smoother = TemporalSmoother(args.smooth)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    source = open_source(args.source, camera_timeout=args.camera_timeout)
    show = not args.headless
    try:
        # eager PyTorch runs channels-last by default: 1.1-1.2x faster here (benchmarks/README.md)
        predictor = load_predictor(
            args.model, args.backend, intra_op_threads=args.threads, channels_last=not args.no_channels_last
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
        from tqdm import tqdm

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
            prob = smoother(predictor(rgb))
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
        "--smooth", type=float, default=0.5, help="EMA momentum of the mask across frames, 0 = off (default 0.5)"
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
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime / PyTorch")
    parser.add_argument("--no-channels-last", action="store_true", help="eager back-end: keep NCHW weights")
    parser.add_argument("--camera-timeout", type=float, default=5.0, help="seconds to wait for the first frame")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        stats = run(args)
    except (SourceError, InferenceError, UnknownNameError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"{stats['frames']} frames in {stats['seconds']:.1f} s ({stats['fps']:.1f} fps)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
