"""Training and evaluation pipelines (albumentations 2) for image + hair mask pairs.

The training pipeline follows the paper (§4.3): fixed-scale resize of the short side to
``base_size`` and a random ``crop_size`` crop, rotation within ±5°, horizontal flip with
p = 0.5 and colour jitter of ±0.05; optionally random scale crop (RSC: short side drawn
from [0.5, 2]·base_size, then pad/crop) and Gaussian blur (GB); finally ImageNet
normalisation, because every pretrained backbone was trained on ImageNet statistics.

Pixels that do not come from the photo (padding, rotated-in corners) get the mask value
:data:`IGNORE_INDEX` so the loss and the metrics skip them instead of calling them
background.
"""

from __future__ import annotations

import os
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from hairseg_core.imagenet import IMAGENET_MEAN, IMAGENET_STD
from hairseg_core.scaling import DEFAULT_SIZE

IGNORE_INDEX = 255


class SegmentationTransform:
    """``transform(image=..., mask=...) -> {"image": float32 [3,H,W], "mask": int64 [H,W]}``.

    Wraps an ``A.Compose``. Besides the dtype cast it fixes a DataLoader pitfall: a Compose
    built in the main process is copied into every forked worker with the *same* random
    state, so all workers would produce identical augmentations. On first use in a worker
    the pipeline is reseeded from ``torch.utils.data.get_worker_info().seed``, which differs
    per worker and per epoch and follows ``torch.manual_seed``.
    """

    def __init__(self, compose: A.Compose) -> None:
        self.compose = compose
        self._seeded_pid = os.getpid()

    def __call__(self, *, image: np.ndarray, mask: np.ndarray) -> dict[str, torch.Tensor]:
        if os.getpid() != self._seeded_pid:
            info = torch.utils.data.get_worker_info()
            if info is not None:
                self.compose.set_random_seed(info.seed % 2**32)
            self._seeded_pid = os.getpid()
        out = self.compose(image=image, mask=mask)
        return {"image": out["image"].float(), "mask": out["mask"].long()}

    def set_random_seed(self, seed: int | None) -> None:
        """Make the augmentation sequence reproducible in this process."""
        self.compose.set_random_seed(seed)

    def __repr__(self) -> str:
        return f"SegmentationTransform({self.compose!r})"


def _finish() -> list[Any]:
    return [A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0), ToTensorV2()]


def build_train_transform(
    crop_size: int = DEFAULT_SIZE,
    base_size: int = DEFAULT_SIZE,
    rsc: bool = False,
    blur: bool = False,
    *,
    rotate_limit: float = 5.0,
    jitter: float = 0.05,
    blur_prob: float = 0.5,
    blur_sigma: tuple[float, float] = (0.1, 1.5),
    seed: int | None = None,
) -> SegmentationTransform:
    """Paper training augmentation; ``rsc`` adds random scale crop, ``blur`` Gaussian blur.

    Order: resize → pad (image 0, mask 255) → random crop → rotate (new corners: mask 255)
    → flip → colour jitter → [blur] → normalise → tensor. Rotating after the crop keeps the
    ±5° rotation from pulling padding into the middle of the crop.
    """
    if crop_size < 1 or base_size < 1:
        raise ValueError(f"crop_size and base_size must be positive, got {crop_size} and {base_size}")
    if rsc:
        low, high = max(1, base_size // 2), 2 * base_size
        # A list makes SmallestMaxSize draw the short side uniformly from it: one resize,
        # one interpolation (chaining a fixed resize and a RandomScale would blur twice).
        resize = A.SmallestMaxSize(max_size=list(range(low, high + 1)), interpolation=cv2.INTER_LINEAR)
    else:
        resize = A.SmallestMaxSize(max_size=base_size, interpolation=cv2.INTER_LINEAR)
    steps: list[Any] = [
        resize,
        A.PadIfNeeded(
            min_height=crop_size,
            min_width=crop_size,
            position="random",
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=IGNORE_INDEX,
        ),
        A.RandomCrop(height=crop_size, width=crop_size),
        A.Rotate(
            limit=rotate_limit,
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=IGNORE_INDEX,
            p=1.0,
        ),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=jitter, p=1.0),
    ]
    if blur:
        steps.append(A.GaussianBlur(blur_limit=0, sigma_limit=blur_sigma, p=blur_prob))
    return SegmentationTransform(A.Compose(steps + _finish(), seed=seed))


def build_eval_transform(size: int | None = None) -> SegmentationTransform:
    """Deterministic: optional resize to ``size``×``size`` (image bilinear, mask nearest), normalise.

    ``size=None`` keeps each image's own resolution (metrics at native resolution).
    """
    steps: list[Any] = []
    if size is not None:
        if size < 1:
            raise ValueError(f"eval size must be positive, got {size}")
        steps.append(
            A.Resize(height=size, width=size, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)
        )
    return SegmentationTransform(A.Compose(steps + _finish(), seed=0))


def denormalize(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Normalised [3,H,W] (or [H,W,3]) image → uint8 H×W×3 RGB, for visualisation and tests."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    rgb = array * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)
    return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
