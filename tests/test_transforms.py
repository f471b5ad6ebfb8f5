"""Augmentation pipelines keep image and mask aligned, pad with ignore, and seed workers apart.

Alignment is checked on images whose mask can be read back from the pixels: hair is pure red,
everything else blue/green (never red, never black). After any augmentation the de-normalised
image must still be red exactly where the mask says hair, black exactly where the mask says
ignore (padding, rotated-in corners), except within a couple of pixels of a boundary where
interpolation and blur legitimately mix colours.
"""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from hairseg_core.data.transforms import (
    IGNORE_INDEX,
    build_eval_transform,
    build_train_transform,
    denormalize,
)

KERNEL = np.ones((3, 3), np.uint8)


def red_hair_image(seed: int, h: int = 180, w: int = 240) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = np.empty((h, w, 3), np.uint8)
    image[..., 0] = rng.integers(0, 90)
    image[..., 1] = rng.integers(60, 200)
    image[..., 2] = rng.integers(60, 220)
    # a few non-red clutter shapes
    for _ in range(4):
        colour = (int(rng.integers(0, 90)), int(rng.integers(60, 255)), int(rng.integers(60, 255)))
        cv2.circle(image, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(5, 40)), colour, -1)
    mask = np.zeros((h, w), np.uint8)
    # an asymmetric hair blob (a flip that forgets the mask would be caught)
    pts = np.array([[20, 10], [150, 15], [170, 60], [90, 70], [40, 120]], np.int32)
    cv2.fillPoly(mask, [pts], 1)
    cv2.circle(mask, (int(w * 0.8), int(h * 0.75)), 18, 1, -1)
    image[mask == 1] = (255, 0, 0)
    return image, mask


def erode(region: np.ndarray, iterations: int = 2) -> np.ndarray:
    # outside the image counts as "not in the region", so edge pixels are treated as boundary too
    eroded = cv2.erode(
        region.astype(np.uint8), KERNEL, iterations=iterations, borderType=cv2.BORDER_CONSTANT, borderValue=0
    )
    return eroded.astype(bool)


def check_alignment(image: torch.Tensor, mask: torch.Tensor) -> None:
    rgb = denormalize(image).astype(np.int16)
    m = mask.numpy()
    red = (rgb[..., 0] > 150) & (rgb[..., 1] < 110) & (rgb[..., 2] < 110)
    black = rgb.max(axis=2) < 40
    hair, ignore, background = m == 1, m == IGNORE_INDEX, m == 0
    assert set(np.unique(m).tolist()) <= {0, 1, IGNORE_INDEX}
    assert red[erode(hair)].all(), "mask says hair where the image is not red"
    assert not red[erode(background)].any(), "mask says background where the image is red"
    assert black[erode(ignore)].all(), "mask says ignore where the image has content"
    assert hair[erode(red)].all(), "red image pixels not labelled hair"
    assert ignore[erode(black)].all(), "black (padded) image pixels not labelled ignore"


