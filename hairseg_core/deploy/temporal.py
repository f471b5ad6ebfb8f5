"""Temporal stability of the hair mask in video: shake videos, flicker metrics and smoothers.

Flicker — a hair decision that switches on and off between frames while the scene barely moves — is the
artefact users of a colouring app notice first, because each frame is segmented independently. This
module measures it and holds the smoothers that fight it:

* :func:`shake_video` turns a still image and its mask into ``N`` frames under small, seeded, temporally
  correlated similarity transforms (a hand-held camera: sub-pixel to ~2 px translation, <= 1 deg
  rotation, ~1 % zoom), with optional sensor noise. The mask is warped with the *same* matrix, so every
  frame has a ground truth and per-frame IoU is measurable.
* :func:`flicker_scores` counts hair decisions (``>= 0.5``) that flip between consecutive frames **after
  motion compensation**: the previous frame's *probability* map is warped into the current frame with the
  known relative transform ``A_t @ inv(A_{t-1})`` and thresholded there, so a mask that moves with the
  scene scores about zero and what is counted are decisions that change, not hair (or a wrongly placed
  edge) that moved. Points the previous frame did not see are left out. Why the probability and not the
  0/1 decision: re-sampling a binary map at a sub-pixel offset re-rounds its edge, which alone "flipped"
  about a third of a perfect mask's boundary pixels per frame in a first version; the soft map keeps the
  sub-pixel edge. Why not "flips where the truth does not flip" (also tried): a model whose edge sits a
  few pixels off the true one flips pixels as the camera moves although it is perfectly steady relative
  to the scene, and that was counted as flicker. :func:`ground_truth_floor` (the warped coverage of the
  still's mask, a perfect soft segmenter) gives what compensation itself leaves; :func:`true_motion` the
  uncompensated flip rate of the truth (the real motion). The boundary figure restricts the count to a
  band of ``band_px`` around the current frame's ground-truth boundary (dilation minus erosion), where
  nearly all flicker lives; the whole-frame figure dilutes it with easy pixels.
* Smoothers (registry :data:`SMOOTHERS`, common interface ``update(prob) -> prob``, ``reset()``): the
  output is always a probability map whose ``>= 0.5`` is the hair decision, because the app colours with
  the soft probability. ``none``; ``ema`` (the app's historic EMA, momentum 0.5); ``hysteresis`` (two
  thresholds; a pixel's previous decision picks which one applies); ``gated`` (an EMA whose per-pixel
  step grows with ``|prob - state|``: big changes — motion, a real edge — are followed at once, small
  ones — noise on uncertain pixels — are damped); ``gated_hysteresis`` (both); ``flow_ema`` (an EMA carried
  along the optical flow between frames, so it averages the same scene point; the default, because it
  alone cut flicker without losing IoU under camera shake, benchmarks/README.md "Flicker"). Vectorised
  NumPy / OpenCV.

:func:`video_stability` runs a predictor over shake videos of a few samples and scores smoothers; the
final stage logs it for the exported model, ``benchmarks/flicker.py`` prints the comparison table.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from hairseg_core.builders import Registry

#: Default smoother of the webcam app: the best of ``benchmarks/flicker.py`` (benchmarks/README.md, "Flicker").
DEFAULT_SMOOTHER = "flow_ema"

#: Decision threshold on every smoother's output.
THRESHOLD = 0.5

_BELOW_HALF = np.float32(np.nextafter(np.float32(0.5), np.float32(0.0)))

# --------------------------------------------------------------------------------------------- shake video


@dataclass(frozen=True)
class ShakeSettings:
    """Bounds of the per-frame similarity transform about the image centre.

    Each parameter follows a mean-reverting AR(1) process (coefficient ``correlation``) clipped to its
    bound: a hand-held camera drifts and trembles rather than jumping independently every frame, and
    consecutive frames then differ by about half the bound (~1 px), which is what a webcam at 30 fps sees.
    """

    max_shift_px: float = 2.0
    max_rotation_deg: float = 1.0
    max_scale: float = 0.01
    correlation: float = 0.5
    noise_std: float = 0.0  # Gaussian sensor noise in grey levels, added after warping

    def __post_init__(self) -> None:
        if min(self.max_shift_px, self.max_rotation_deg, self.max_scale, self.noise_std) < 0:
            raise ValueError(f"shake bounds must be >= 0, got {self}")
        if not 0.0 <= self.correlation < 1.0:
            raise ValueError(f"correlation must be in [0, 1), got {self.correlation}")


@dataclass(frozen=True)
class ShakeVideo:
    """Frames (HxWx3 uint8), ground-truth masks (HxW bool) and the 2x3 matrix mapping the still to each.

    ``coverage`` (optional) is the still's mask warped bilinearly before thresholding (``masks`` is its
    ``>= 0.5``): the soft output of a perfect segmenter, which gives the metric's floor.
    """

    frames: list[np.ndarray]
    masks: list[np.ndarray]
    transforms: list[np.ndarray]
    coverage: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.frames)


def similarity(center: tuple[float, float], shift: tuple[float, float], angle_deg: float, scale: float) -> np.ndarray:
    """2x3 matrix: rotate by ``angle_deg`` and scale about ``center`` (x, y), then translate by ``shift``."""
    matrix = cv2.getRotationMatrix2D(center, angle_deg, scale)
    matrix[:, 2] += shift
    return matrix


def relative_transform(previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    """2x3 matrix taking frame ``t-1`` coordinates to frame ``t``: ``current @ inv(previous)``."""
    return (_homogeneous(current) @ np.linalg.inv(_homogeneous(previous)))[:2]


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(matrix, np.float64), [0.0, 0.0, 1.0]])


def warp_coverage(mask: np.ndarray, matrix: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Warp a 0/1 map bilinearly (float32); ``>= 0.5`` is the mask with a sub-pixel exact edge."""
    return cv2.warpAffine(
        mask.astype(np.float32), matrix, size_wh, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )


