"""Run a network at the scale it was trained for, and map its probabilities back to the full image.

Training resizes every image's short side to ``base_size`` and random-crops ``crop_size`` out of it
(``hairseg_core.data.transforms``), so the network only ever learnt hair at that object scale. Run on a
512 px photo when it was trained at 193 px, it sees hair 2.7x larger than anything in training and scores
far lower (celeb1k test: 0.755 mIoU native against 0.892 at the trained scale). Evaluation therefore
resizes the short side to the trained scale, runs the network, and resizes the softmax back to the
image's own H x W, so metrics are still computed on the full-resolution mask.

This module is the one place that knows the rule. It depends on numpy and OpenCV only (no torch, no
other ``hairseg_core`` module), so every other module, ``hairseg_core.artifact`` included, can import it.
It does not normalise pixels itself: the caller passes the model's normaliser (``hairseg_core.imagenet.Normalizer``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import cv2
import numpy as np

#: Attribute a trained module carries its scale in (see :func:`attach_train_scale`). Not in
#: ``model.config``: that dict is passed to ``build_model(**config)``, which takes no such argument.
TRAIN_SCALE_ATTR = "hairseg_train_scale"

#: ``scales=`` of multi-scale inference: multipliers of the trained scale (the usual DeepLab set, trimmed
#: to what a 2-core CPU evaluates in reasonable time).
MULTI_SCALES: tuple[float, ...] = (0.75, 1.0, 1.25)

#: What a user may ask for: a short side in pixels, ``"native"`` (the image's own size, the old behaviour)
#: or ``"auto"`` (the scale recorded with the model).
ScaleArg = int | Literal["auto", "native"] | None

#: A network call on a normalised NCHW float32 batch that returns NCHW probabilities (any back-end).
BatchRunner = Callable[[np.ndarray], np.ndarray]

_MIN_SIDE = 8  # below this every backbone collapses to a 1x1 feature map

#: The paper's resolution, base_size = crop_size = 257 px (DeepLab's 8k + 1 sizes keep feature maps aligned
#: with the image): the default of ``TrainConfig``, of the train transform, of the export's example input,
#: and the letterbox canvas of a bare checkpoint that records no trained scale.
DEFAULT_SIZE = 257


def inference_scale(train_config: Mapping[str, Any] | Any) -> int:
    """The short side (px) a model trained with ``train_config`` should be run at: its ``base_size``.

    ``base_size`` and not ``crop_size``: the crop only cuts a window out of the resized image, it does not
    change the size hair appears at. With random scale crop (``rsc``) the short side is drawn from
    [0.5, 2] x ``base_size``, whose geometric middle is again ``base_size``. Accepts a ``TrainConfig`` or its dict
    (what checkpoints hold).
    """
    value = train_config.get("base_size") if isinstance(train_config, Mapping) else train_config.base_size
    if value is None:
        raise ValueError("train config has no base_size: cannot tell the scale the model was trained at")
    scale = int(value)
    if scale < _MIN_SIDE:
        raise ValueError(f"base_size {scale} is too small to run a network at")
    return scale


def deploy_input_size(export_size: int | None, train_scale: int | None) -> int | None:
    """The webcam model's letterbox canvas: ``finalize.export_size`` when given, else the trained short side.

    The one statement of that rule: the export writes it into ``model.json``, every trial measures its
    latency at it, and a bare model file without metadata is run at it. None when neither is known.
    """
    if export_size is not None:
        return int(export_size)
    return None if train_scale is None else int(train_scale)


def effective_eval_size(train_config: Mapping[str, Any] | Any) -> int:
    """The square side validation images are resized to during training: ``eval_size``, else ``crop_size``.

    Used wherever a training run's validation view is reproduced (the trainer's validation and precise-BN
    loaders, benchmarks that recalibrate or score a checkpoint), so the fallback is stated once. Accepts a
    ``TrainConfig`` or its dict (what checkpoints hold).
    """
    get = train_config.get if isinstance(train_config, Mapping) else lambda key: getattr(train_config, key, None)
    size = get("eval_size") or get("crop_size")
    if size is None:
        raise ValueError("train config has neither eval_size nor crop_size")
    return int(size)


def attach_train_scale(model: Any, scale: int | None) -> Any:
    """Record ``scale`` on ``model`` (returned) so it travels with it: deep copies, MLflow pickles, exports."""
    if scale is not None:
        setattr(model, TRAIN_SCALE_ATTR, int(scale))
    return model


def model_train_scale(model: Any) -> int | None:
    """The scale recorded by :func:`attach_train_scale` (also inside a ``ProbabilityModel``), or None."""
    for candidate in (model, getattr(model, "model", None)):
        value = getattr(candidate, TRAIN_SCALE_ATTR, None)
        if value is not None:
            return int(value)
    return None


def parse_scale(text: str | int | None) -> ScaleArg:
    """``"auto"`` / ``"native"`` / a pixel count (command line or config value) → a :data:`ScaleArg`."""
    if text is None or isinstance(text, int):
        return check_scale(text)
    word = str(text).strip().lower()
    if word in ("auto", "native"):
        return word  # type: ignore[return-value]
    try:
        return check_scale(int(word))
    except ValueError:
        raise ValueError(f"scale must be a short side in pixels, 'native' or 'auto', got {text!r}") from None


def check_scale(scale: int | None) -> int | None:
    if scale is not None and int(scale) < _MIN_SIDE:
        raise ValueError(f"inference scale must be >= {_MIN_SIDE} px, got {scale}")
    return None if scale is None else int(scale)


def resolve_scale(requested: ScaleArg, recorded: int | None) -> int | None:
    """Pixel short side to run at (None = native) from what was asked and what the model recorded.

    ``"auto"`` with nothing recorded falls back to native: that is how such a model was always measured,
    and guessing a size would silently change its numbers.
    """
    if requested == "auto":
        return check_scale(recorded)
    if requested is None or requested == "native":
        return None
    return check_scale(int(requested))


def describe_scale(scale: int | None) -> int | str:
    """JSON / log form: the pixel count, or ``"native"``."""
    return "native" if scale is None else int(scale)


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(s) for s in scales)
    if not out or any(not s > 0 for s in out):
        raise ValueError(f"scales must be positive multipliers of the inference scale, got {list(scales)}")
    return out


def short_side_hw(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H', W') with ``min(H', W') == short_side`` and the aspect ratio kept (rounded)."""
    if height < 1 or width < 1:
        raise ValueError(f"image must be non-empty, got {height}x{width}")
    factor = short_side / min(height, width)
    if height <= width:
        return short_side, max(1, round(width * factor))
    return max(1, round(height * factor)), short_side


def resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize an HxWx3 image to ``hw`` bilinearly (``cv2.INTER_LINEAR``), also when shrinking.

    Bilinear because training resizes that way (``SmallestMaxSize`` in ``data.transforms``): the network
    learnt the slightly aliased look of a bilinear downscale, and feeding it the smoother INTER_AREA
    result cost 0.008-0.02 mIoU on celeb1k test (models fine-tuned at 193 and 129 px, 512 px photos).
    """
    if image.shape[:2] == tuple(hw):
        return image
    return cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def resize_probabilities(probs: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """[C, h, w] float maps → [C, H, W] by bilinear interpolation (cv2 takes HWC for any small C)."""
    if probs.shape[1:] == tuple(hw):
        return np.ascontiguousarray(probs, dtype=np.float32)
    hwc = np.ascontiguousarray(probs.transpose(1, 2, 0), dtype=np.float32)
    out = cv2.resize(hwc, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    if out.ndim == 2:  # cv2 drops a single channel
        out = out[..., None]
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def scaled_probabilities(
    run: BatchRunner,
    image: np.ndarray,
    scale: int | None,
    *,
    normalize: Callable[[Sequence[np.ndarray]], np.ndarray],
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> np.ndarray:
    """[C, H, W] probabilities of ``image`` (HxWx3 uint8 RGB) with the network run at short side ``scale``.

    For each multiplier ``m`` in ``scales`` the image is resized so its short side is ``round(m * scale)``
    (``scale=None``: the image's own short side), optionally together with its mirror image (one batch
    of two, the flipped output flipped back), and turned into an NCHW batch by ``normalize`` (the model's
    ``artifact.Normalizer.batch``); every output is resized bilinearly to H x W and the
    probabilities are averaged. Averaging probabilities, not logits, keeps the result a distribution for
    any back-end (exports return softmax only).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be HxWx3 uint8 RGB, got shape {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    base = min(height, width) if scale is None else int(scale)
    total: np.ndarray | None = None
    count = 0
    for multiplier in check_scales(scales):
        short = max(_MIN_SIDE, round(base * multiplier))
        resized = resize_image(image, short_side_hw(height, width, short))
        views = [resized, resized[:, ::-1]] if flip else [resized]
        probs = np.asarray(run(normalize(views)), dtype=np.float32)
        if probs.ndim != 4 or probs.shape[0] != len(views) or probs.shape[2:] != resized.shape[:2]:
            raise ValueError(
                f"network returned shape {probs.shape} for an input of {(len(views), 3, *resized.shape[:2])}"
            )
        for k in range(len(views)):
            view = probs[k, :, :, ::-1] if k == 1 else probs[k]
            full = resize_probabilities(view, (height, width))
            total = full if total is None else total + full
            count += 1
    assert total is not None  # check_scales guarantees at least one scale
    return total / count if count > 1 else total