CONFIGS = {
    "baseline": {},
    "rsc": {"rsc": True},
    "blur": {"blur": True, "blur_prob": 1.0},
    "rsc_blur": {"rsc": True, "blur": True},
    "crop_larger_than_image": {"crop_size": 200, "base_size": 120},
    "small_crop": {"crop_size": 97, "base_size": 129},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_train_transform_keeps_mask_aligned(name: str) -> None:
    kwargs = CONFIGS[name]
    transform = build_train_transform(**kwargs, seed=11)
    crop = kwargs.get("crop_size", 257)
    saw_hair = saw_ignore = 0
    for i in range(25):
        image, mask = red_hair_image(i)
        out = transform(image=image, mask=mask)
        assert out["image"].dtype == torch.float32 and out["image"].shape == (3, crop, crop)
        assert out["mask"].dtype == torch.int64 and out["mask"].shape == (crop, crop)
        check_alignment(out["image"], out["mask"])
        saw_hair += int((out["mask"] == 1).any())
        saw_ignore += int((out["mask"] == IGNORE_INDEX).any())
    assert saw_hair >= 15, "the check would be vacuous without hair in the crops"
    assert saw_ignore >= 15, "±5° rotation (and padding) must leave ignore pixels"


def test_padding_uses_ignore_and_rsc_varies_scale() -> None:
    image, mask = red_hair_image(0, 64, 64)
    fixed = build_train_transform(crop_size=64, base_size=64, rotate_limit=0, seed=0)
    assert all((fixed(image=image, mask=mask)["mask"] != IGNORE_INDEX).all() for _ in range(10))

    rsc = build_train_transform(crop_size=64, base_size=64, rsc=True, rotate_limit=0, seed=0)
    padded = []
    for _ in range(60):
        out = rsc(image=image, mask=mask)
        check_alignment(out["image"], out["mask"])
        padded.append(float((out["mask"] == IGNORE_INDEX).float().mean()))
    padded = np.array(padded)
    # short side uniform in [32, 128]: ~1/3 of draws shrink (padding up to 75 % of the crop)
    assert (padded == 0).sum() >= 25
    assert ((padded > 0) & (padded <= 0.76)).sum() >= 8
    assert padded.max() > 0.5


def test_rsc_and_baseline_sizes_follow_base_size() -> None:
    rsc = build_train_transform(base_size=100, rsc=True).compose.transforms[0]
    assert min(rsc.max_size) == 50 and max(rsc.max_size) == 200
    fixed = build_train_transform(base_size=100).compose.transforms[0]
    assert fixed.max_size == 100


def test_eval_transform_is_deterministic_and_resizes() -> None:
    image, mask = red_hair_image(3)
    native = build_eval_transform()
    a, b = native(image=image, mask=mask), native(image=image, mask=mask)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert a["image"].shape == (3, 180, 240)
    np.testing.assert_array_equal(a["mask"].numpy(), mask)
    np.testing.assert_array_equal(denormalize(a["image"]), image)

    square = build_eval_transform(129)
    out = square(image=image, mask=mask)
    assert out["image"].shape == (3, 129, 129) and out["mask"].shape == (129, 129)
    assert set(out["mask"].unique().tolist()) == {0, 1}, "nearest-neighbour mask resize keeps labels binary"
    check_alignment(out["image"], out["mask"])


def test_seeded_transforms_repeat_and_survive_pickling() -> None:
    image, mask = red_hair_image(5)
    first = build_train_transform(rsc=True, blur=True, seed=3)
    second = pickle.loads(pickle.dumps(build_train_transform(rsc=True, blur=True, seed=3)))
    for _ in range(3):
        x, y = first(image=image, mask=mask), second(image=image, mask=mask)
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
    different = build_train_transform(rsc=True, blur=True, seed=4)(image=image, mask=mask)
    assert not torch.equal(different["mask"], x["mask"]) or not torch.equal(different["image"], x["image"])


class _SameImage(Dataset):
    def __init__(self, transform) -> None:
        self.image, self.mask = red_hair_image(7, 96, 96)
        self.transform = transform

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(image=self.image, mask=self.mask)["mask"]


def _worker_outputs(seed: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    transform = build_train_transform(crop_size=48, base_size=64, rsc=True)
    loader = DataLoader(_SameImage(transform), batch_size=1, num_workers=2, multiprocessing_context="fork")
    return [batch[0] for batch in loader]


def test_dataloader_workers_get_different_augmentations() -> None:
    outputs = _worker_outputs(seed=0)
    # batches 0 and 1 come from workers 0 and 1: a copied random state would make them equal
    assert not torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[2], outputs[3])
    # ... and the whole sequence follows torch.manual_seed
    repeat = _worker_outputs(seed=0)
    assert all(torch.equal(a, b) for a, b in zip(outputs, repeat, strict=True))


def test_invalid_sizes() -> None:
    with pytest.raises(ValueError, match="crop_size"):
        build_train_transform(crop_size=0)
    with pytest.raises(ValueError, match="size"):
        build_eval_transform(0)
