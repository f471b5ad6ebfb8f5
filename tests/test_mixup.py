"""Batch mixup (paper §3.2/§5.3): λ ~ Beta(α, α), images blended, masks kept apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hairseg_core.data.mixup import mixup_batch, sample_lambda


def _batch(b: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, 8, 8, generator=g)
    masks = torch.randint(0, 2, (b, 8, 8), generator=g)
    masks[:, 0, 0] = torch.arange(b)  # makes every mask unique, so the partner can be recovered
    return images, masks


@pytest.mark.parametrize("alpha", [0.2, 0.4, 1.0, 5.0])
def test_lambda_in_unit_interval_and_beta_moments(alpha: float) -> None:
    rng = np.random.default_rng(1)
    lams = np.array([sample_lambda(alpha, rng) for _ in range(4000)])
    assert ((lams >= 0) & (lams <= 1)).all()
    # Beta(α, α) has mean 1/2 and variance 1 / (4 (2α + 1)).
    assert lams.mean() == pytest.approx(0.5, abs=0.03)
    assert lams.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.12)


def test_sample_lambda_sources_and_validation() -> None:
    assert sample_lambda(0.0, None) == 1.0
    assert sample_lambda(0.4, 7) == sample_lambda(0.4, 7)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert sample_lambda(0.4, g1) == sample_lambda(0.4, g2)
    assert sample_lambda(0.4, g1) != sample_lambda(0.4, torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="alpha"):
        sample_lambda(-0.1, None)


def test_alpha_zero_is_identity() -> None:
    images, masks = _batch()
    mixed, y_a, y_b, lam = mixup_batch(images, masks, 0.0, torch.Generator().manual_seed(0))
    assert mixed is images and y_a is masks and y_b is masks and lam == 1.0


def test_mixed_image_is_convex_combination_with_partner() -> None:
    images, masks = _batch()
    mixed, y_a, y_b, lam = mixup_batch(images, masks, 0.4, torch.Generator().manual_seed(5))
    assert 0.0 <= lam <= 1.0 and isinstance(lam, float)
    assert torch.equal(y_a, masks)
    partners = []
    for i in range(len(masks)):
        j = int(y_b[i, 0, 0])  # masks[j, 0, 0] == j by construction
        assert torch.equal(y_b[i], masks[j])
        assert torch.allclose(mixed[i], lam * images[i] + (1 - lam) * images[j], atol=1e-6)
        partners.append(j)
    assert sorted(partners) == list(range(len(masks)))  # a permutation: every sample used once


def test_deterministic_given_seed() -> None:
    images, masks = _batch()
    first = mixup_batch(images, masks, 0.4, torch.Generator().manual_seed(11))
    second = mixup_batch(images, masks, 0.4, torch.Generator().manual_seed(11))
    as_int = mixup_batch(images, masks, 0.4, 11)
    for a, b in ((first, second), (first, as_int)):
        assert a[3] == b[3]
        assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    other = mixup_batch(images, masks, 0.4, torch.Generator().manual_seed(12))
    assert other[3] != first[3]


def test_bad_shapes_raise() -> None:
    images, masks = _batch()
    with pytest.raises(ValueError, match="same B"):
        mixup_batch(images, masks[:3], 0.4)
    with pytest.raises(ValueError, match="float"):
        mixup_batch(images.long(), masks, 0.4)
