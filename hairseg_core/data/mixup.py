"""Batch-level mixup (paper §3.2, §5.3): blend images, keep both hard masks for the loss.

``x̃ = λ x_i + (1 − λ) x_j`` with ``λ ~ Beta(α, α)`` and ``j`` a random permutation of the batch. The
paper mixes masks only for display; the loss is ``λ·L(ŷ, y_a) + (1 − λ)·L(ŷ, y_b)``
(:func:`hairseg_core.train.losses.mixed_loss`), which keeps ignore pixels (255) meaningful and equals CE
against the blended soft mask.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["mixup_batch", "sample_lambda"]

RandomSource = np.random.Generator | torch.Generator | int | None


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"mixup: alpha must be a finite number >= 0 (0 disables mixup), got {alpha}")
    return alpha


def sample_lambda(alpha: float, rng: RandomSource = None) -> float:
    """Draw ``λ ~ Beta(α, α)``; ``α = 0`` means no mixup and returns exactly 1.0.

    ``rng`` may be a numpy Generator, a torch Generator, an int seed or None (fresh entropy). torch's
    Beta sampler cannot take a Generator, so a torch Generator is used to seed a numpy one: the draw is
    then reproducible from the same torch seed that also drives the batch permutation.
    """
    alpha = _check_alpha(alpha)
    if alpha == 0.0:
        return 1.0
    if isinstance(rng, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=rng, device=rng.device).item())
        rng = np.random.default_rng(seed)
    elif not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    return float(np.clip(rng.beta(alpha, alpha), 0.0, 1.0))


def mixup_batch(
    images: Tensor,
    masks: Tensor,
    alpha: float,
    generator: torch.Generator | int | None = None,
) -> tuple[Tensor, Tensor, Tensor, float]:
    """Mix a batch with a shuffled copy of itself: returns ``(mixed_images, y_a, y_b, lam)``.

    ``images`` is ``[B, C, H, W]`` float, ``masks`` is ``[B, H, W]``. ``y_a`` is ``masks``, ``y_b`` is
    ``masks`` in the partner order. ``α = 0`` returns the inputs untouched with ``y_b = y_a`` and
    ``λ = 1.0``, so training code needs no separate no-mixup branch. Deterministic for a given
    torch Generator or int seed.
    """
    alpha = _check_alpha(alpha)
    if images.ndim != 4 or masks.ndim != 3 or images.shape[0] != masks.shape[0]:
        raise ValueError(
            f"mixup_batch: expected images [B, C, H, W] and masks [B, H, W] with the same B, got "
            f"{tuple(images.shape)} and {tuple(masks.shape)}"
        )
    if not images.is_floating_point():
        raise ValueError(f"mixup_batch: images must be a float tensor, got {images.dtype}")
    if alpha == 0.0:
        return images, masks, masks, 1.0
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    lam = sample_lambda(alpha, generator)
    device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(images.shape[0], generator=generator, device=device).to(images.device)
    mixed = lam * images + (1.0 - lam) * images[perm]
    return mixed, masks, masks[perm.to(masks.device)], lam
