"""Losses of paper §3.3: CE, focal (eq. 9), gradient consistency (eq. 10) and their composition."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hairseg_core.builders import UnknownNameError
from hairseg_core.train.losses import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LOSSES,
    CrossEntropyLoss,
    FocalLoss,
    GradientConsistencyLoss,
    LovaszSoftmaxLoss,
    SegLoss,
    build_loss,
    mixed_loss,
    sobel_gradients,
)

IGNORE = 255


def _random_batch(seed: int = 0, b: int = 2, h: int = 12, w: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, 2, h, w, generator=g) * 2.0
    target = torch.randint(0, 2, (b, h, w), generator=g)
    return logits, target


def _signed_distance(h: int, w: int, cy: float, cx: float, r: float) -> torch.Tensor:
    """Positive inside a disk, negative outside, in pixels."""
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return r - torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)


def _normalised_image(gray: torch.Tensor) -> torch.Tensor:
    """[H, W] gray in [0, 1] -> [1, 3, H, W] ImageNet-normalised RGB, like the data pipeline produces."""
    rgb = gray.expand(3, *gray.shape)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((rgb - mean) / std).unsqueeze(0)


def _logits_from_prob_map(score: torch.Tensor) -> torch.Tensor:
    """[H, W] hair score -> [1, 2, H, W] logits whose softmax[:, 1] is sigmoid(score)."""
    return torch.stack([torch.zeros_like(score), score]).unsqueeze(0)


# ----------------------------------------------------------------------------- registry / builder


def test_registry_names_and_unknown_name() -> None:
    assert LOSSES.names() == ["ce", "focal"]
    with pytest.raises(UnknownNameError, match="ce, focal"):
        build_loss("dice")


def test_build_loss_passes_focal_parameters() -> None:
    loss = build_loss("focal", focal_gamma=1.5, focal_alpha=0.7, ignore_index=99)
    assert isinstance(loss, SegLoss)
    assert isinstance(loss.mask_loss, FocalLoss)
    assert (loss.mask_loss.gamma, loss.mask_loss.alpha, loss.mask_loss.ignore_index) == (1.5, 0.7, 99)
    assert loss.gc_loss.ignore_index == 99
    assert isinstance(build_loss("ce").mask_loss, CrossEntropyLoss)


# ----------------------------------------------------------------------------- CE / focal


def test_ce_matches_torch_and_respects_ignore_index() -> None:
    logits, target = _random_batch()
    target[0, :3] = IGNORE
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE)
    assert torch.allclose(CrossEntropyLoss()(logits, target), expected, atol=1e-6)

    changed = logits.clone()
    changed[0, :, :3] = 100.0 * torch.randn_like(changed[0, :, :3])
    assert torch.allclose(CrossEntropyLoss()(changed, target), expected, atol=1e-6)


def test_ce_is_binary_cross_entropy_of_eq5() -> None:
    logits, target = _random_batch(seed=1)
    p_hair = torch.softmax(logits, dim=1)[:, 1]
    bce = torch.where(target == 1, -torch.log(p_hair), -torch.log(1 - p_hair)).mean()
    assert torch.allclose(CrossEntropyLoss()(logits, target), bce, atol=1e-5)


def test_focal_gamma0_alpha_half_is_half_ce() -> None:
    logits, target = _random_batch(seed=2)
    target[1, -2:] = IGNORE
    focal = FocalLoss(gamma=0.0, alpha=0.5)(logits, target)
    ce = CrossEntropyLoss()(logits, target)
    assert torch.allclose(focal, 0.5 * ce, atol=1e-6)


def test_focal_matches_eq9_by_hand() -> None:
    # One hair pixel with p = 0.8 and one background pixel with p(hair) = 0.3, gamma=2, alpha=0.25.
    p = torch.tensor([0.8, 0.3])
    logits = torch.stack([torch.zeros(2), torch.log(p / (1 - p))]).view(1, 2, 1, 2)
    target = torch.tensor([[[1, 0]]])
    fl_hair = -0.25 * (1 - 0.8) ** 2 * math.log(0.8)
    fl_bg = -0.75 * (1 - 0.7) ** 2 * math.log(0.7)
    got = FocalLoss(gamma=2.0, alpha=0.25)(logits, target)
    assert got.item() == pytest.approx((fl_hair + fl_bg) / 2, rel=1e-5)


def test_focal_smaller_than_ce_for_easy_examples() -> None:
    target = torch.randint(0, 2, (1, 8, 8), generator=torch.Generator().manual_seed(3))
    # Confidently correct logits: p_t ~ 0.95 everywhere.
    logits = torch.stack([(target == 0).float(), (target == 1).float()], dim=1) * 3.0
    ce = CrossEntropyLoss()(logits, target)
    focal = FocalLoss(gamma=2.0, alpha=None)(logits, target)
    assert focal < 0.01 * ce
    # A hard pixel (wrong with high confidence) keeps most of its CE value.
    hard = FocalLoss(gamma=2.0, alpha=None)(-logits, target) / CrossEntropyLoss()(-logits, target)
    assert hard > 0.9


def test_all_ignored_batch_gives_zero_not_nan() -> None:
    logits, _ = _random_batch()
    target = torch.full((2, 12, 10), IGNORE)
    logits.requires_grad_(True)
    for loss in (CrossEntropyLoss(), FocalLoss(), build_loss("ce", gc_weight=0.5)):
        kwargs = {"image": torch.randn(2, 3, 12, 10)} if isinstance(loss, SegLoss) else {}
        value = loss(logits, target, **kwargs)
        assert value.item() == 0.0
        value.backward()


def test_shape_mismatch_raises() -> None:
    logits, target = _random_batch()
    with pytest.raises(ValueError, match="target must be"):
        CrossEntropyLoss()(logits, target[:, :-1])
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=1.5)


# ----------------------------------------------------------------------------- gradient consistency


def test_sobel_on_ramp() -> None:
    ramp = torch.arange(6, dtype=torch.float32).repeat(5, 1).view(1, 1, 5, 6)  # d/dx = 1, d/dy = 0
    gx, gy = sobel_gradients(ramp)
    assert torch.allclose(gx[..., 1:-1], torch.ones(1, 1, 5, 4))
    assert torch.allclose(gy, torch.zeros_like(gy))
    # Same values as the textbook 3x3 Sobel kernels applied with conv2d.
    x = torch.randn(2, 1, 9, 13, generator=torch.Generator().manual_seed(9))
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    ref = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), torch.stack([kx, kx.t()]).unsqueeze(1) / 8.0)
    gx, gy = sobel_gradients(x)
    assert torch.allclose(gx, ref[:, 0:1], atol=1e-6) and torch.allclose(gy, ref[:, 1:2], atol=1e-6)


def test_gc_near_zero_when_mask_edges_follow_image_edges() -> None:
    h = w = 40
    sd = _signed_distance(h, w, 20, 20, 10)
    image = _normalised_image(torch.sigmoid(sd / 1.5) * 0.8 + 0.1)  # light disk, smooth edge
    aligned = _logits_from_prob_map(sd / 2.0)
    square = _logits_from_prob_map(
        (10 - torch.maximum((torch.arange(h) - 20.0).abs().view(-1, 1), (torch.arange(w) - 20.0).abs())) / 2.0
    )
    gc = GradientConsistencyLoss()
    aligned_loss = gc(aligned, image).item()
    assert aligned_loss < 0.005
    # Reversed contrast (dark disk on light background) must score the same: the term is squared.
    inverted_image = _normalised_image(0.9 - torch.sigmoid(sd / 1.5) * 0.8)
    assert gc(aligned, inverted_image).item() == pytest.approx(aligned_loss, abs=1e-5)

    shifted = [
        gc(_logits_from_prob_map(_signed_distance(h, w, 20, 20 + s, 10) / 2.0), image).item() for s in (2, 6, 10)
    ]
    assert shifted == sorted(shifted)  # further off the image edge -> worse
    assert shifted[1] > 0.15 and shifted[1] > 50 * aligned_loss
    assert gc(square, image).item() > 0.1


def test_gc_ignores_padding_and_logits_there() -> None:
    h = w = 32
    g = torch.Generator().manual_seed(4)
    image = torch.randn(1, 3, h, w, generator=g)
    logits = torch.randn(1, 2, h, w, generator=g)
    target = torch.randint(0, 2, (1, h, w), generator=g)
    target[:, :, 24:] = IGNORE  # right-side padding
    gc = GradientConsistencyLoss()
    base = gc(logits, image, target)

    changed = logits.clone()
    changed[:, :, :, 24:] = 50.0 * torch.randn(1, 2, h, 8, generator=g)
    changed_image = image.clone()
    changed_image[:, :, :, 24:] = 0.0  # padding value must not matter either
    assert torch.allclose(gc(changed, changed_image, target), base, atol=1e-6)
    # Without the ignore mask the same change does matter (so the check above can fail).
    assert not torch.allclose(gc(changed, changed_image), gc(logits, image), atol=1e-3)


def test_gc_gradients_flow_to_logits_only() -> None:
    logits, target = _random_batch(seed=5)
    logits.requires_grad_(True)
    image = torch.randn(2, 3, 12, 10, requires_grad=True)
    GradientConsistencyLoss()(logits, image, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert image.grad is None


def test_gc_rejects_mismatched_image_size() -> None:
    logits, _ = _random_batch()
    with pytest.raises(ValueError, match="upsample the logits"):
        GradientConsistencyLoss()(logits, torch.randn(2, 3, 24, 20))


# ----------------------------------------------------------------------------- SegLoss / mixed_loss


def test_segloss_adds_weighted_gc_and_needs_image() -> None:
    logits, target = _random_batch(seed=6)
    image = torch.randn(2, 3, 12, 10)
    loss = build_loss("ce", gc_weight=0.3)
    parts = loss.components(logits, target, image)
    expected = CrossEntropyLoss()(logits, target) + 0.3 * GradientConsistencyLoss()(logits, image, target)
    assert torch.allclose(parts["total"], expected, atol=1e-6)
    assert torch.allclose(loss(logits, target, image=image), expected, atol=1e-6)
    with pytest.raises(ValueError, match="needs the input image"):
        loss(logits, target)
    # gc_weight = 0 needs no image and equals the mask loss.
    assert torch.allclose(build_loss("ce")(logits, target), CrossEntropyLoss()(logits, target))


def test_segloss_gradients_flow() -> None:
    logits, target = _random_batch(seed=7)
    logits.requires_grad_(True)
    build_loss("focal", gc_weight=1.0)(logits, target, image=torch.randn(2, 3, 12, 10)).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- Lovász-softmax


def _iou(pred: torch.Tensor, target: torch.Tensor, c: int) -> float:
    inter = ((pred == c) & (target == c)).sum().item()
    union = ((pred == c) | (target == c)).sum().item()
    return inter / union


def test_lovasz_equals_one_minus_iou_for_hard_predictions() -> None:
    # The Lovász extension agrees with the set function on the cube's vertices: for (numerically) hard
    # probabilities the loss is exactly the mean over present classes of 1 - IoU of the argmax prediction.
    g = torch.Generator().manual_seed(11)
    target = torch.randint(0, 2, (2, 9, 7), generator=g)
    pred = torch.where(torch.rand(2, 9, 7, generator=g) < 0.2, 1 - target, target)  # ~20 % of pixels wrong
    logits = torch.stack([(pred == 0).float(), (pred == 1).float()], dim=1) * 60.0
    expected = 1.0 - (_iou(pred, target, 0) + _iou(pred, target, 1)) / 2
    assert LovaszSoftmaxLoss()(logits, target).item() == pytest.approx(expected, abs=1e-5)
    # a perfect prediction costs nothing
    perfect = torch.stack([(target == 0).float(), (target == 1).float()], dim=1) * 60.0
    assert LovaszSoftmaxLoss()(perfect, target).item() == pytest.approx(0.0, abs=1e-6)


def test_lovasz_skips_ignored_pixels_and_absent_classes() -> None:
    logits, target = _random_batch(seed=12)
    loss = LovaszSoftmaxLoss(ignore_index=IGNORE)
    padded_target = target.clone()
    padded_target[:, :, 7:] = IGNORE
    wild_logits = logits.clone()
    wild_logits[:, :, :, 7:] = 100.0 * torch.randn_like(wild_logits[:, :, :, 7:])  # anything under the padding
    cropped = loss(logits[..., :7], target[..., :7])
    assert torch.allclose(loss(wild_logits, padded_target), cropped, atol=1e-6)
    # no hair in the batch: only the background term counts (a hair-free batch never asks for hair IoU)
    no_hair = torch.zeros_like(target)
    bg_only = torch.stack(
        [torch.full_like(target, 30.0, dtype=torch.float32), torch.zeros_like(target, dtype=torch.float32)], 1
    )
    assert loss(bg_only, no_hair).item() == pytest.approx(0.0, abs=1e-6)
    # an all-ignored batch is a no-op that still backpropagates zeros, not NaN
    logits.requires_grad_(True)
    value = loss(logits, torch.full_like(target, IGNORE))
    value.backward()
    assert value.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_segloss_adds_weighted_lovasz_and_its_gradients_flow() -> None:
    logits, target = _random_batch(seed=13)
    logits.requires_grad_(True)
    loss = build_loss("ce", lovasz_weight=0.5)
    parts = loss.components(logits, target)
    expected = CrossEntropyLoss()(logits, target) + 0.5 * LovaszSoftmaxLoss()(logits, target)
    assert torch.allclose(parts["total"], expected, atol=1e-6)
    assert parts["lovasz"].item() > 0
    parts["total"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert build_loss("ce").components(logits, target)["lovasz"].item() == 0.0  # off by default, as in the paper
    with pytest.raises(ValueError, match="lovasz_weight must be >= 0"):
        SegLoss(CrossEntropyLoss(), lovasz_weight=-1.0)


def test_mixed_loss() -> None:
    logits, y_a = _random_batch(seed=8)
    y_b = y_a.flip(0)
    image = torch.randn(2, 3, 12, 10)
    loss = build_loss("ce", gc_weight=0.2)
    plain = loss(logits, y_a, image=image)
    assert torch.equal(mixed_loss(loss, logits, y_a, y_b, 1.0, image=image), plain)
    lam = 0.3
    expected = lam * plain + (1 - lam) * loss(logits, y_b, image=image)
    assert torch.allclose(mixed_loss(loss, logits, y_a, y_b, lam, image=image), expected)
    # For CE, the mixed loss equals CE against the blended soft mask.
    soft = lam * F.one_hot(y_a, 2) + (1 - lam) * F.one_hot(y_b, 2)
    soft_ce = -(soft.permute(0, 3, 1, 2) * F.log_softmax(logits, dim=1)).sum(1).mean()
    assert torch.allclose(mixed_loss(CrossEntropyLoss(), logits, y_a, y_b, lam), soft_ce, atol=1e-5)
    with pytest.raises(ValueError, match="lam"):
        mixed_loss(loss, logits, y_a, y_b, 1.5, image=image)
