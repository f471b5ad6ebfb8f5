"""Frame sources and sinks for the webcam app and the video benchmarks.

Cameras, video files, single images and image folders all read as one iterator of ``(name, frame_bgr)``;
results go to a video file, an image or a folder of PNGs. They fail at open time with the file or device
named (a dead camera times out on its first frame instead of hanging the app), which is why they are
library code rather than part of ``pipelines/webcam.py``: the app is only argument parsing and the loop.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_FOURCC = {".mp4": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}


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