def _ar1_walk(rng: np.random.Generator, n: int, bound: float, rho: float) -> np.ndarray:
    """Stationary AR(1) with std ``bound / 2``, clipped to ``±bound``."""
    sigma = bound / 2.0
    values = np.empty(n)
    state = rng.normal(0.0, sigma)
    innovation = math.sqrt(1.0 - rho * rho) * sigma
    for i in range(n):
        values[i] = state
        state = rho * state + rng.normal(0.0, innovation)
    return np.clip(values, -bound, bound)


def shake_video(
    image: np.ndarray, mask: np.ndarray, n_frames: int = 30, settings: ShakeSettings | None = None, seed: int = 0
) -> ShakeVideo:
    """``n_frames`` of ``image`` (HxWx3 uint8) under seeded small camera shake, with their warped masks.

    Frame and mask use the same matrix; the border is reflected (a real camera shows more scene there,
    not black), for the mask too, so the ground truth matches what the frame shows.
    """
    if n_frames < 2:
        raise ValueError(f"a shake video needs at least 2 frames, got {n_frames}")
    if image.ndim != 3 or image.dtype != np.uint8 or mask.shape != image.shape[:2]:
        raise ValueError(f"need an HxWx3 uint8 image and an HxW mask, got {image.shape} {image.dtype}, {mask.shape}")
    settings = settings or ShakeSettings()
    rng = np.random.default_rng(seed)
    height, width = mask.shape
    center = ((width - 1) / 2.0, (height - 1) / 2.0)
    rho = settings.correlation
    dx = _ar1_walk(rng, n_frames, settings.max_shift_px, rho)
    dy = _ar1_walk(rng, n_frames, settings.max_shift_px, rho)
    angle = _ar1_walk(rng, n_frames, settings.max_rotation_deg, rho)
    zoom = 1.0 + _ar1_walk(rng, n_frames, settings.max_scale, rho)
    binary = np.asarray(mask) > 0
    frames, masks, transforms, coverage = [], [], [], []
    for t in range(n_frames):
        matrix = similarity(center, (dx[t], dy[t]), angle[t], zoom[t])
        frame = cv2.warpAffine(
            image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
        if settings.noise_std > 0:
            noisy = frame.astype(np.float32) + rng.normal(0.0, settings.noise_std, frame.shape).astype(np.float32)
            frame = np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
        frames.append(frame)
        coverage.append(warp_coverage(binary, matrix, (width, height)))
        masks.append(coverage[-1] >= 0.5)
        transforms.append(matrix)
    return ShakeVideo(frames, masks, transforms, coverage)


# ------------------------------------------------------------------------------------------------- metrics


def boundary_band(mask: np.ndarray, band_px: int = 5) -> np.ndarray:
    """Pixels within about ``band_px`` of the mask boundary: dilation minus erosion with a disk."""
    if band_px < 1:
        raise ValueError(f"band_px must be >= 1, got {band_px}")
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band_px + 1, 2 * band_px + 1))
    binary = np.asarray(mask).astype(np.uint8)
    return cv2.dilate(binary, kernel).astype(bool) & ~cv2.erode(binary, kernel).astype(bool)


