"""The webcam app's frame loop: each frame through the model, the smoother and the recolouring, to a window or a file.

One frame (:func:`colour_frame`): BGR→RGB, the predictor's hair probability on the full frame
(``hairseg_core.deploy.inference``: letterbox, normalise, softmax, back to the frame), temporal smoothing
against flicker (``hairseg_core.deploy.temporal``; the frame goes along for the motion-aware methods), a soft
Lab recolouring weighted by ``strength * probability`` (``hairseg_core.deploy.coloring``), RGB→BGR.
:func:`run_loop` runs a frame source through it, to a :class:`~hairseg_core.deploy.video_io.FrameSink`, a
progress bar and/or the desktop :class:`Window` (whose keys change the colour and the strength).

``hairseg webcam`` (``pipelines/webcam.py``) opens the source, the model and the sink and calls
:func:`run_loop`; ``benchmarks/webcam_fps.py`` times :func:`colour_frame`, the same work per frame.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from hairseg_core.deploy.coloring import parse_color, recolor
from hairseg_core.deploy.inference import HairPredictor
from hairseg_core.deploy.temporal import DEFAULT_SMOOTHER, Smoother, build_smoother
from hairseg_core.deploy.video_io import FrameSink, FrameSource

__all__ = [
    "COLOR_CYCLE",
    "ColourControls",
    "Window",
    "colour_cycle",
    "colour_frame",
    "describe_model",
    "gui_available",
    "make_smoother",
    "run_loop",
]

#: The colours the window's ``c`` key steps through, after the one asked for.
COLOR_CYCLE = ("red", "copper", "blonde", "platinum", "blue", "purple", "pink", "green")
WINDOW = "hairseg webcam"


def colour_cycle(first: str) -> list[str]:
    """``first`` then :data:`COLOR_CYCLE` without it; a bad colour fails here, before anything is opened."""
    parse_color(first)
    return [first] + [c for c in COLOR_CYCLE if c != first.strip().lower()]


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


def colour_frame(
    predictor: HairPredictor, smoother: Smoother, frame_bgr: np.ndarray, color: str, strength: float
) -> np.ndarray:
    """One frame of the app, BGR in and BGR out: hair probability, smoothing, soft recolouring."""
    rgb = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)
    prob = smoother(predictor(rgb), rgb)  # the frame: for motion-aware smoothing
    return cv2.cvtColor(recolor(rgb, prob, color, strength), cv2.COLOR_RGB2BGR)


@dataclass
class ColourControls:
    """The colour and strength the next frame is coloured with (the window's keys change them)."""

    colors: list[str]
    strength: float
    index: int = 0

    @property
    def color(self) -> str:
        return self.colors[self.index]

    def press(self, key: int) -> bool:
        """Apply one key (``c``/space next colour, ``+``/``-`` strength); False for ``q``/Esc (quit)."""
        if key in (ord("q"), 27):
            return False
        if key in (ord("c"), ord(" ")):
            self.index = (self.index + 1) % len(self.colors)
        elif key in (ord("+"), ord("=")):
            self.strength = min(1.0, self.strength + 0.1)
        elif key == ord("-"):
            self.strength = max(0.0, self.strength - 0.1)
        return True


def gui_available() -> bool:
    """Whether OpenCV can open the app's window here (not with opencv-python-headless); opens it if so."""
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
        return True
    except cv2.error:
        return False


class Window:
    """The desktop window: each coloured frame with an fps / colour / strength line, and the keys."""

    def show(self, frame_bgr: np.ndarray, fps: float, controls: ColourControls, wait: bool) -> bool:
        """Draw the frame (``wait``: until a key, for unrelated still images); False when the user quits."""
        text = (
            f"{fps:5.1f} fps  {controls.color}  strength {controls.strength:.1f}   [c] colour [+/-] strength [q] quit"
        )
        cv2.putText(frame_bgr, text, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(frame_bgr, text, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
        cv2.imshow(WINDOW, frame_bgr)
        return controls.press(cv2.waitKey(0 if wait else 1) & 0xFF)

    def close(self) -> None:
        cv2.destroyAllWindows()


def run_loop(
    source: FrameSource,
    predictor: HairPredictor,
    smoother: Smoother,
    controls: ColourControls,
    *,
    sink: FrameSink | None = None,
    max_frames: int | None = None,
    window: Window | None = None,
    bar: Any = None,
) -> dict[str, float]:
    """Colour ``source`` frame by frame until it ends, ``max_frames``, or the window's ``q``.

    Each frame goes to ``sink`` (a file or folder), ``bar`` (a progress bar: one step, the running fps)
    and ``window``. Closes the source, the sink, the bar and the window when done, also on an error.
    Returns ``{"frames", "seconds", "fps"}``; the seconds include closing the sink (a video's last write).
    """
    fps_ema, frames = 0.0, 0
    start = time.perf_counter()
    try:
        for name, frame_bgr in source:
            if max_frames is not None and frames >= max_frames:
                break
            tick = time.perf_counter()
            if source.independent:
                smoother.reset()  # unrelated images must not bleed into each other
            out_bgr = colour_frame(predictor, smoother, frame_bgr, controls.color, controls.strength)
            if sink is not None:
                sink.write(name, out_bgr)
            frames += 1
            instant = 1.0 / max(time.perf_counter() - tick, 1e-6)
            fps_ema = instant if frames == 1 else 0.9 * fps_ema + 0.1 * instant
            if bar is not None:
                bar.update(1)
                bar.set_postfix(fps=f"{fps_ema:.1f}", refresh=False)
            if window is not None and not window.show(out_bgr, fps_ema, controls, wait=source.independent):
                break
    finally:
        source.close()
        if sink is not None:
            sink.close()
        if bar is not None:
            bar.close()
        if window is not None:
            window.close()
    seconds = time.perf_counter() - start
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds if seconds > 0 else 0.0}