def _pair_rates(
    maps: Sequence[np.ndarray], transforms: Sequence[np.ndarray] | None, regions: Sequence[np.ndarray] | None
) -> list[float]:
    """Per consecutive pair: flipped decisions / counted pixels (NaN when none is counted)."""
    for name, other in (("transforms", transforms), ("regions", regions)):
        if other is not None and len(other) != len(maps):
            raise ValueError(f"{len(maps)} maps but {len(other)} {name}")
    if len(maps) < 2:
        raise ValueError("flicker needs at least two frames")
    rates = []
    for t in range(1, len(maps)):
        previous, current = np.asarray(maps[t - 1], np.float32), np.asarray(maps[t], np.float32)
        if previous.shape != current.shape:
            raise ValueError(f"frames {t - 1} and {t} differ in size: {previous.shape} vs {current.shape}")
        counted = np.ones(current.shape, bool) if regions is None else np.asarray(regions[t], bool).copy()
        if transforms is not None:
            relative = relative_transform(transforms[t - 1], transforms[t])
            size = (current.shape[1], current.shape[0])
            previous = cv2.warpAffine(previous, relative, size, flags=cv2.INTER_LINEAR, borderValue=0.0)
            inside = cv2.warpAffine(np.ones_like(current), relative, size, flags=cv2.INTER_LINEAR, borderValue=0.0)
            counted &= inside >= 0.999  # the previous frame saw this point
        total = int(counted.sum())
        flipped = ((previous >= THRESHOLD) != (current >= THRESHOLD)) & counted
        rates.append(float(flipped.sum()) / total if total else math.nan)
    return rates


def flip_rate(
    maps: Sequence[np.ndarray],
    transforms: Sequence[np.ndarray] | None = None,
    regions: Sequence[np.ndarray] | None = None,
) -> float:
    """Mean over consecutive pairs of the fraction of pixels whose decision (``map >= 0.5``) flips.

    ``maps`` are probability or 0/1 maps. ``transforms`` (one 2x3 still→frame matrix per frame) turns on
    motion compensation: the previous map is warped bilinearly into the current frame before it is
    thresholded, and points the previous frame did not see are left out. ``regions`` (a bool map per frame)
    restricts the count to those pixels of the later frame. Pairs with nothing to count are skipped; NaN
    when no pair counts.
    """
    return _nanmean(_pair_rates(maps, transforms, regions))


def probability_change(probs_sequence: Iterable[np.ndarray]) -> float:
    """Mean absolute change of the probability between consecutive frames, averaged over frames and pixels.

    The soft companion of :func:`flip_rate`: it also sees changes that do not cross the decision
    threshold (a shimmering colour strength). On a still scene a perfect segmenter gives 0.
    """
    total = 0.0
    pairs = 0
    previous: np.ndarray | None = None
    for prob in probs_sequence:
        current = np.asarray(prob, dtype=np.float32)
        if previous is not None:
            if current.shape != previous.shape:
                raise ValueError(
                    f"probability_change needs equally sized maps, got {previous.shape} then {current.shape}"
                )
            total += float(np.mean(np.abs(current - previous)))
            pairs += 1
        previous = current
    if pairs == 0:
        raise ValueError("probability_change needs at least two probability maps")
    return total / pairs


def _nanmean(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def iou(decision: np.ndarray, truth: np.ndarray) -> float:
    """Hair IoU of one frame; 1 when both are empty."""
    union = int(np.logical_or(decision, truth).sum())
    return float(np.logical_and(decision, truth).sum()) / union if union else 1.0


@dataclass
class FlickerScores:
    """Per-pair flicker and per-frame IoU of one or more videos; the properties are their means."""

    pairs_all: list[float] = field(default_factory=list)
    pairs_band: list[float] = field(default_factory=list)
    frame_iou: list[float] = field(default_factory=list)

    def extend(self, other: FlickerScores) -> None:
        self.pairs_all += other.pairs_all
        self.pairs_band += other.pairs_band
        self.frame_iou += other.frame_iou

    @property
    def flicker(self) -> float:
        return _nanmean(self.pairs_all)

    @property
    def flicker_boundary(self) -> float:
        return _nanmean(self.pairs_band)

    @property
    def iou(self) -> float:
        return _nanmean(self.frame_iou)

    def summary(self) -> dict[str, float]:
        return {"flicker": self.flicker, "flicker_boundary": self.flicker_boundary, "iou": self.iou}


def flicker_scores(
    probs: Sequence[np.ndarray], video: ShakeVideo, band_px: int = 5, threshold: float = THRESHOLD
) -> FlickerScores:
    """Flicker (whole frame and boundary band, flips against a still truth) and per-frame IoU of a video.

    ``probs`` are the smoothed hair probabilities, one per frame of ``video``; the decision is
    ``prob >= threshold``. The band is taken around each later frame's ground-truth boundary.
    """
    if len(probs) != len(video):
        raise ValueError(f"{len(probs)} probability maps for a {len(video)}-frame video")
    maps = [np.asarray(p, np.float32) + np.float32(THRESHOLD - threshold) for p in probs]
    bands = [boundary_band(m, band_px) for m in video.masks]
    return FlickerScores(
        pairs_all=_pair_rates(maps, video.transforms, None),
        pairs_band=_pair_rates(maps, video.transforms, bands),
        frame_iou=[iou(m >= THRESHOLD, truth) for m, truth in zip(maps, video.masks, strict=True)],
    )


def true_motion(videos: Sequence[ShakeVideo], band_px: int = 5) -> dict[str, float]:
    """How much the ground truth itself flips per frame without compensation (whole frame / band).

    The real motion of the shake, for context: what an uncompensated count would wrongly call flicker.
    """
    whole, band = [], []
    for video in videos:
        masks = [m.astype(np.float32) for m in video.masks]
        whole += _pair_rates(masks, None, None)
        band += _pair_rates(masks, None, [boundary_band(m, band_px) for m in video.masks])
    return {"motion": _nanmean(whole), "motion_boundary": _nanmean(band)}


def ground_truth_floor(videos: Sequence[ShakeVideo], band_px: int = 5) -> FlickerScores:
    """The metrics of a perfect soft segmenter (the warped coverage of the still's mask).

    Not exactly 0: warping an already resampled edge once more moves it by a fraction of a pixel, which
    re-rounds a few boundary pixels. Needs videos from :func:`shake_video` (they carry ``coverage``).
    """
    scores = FlickerScores()
    for video in videos:
        if video.coverage is None:
            raise ValueError("the floor needs a video with coverage maps (made by shake_video)")
        scores.extend(flicker_scores(video.coverage, video, band_px))
    return scores


# ------------------------------------------------------------------------------------------------ smoothers


class Smoother:
    """``update(prob, frame=None) -> prob``: one frame's HxW hair probability in, the smoothed one out.

    ``frame`` (the HxWx3 uint8 image the probability belongs to) is used by motion-aware smoothers and
    ignored by the others. The output's ``>= 0.5`` is the decision; the state resets on :meth:`reset` (a new
    input, unrelated images) and whenever the frame size changes. ``smoother(prob)`` is ``update(prob)``.
    """

    name = "smoother"

    def reset(self) -> None:
        """Forget the previous frames."""

    def update(self, prob: np.ndarray, frame: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, prob: np.ndarray, frame: np.ndarray | None = None) -> np.ndarray:
        return self.update(prob, frame)

    def describe(self) -> str:
        """Name and parameters, for tables and logs."""
        return self.name


SMOOTHERS: Registry[Smoother] = Registry("smoother")


@SMOOTHERS.register("none")
class NoSmoothing(Smoother):
    """Each frame on its own: the network's flicker as it is."""

    name = "none"

    def update(self, prob: np.ndarray, frame: np.ndarray | None = None) -> np.ndarray:
        return prob.astype(np.float32, copy=True)


@SMOOTHERS.register("ema")
class EmaSmoother(Smoother):
    """Exponential moving average: ``s_t = momentum * s_{t-1} + (1 - momentum) * p_t``.

    The webcam app's smoothing until the flicker benchmark (momentum 0.5). It damps noise but lags every
    real change by the same amount, so under camera motion the mask trails the hair at its edge.
    ``momentum = 0`` is no smoothing.
    """

    name = "ema"

    def __init__(self, momentum: float = 0.5) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self._state: np.ndarray | None = None

    def reset(self) -> None:
        self._state = None

    def update(self, prob: np.ndarray, frame: np.ndarray | None = None) -> np.ndarray:
        prob = prob.astype(np.float32, copy=False)
        if self._state is None or self._state.shape != prob.shape or self.momentum == 0.0:
            self._state = prob.copy()
        else:
            self._state *= np.float32(self.momentum)
            self._state += np.float32(1.0 - self.momentum) * prob
        return self._state.copy()

    def describe(self) -> str:
        return f"ema(momentum={self.momentum:g})"


@SMOOTHERS.register("hysteresis")
class HysteresisSmoother(Smoother):
    """Two thresholds: a pixel becomes hair at ``p >= high`` and stops being hair only at ``p < low``.

    A pixel hovering around 0.5 keeps its previous decision instead of flipping with the noise. The output
    is the probability re-expressed so that 0.5 is the threshold the pixel is held to (piecewise linear:
    ``[0, tau] -> [0, 0.5)``, ``[tau, 1] -> [0.5, 1]``), which keeps soft colouring continuous in ``p``
    and makes ``output >= 0.5`` exactly the hysteresis decision. The first frame uses 0.5.
    """

    name = "hysteresis"

    def __init__(self, low: float = 0.35, high: float = 0.65) -> None:
        if not 0.0 < low <= THRESHOLD <= high < 1.0:
            raise ValueError(f"need 0 < low <= 0.5 <= high < 1, got low={low}, high={high}")
        self.low, self.high = float(low), float(high)
        self._decision: np.ndarray | None = None

    def reset(self) -> None:
        self._decision = None

    def update(self, prob: np.ndarray, frame: np.ndarray | None = None) -> np.ndarray:
        prob = prob.astype(np.float32, copy=False)
        if self._decision is None or self._decision.shape != prob.shape:
            tau = np.full(prob.shape, THRESHOLD, np.float32)
        else:
            tau = np.where(self._decision, np.float32(self.low), np.float32(self.high))
        self._decision = prob >= tau
        below = np.minimum(prob * (np.float32(0.5) / tau), _BELOW_HALF)
        above = np.float32(0.5) + np.float32(0.5) * (prob - tau) / (np.float32(1.0) - tau)
        return np.where(self._decision, above, below)

    def describe(self) -> str:
        return f"hysteresis(low={self.low:g}, high={self.high:g})"


@SMOOTHERS.register("gated")
class GatedEmaSmoother(Smoother):
    """EMA whose per-pixel step grows with the change: ``alpha = min_alpha + (1 - min_alpha) * min(1, |p - s| / gate)``.

    Moving hair (the camera shakes, the head turns) changes a pixel's probability a lot, so it is followed
    at once and the edge does not trail; noise on a static, uncertain pixel changes it a little, so it is
    averaged with weight ``min_alpha``. A fixed EMA cannot do both: its one momentum is either too slow for
    motion or too fast for noise.
    """

    name = "gated"

    def __init__(self, min_alpha: float = 0.25, gate: float = 0.5) -> None:
        if not 0.0 < min_alpha <= 1.0 or gate <= 0.0:
            raise ValueError(f"need 0 < min_alpha <= 1 and gate > 0, got min_alpha={min_alpha}, gate={gate}")
        self.min_alpha, self.gate = float(min_alpha), float(gate)
        self._state: np.ndarray | None = None

    def reset(self) -> None:
        self._state = None

    def update(self, prob: np.ndarray, frame: np.ndarray | None = None) -> np.ndarray:
        prob = prob.astype(np.float32, copy=False)
        if self._state is None or self._state.shape != prob.shape:
            self._state = prob.copy()
            return self._state.copy()
        delta = prob - self._state
        alpha = np.abs(delta)
        alpha *= np.float32((1.0 - self.min_alpha) / self.gate)
        alpha += np.float32(self.min_alpha)
        np.minimum(alpha, np.float32(1.0), out=alpha)
        delta *= alpha
        self._state += delta
        return self._state.copy()

    def describe(self) -> str:
        return f"gated(min_alpha={self.min_alpha:g}, gate={self.gate:g})"


@SMOOTHERS.register("flow_ema")
class FlowEmaSmoother(Smoother):
    """Motion-compensated EMA: the state is carried along the optical flow before it is averaged.

    A plain EMA averages each pixel with what was there before, so whenever the camera or the head moves
    the mask trails the hair and its edge smears; averaging along the motion removes the lag and keeps
    the noise reduction. Flow: OpenCV's DIS (ultrafast preset) from the current to the previous grey frame
    at ``flow_scale`` of the resolution (~1-2 ms for 512x512 on one core), upsampled; the state is then
    ``remap``-ed and blended: ``s_t = momentum * warp(s_{t-1}) + (1 - momentum) * p_t``. Without
    ``frame`` it is a plain EMA.
    """

    name = "flow_ema"

    def __init__(self, momentum: float = 0.8, flow_scale: float = 0.5) -> None:
        if not 0.0 <= momentum < 1.0 or not 0.0 < flow_scale <= 1.0:
            raise ValueError(f"need 0 <= momentum < 1 and 0 < flow_scale <= 1, got {momentum}, {flow_scale}")
        self.momentum, self.flow_scale = float(momentum), float(flow_scale)
        self._flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self._state: np.ndarray | None = None
        self._grey: np.ndarray | None = None
        self._grid: tuple[np.ndarray, np.ndarray] | None = None

    def reset(self) -> None:
        self._state, self._grey = None, None

    def _small_grey(self, frame: np.ndarray) -> np.ndarray:
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
        if self.flow_scale == 1.0:
            return np.ascontiguousarray(grey)
        return cv2.resize(grey, None, fx=self.flow_scale, fy=self.flow_scale, interpolation=cv2.INTER_AREA)

    def _warp(self, state: np.ndarray, grey: np.ndarray) -> np.ndarray:
        height, width = state.shape
        flow = self._flow.calc(grey, self._grey, None)  # current pixel -> where it was in the previous frame
        if flow.shape[:2] != (height, width):
            flow = cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR)
            flow *= np.float32(1.0 / self.flow_scale)
        if self._grid is None or self._grid[0].shape != (height, width):
            xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
            self._grid = (xs, ys)
        flow[..., 0] += self._grid[0]
        flow[..., 1] += self._grid[1]
        return cv2.remap(state, flow, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

    def update(self, prob: np.ndarray, frame: np.ndarray | None = None) -> np.ndarray:
        prob = prob.astype(np.float32, copy=False)
        grey = None if frame is None else self._small_grey(frame)
        if self._state is None or self._state.shape != prob.shape or self.momentum == 0.0:
            self._state = prob.copy()
        else:
            previous = self._state
            if grey is not None and self._grey is not None and self._grey.shape == grey.shape:
                previous = self._warp(previous, grey)
            self._state = previous * np.float32(self.momentum) + np.float32(1.0 - self.momentum) * prob
        self._grey = grey
        return self._state.copy()

    def describe(self) -> str:
        return f"flow_ema(momentum={self.momentum:g}, flow_scale={self.flow_scale:g})"


class ChainSmoother(Smoother):
    """Apply smoothers in order (e.g. a gated EMA, then hysteresis on its output)."""

    def __init__(self, name: str, *stages: Smoother) -> None:
        self.name, self.stages = name, stages

    def reset(self) -> None:
        for stage in self.stages:
            stage.reset()

    def update(self, prob: np.ndarray, frame: np.ndarray | None = None) -> np.ndarray:
        for stage in self.stages:
            prob = stage.update(prob, frame)
        return prob

    def describe(self) -> str:
        return " -> ".join(stage.describe() for stage in self.stages)


@SMOOTHERS.register("gated_hysteresis")
def gated_hysteresis(min_alpha: float = 0.25, gate: float = 0.5, low: float = 0.35, high: float = 0.65) -> Smoother:
    """The gated EMA damps noise on the probability; hysteresis then holds the decision of pixels near 0.5."""
    return ChainSmoother("gated_hysteresis", GatedEmaSmoother(min_alpha, gate), HysteresisSmoother(low, high))


def build_smoother(name: str, **params: Any) -> Smoother:
    """A fresh smoother by registry name (``UnknownNameError`` lists the names)."""
    return SMOOTHERS.build(name, **params)


def smooth_sequence(
    smoother: Smoother, probs: Sequence[np.ndarray], frames: Sequence[np.ndarray] | None = None
) -> tuple[list[np.ndarray], list[float]]:
    """Run a fresh sequence through ``smoother``; returns the outputs and each call's seconds."""
    smoother.reset()
    outputs, seconds = [], []
    for i, prob in enumerate(probs):
        frame = None if frames is None else frames[i]
        start = time.perf_counter()
        outputs.append(smoother.update(prob, frame))
        seconds.append(time.perf_counter() - start)
    return outputs, seconds


# --------------------------------------------------------------------------------------- a model over video


@dataclass
class SmootherResult:
    """One smoother over a set of shake videos: flicker, IoU and its own cost per frame."""

    name: str
    description: str
    scores: FlickerScores
    seconds: list[float]

    @property
    def ms_per_frame(self) -> float:
        return 1000.0 * float(np.median(self.seconds)) if self.seconds else math.nan

    def row(self) -> dict[str, Any]:
        return {"smoother": self.name, "params": self.description, **self.scores.summary(), "ms": self.ms_per_frame}


def compare_smoothers(
    prob_videos: Sequence[Sequence[np.ndarray]],
    videos: Sequence[ShakeVideo],
    smoothers: Sequence[str] | dict[str, Callable[[], Smoother]],
    band_px: int = 5,
) -> dict[str, SmootherResult]:
    """Score each smoother on the same network outputs (the network is deterministic, so it runs once)."""
    builders = smoothers if isinstance(smoothers, dict) else {name: SMOOTHERS.get(name) for name in smoothers}
    results = {}
    for name, builder in builders.items():
        smoother = builder()
        scores, seconds = FlickerScores(), []
        for probs, video in zip(prob_videos, videos, strict=True):
            outputs, took = smooth_sequence(smoother, probs, video.frames)
            scores.extend(flicker_scores(outputs, video, band_px))
            seconds += took
        results[name] = SmootherResult(name, smoother.describe(), scores, seconds)
    return results


def video_stability(
    predictor: Callable[[np.ndarray], np.ndarray],
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    n_frames: int = 12,
    smoothers: Sequence[str] = (DEFAULT_SMOOTHER, "none"),
    settings: ShakeSettings | None = None,
    band_px: int = 5,
    seed: int = 0,
) -> dict[str, float]:
    """Flicker of ``predictor`` (RGB frame → HxW hair probability) on shake videos of ``samples``.

    ``samples`` are ``(image RGB uint8, mask)`` pairs. Returns ``flicker``, ``flicker_boundary`` and
    ``video_iou`` for the first smoother (the app's default: what users see), the same with a ``_<name>``
    suffix for the others (``flicker_none``: the network alone), and ``motion`` / ``motion_boundary``
    (:func:`true_motion`). Each sample gets its own seed (``seed + index``).
    """
    if not samples:
        raise ValueError("video_stability needs at least one (image, mask) sample")
    settings = settings or ShakeSettings(noise_std=2.0)
    videos = [shake_video(image, mask, n_frames, settings, seed + i) for i, (image, mask) in enumerate(samples)]
    prob_videos = [[predictor(frame) for frame in video.frames] for video in videos]
    results = compare_smoothers(prob_videos, videos, list(dict.fromkeys(smoothers)), band_px)
    metrics: dict[str, float] = {}
    for i, name in enumerate(smoothers):
        suffix = "" if i == 0 else f"_{name}"
        summary = results[name].scores.summary()
        metrics[f"flicker{suffix}"] = summary["flicker"]
        metrics[f"flicker_boundary{suffix}"] = summary["flicker_boundary"]
        metrics[f"video_iou{suffix}"] = summary["iou"]
    metrics.update(true_motion(videos, band_px))
    return metrics
