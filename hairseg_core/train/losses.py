"""Segmentation losses of paper §3.3: cross-entropy, α-balanced focal loss and gradient consistency.

Conventions shared with the rest of the package: logits are ``[B, C, H, W]`` with ``C == 2`` (class 1 =
hair) and targets are ``LongTensor [B, H, W]`` holding 0 (background), 1 (hair) or ``ignore_index`` (255,
the padding added by crops). Every loss averages over non-ignored pixels only, so padding never pulls the
model towards "background".

``LOSSES`` maps the names a search space uses ("ce", "focal") to builders of the pixel-wise mask loss
``L_M``; :func:`build_loss` wraps one of them together with the optional gradient-consistency term into
``L = L_M + w · L_C`` (paper §3.3), and optionally a Lovász-softmax term ``w_L · L_Lovász`` (Berman et al.,
CVPR 2018), a convex surrogate of the IoU itself: it weighs each wrong pixel by how much it costs the
Jaccard index, which cross-entropy does not, and most of a hair model's errors lie on the hair's border.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hairseg_core.builders import Registry
from hairseg_core.imagenet import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LOSSES",
    "CrossEntropyLoss",
    "FocalLoss",
    "GradientConsistencyLoss",
    "LovaszSoftmaxLoss",
    "SegLoss",
    "build_loss",
    "mixed_loss",
    "sobel_gradients",
]

# ITU-R BT.601 luma weights: the usual "grayscale" of an RGB image.
_LUMA: tuple[float, float, float] = (0.299, 0.587, 0.114)

LOSSES: Registry[nn.Module] = Registry("loss")


def _check_logits_target(logits: Tensor, target: Tensor) -> None:
    """Fail early with shapes in the message; a silent broadcast here would train on garbage."""
    if logits.ndim != 4:
        raise ValueError(f"losses: logits must be [B, C, H, W], got shape {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(f"losses: logits need at least 2 classes (class 1 = hair), got C={logits.shape[1]}")
    if target.ndim != 3 or target.shape[0] != logits.shape[0] or target.shape[1:] != logits.shape[2:]:
        raise ValueError(
            f"losses: target must be [B, H, W] matching logits {tuple(logits.shape)}, got {tuple(target.shape)}"
        )


def _masked_mean(per_pixel: Tensor, valid: Tensor) -> Tensor:
    """Mean over valid pixels; 0 (still attached to the graph) when a batch is entirely ignored.

    ``F.cross_entropy`` returns NaN for an all-ignored batch, which would poison the optimiser state
    for the rest of a trial; returning 0 makes such a batch a no-op instead.
    """
    count = valid.sum()
    return (per_pixel * valid).sum() / count.clamp_min(1)


@LOSSES.register("ce")
class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy over the class logits (eq. 5: with ``C == 2`` it is the paper's BCE)."""

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check_logits_target(logits, target)
        per_pixel = F.cross_entropy(logits.float(), target, ignore_index=self.ignore_index, reduction="none")
        return _masked_mean(per_pixel, target != self.ignore_index)


@LOSSES.register("focal")
class FocalLoss(nn.Module):
    """α-balanced focal loss, eq. 9: ``FL = -α_t (1 - p_t)^γ log p_t``.

    ``α_t`` is ``alpha`` for the hair class (1) and ``1 - alpha`` for every other class, as in Lin et
    al.; ``alpha=None`` drops the balancing factor (eq. 8). ``p_t`` is the softmax probability of the
    true class, so with ``C == 2`` this is exactly the binary formulation of the paper.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = 0.25, ignore_index: int = 255) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"FocalLoss: gamma must be >= 0, got {gamma}")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"FocalLoss: alpha must lie in [0, 1] or be None, got {alpha}")
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check_logits_target(logits, target)
        valid = target != self.ignore_index
        # Ignored pixels get a dummy class so gather stays in range; their loss is masked out below.
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        log_p = F.log_softmax(logits.float(), dim=1)
        log_pt = log_p.gather(1, safe_target.unsqueeze(1)).squeeze(1)
        per_pixel = -log_pt
        if self.gamma != 0.0:
            # (1 - p_t) computed as -expm1(log p_t): accurate when p_t -> 1, i.e. for the easy pixels
            # whose contribution the modulating factor is meant to shrink.
            per_pixel = per_pixel * (-torch.expm1(log_pt)).clamp_min(0.0).pow(self.gamma)
        if self.alpha is not None:
            alpha_t = torch.where(safe_target == 1, self.alpha, 1.0 - self.alpha)
            per_pixel = per_pixel * alpha_t
        return _masked_mean(per_pixel, valid)


def sobel_gradients(x: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel x/y derivatives of a ``[B, 1, H, W]`` map, same size (replicate padding, scaled by 1/8).

    Replicate padding keeps the frame of the image from looking like an edge; the 1/8 scale makes the
    result a per-pixel derivative, which only matters for how ``eps`` compares with real gradients.
    The separable form (central difference, then [1, 2, 1] smoothing) built from slices is several
    times faster than a 3×3 ``conv2d`` on CPU, forward and backward, and identical in value.
    """
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dx = p[..., :, 2:] - p[..., :, :-2]  # [B, 1, H + 2, W]
    dy = p[..., 2:, :] - p[..., :-2, :]  # [B, 1, H, W + 2]
    gx = (dx[..., :-2, :] + 2.0 * dx[..., 1:-1, :] + dx[..., 2:, :]) / 8.0
    gy = (dy[..., :, :-2] + 2.0 * dy[..., :, 1:-1] + dy[..., :, 2:]) / 8.0
    return gx, gy


class GradientConsistencyLoss(nn.Module):
    """Mask-image gradient consistency, eq. 10 with unit-normalised gradients and ignored padding.

    ``L_C = Σ M_mag [1 - (I_x M_x + I_y M_y)^2] / Σ M_mag`` where ``(I_x, I_y)`` and ``(M_x, M_y)`` are
    the Sobel gradients of the grayscale image and of the predicted hair probability, each scaled to a
    unit vector, and ``M_mag`` is the magnitude of the (unnormalised) mask gradient. The term is 0 where
    the predicted edge is parallel to an image edge (either contrast polarity, hence the square) and
    ``M_mag`` where the prediction has an edge the image does not. Sums run over the whole batch.

    Pixels whose 3×3 Sobel window touches an ignored pixel are dropped: their gradients would see the
    artificial edge between image and padding, and logits on padding must not influence the loss.

    ``eps`` (default 1e-8) stabilises both normalisations: image gradients well below ``sqrt(eps)`` =
    1e-4 per pixel (gray in [0, 1]; a single 8-bit step gives ~2e-3) count as "no edge", so a
    predicted edge over a flat region costs its full ``M_mag``. ``std`` is the per-channel std the
    input was normalised with (ImageNet by default).
    """

    def __init__(
        self,
        ignore_index: int = 255,
        eps: float = 1e-8,
        std: Sequence[float] = IMAGENET_STD,
        hair_class: int = 1,
    ) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"GradientConsistencyLoss: eps must be > 0, got {eps}")
        if len(std) != 3:
            raise ValueError(f"GradientConsistencyLoss: std needs 3 values (one per RGB channel), got {std!r}")
        self.ignore_index = ignore_index
        self.eps = float(eps)
        self.hair_class = hair_class
        # Grayscale of the *un*-normalised image: gray = Σ_c luma_c (x_c std_c + mean_c)
        #                                              = Σ_c (luma_c std_c) x_c + const.
        # The constant has no gradient, so only the per-channel weights are needed (no ``mean``).
        weights = torch.tensor([w * s for w, s in zip(_LUMA, std, strict=True)]).view(1, 3, 1, 1)
        self.register_buffer("gray_weights", weights, persistent=False)

    def grayscale(self, image: Tensor) -> Tensor:
        """``[B, 3, H, W]`` normalised RGB → ``[B, 1, H, W]`` luma (up to an additive constant)."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"GradientConsistencyLoss: image must be [B, 3, H, W], got {tuple(image.shape)}")
        return (image.float() * self.gray_weights.to(image.device)).sum(dim=1, keepdim=True)

    def forward(self, logits: Tensor, image: Tensor, target: Tensor | None = None) -> Tensor:
        """``target`` is only used for its ignore pixels; pass None when there is no padding."""
        if logits.ndim != 4 or image.ndim != 4 or image.shape[0] != logits.shape[0]:
            raise ValueError(
                f"GradientConsistencyLoss: logits {tuple(logits.shape)} and image {tuple(image.shape)} "
                "must both be [B, C, H, W] with the same B"
            )
        if image.shape[2:] != logits.shape[2:]:
            raise ValueError(
                f"GradientConsistencyLoss: image size {tuple(image.shape[2:])} differs from logits size "
                f"{tuple(logits.shape[2:])}; upsample the logits to the input resolution first"
            )
        prob = torch.softmax(logits.float(), dim=1)[:, self.hair_class : self.hair_class + 1]
        with torch.no_grad():
            ix, iy = sobel_gradients(self.grayscale(image.detach()))
            inorm = torch.sqrt(ix * ix + iy * iy + self.eps)
            ix, iy = ix / inorm, iy / inorm
            if target is None:
                valid = torch.ones_like(prob)
            else:
                _check_logits_target(logits, target)
                ignored = (target == self.ignore_index).unsqueeze(1).float()
                valid = 1.0 - F.max_pool2d(ignored, kernel_size=3, stride=1, padding=1)
        mx, my = sobel_gradients(prob)
        m_mag = torch.sqrt(mx * mx + my * my + self.eps)
        cos = (ix * mx + iy * my) / m_mag
        numerator = (valid * m_mag * (1.0 - cos * cos)).sum()
        denominator = (valid * m_mag).sum()
        return numerator / denominator.clamp_min(self.eps)


def lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. errors sorted in decreasing order.

    ``gt_sorted`` is the 0/1 ground truth of one class, in the order of decreasing error. Entry ``i`` is
    how much the Jaccard loss grows when the ``i``-th worst pixel is added to the set of mistakes
    (Berman et al. 2018, Alg. 1).
    """
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
    return jaccard


class LovaszSoftmaxLoss(nn.Module):
    """Lovász-softmax (Berman et al., CVPR 2018): a tight convex surrogate of ``1 - IoU`` per class.

    Computed over every valid pixel of the batch at once (not per image): the product's metric is a data
    set's mIoU, one confusion matrix over all images, and a batch is the closest sample of it. Classes
    absent from the batch's target are skipped ("present" mode), so a batch with no hair does not ask
    for hair IoU. Ignored pixels (``ignore_index``, the crop padding) take no part.
    """

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        _check_logits_target(logits, target)
        num_classes = logits.shape[1]
        prob = torch.softmax(logits.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, num_classes)
        labels = target.reshape(-1)
        valid = labels != self.ignore_index
        prob, labels = prob[valid], labels[valid]
        terms = []
        for c in range(num_classes):
            fg = (labels == c).float()
            if fg.sum() == 0:
                continue
            errors = (fg - prob[:, c]).abs()
            errors_sorted, order = torch.sort(errors, descending=True)
            terms.append(torch.dot(errors_sorted, lovasz_grad(fg[order])))
        if not terms:  # an all-ignored batch: a no-op, still attached to the graph (see _masked_mean)
            return logits.float().sum() * 0.0
        return torch.stack(terms).mean()


class SegLoss(nn.Module):
    """``L = L_M + w · L_C + w_L · L_Lovász``: paper §3.3's mask loss and optional gradient-consistency term,
    plus an optional Lovász-softmax term (the IoU surrogate; 0 by default, as in the paper)."""

    def __init__(
        self,
        mask_loss: nn.Module,
        gc_weight: float = 0.0,
        gc_loss: GradientConsistencyLoss | None = None,
        lovasz_weight: float = 0.0,
        lovasz_loss: LovaszSoftmaxLoss | None = None,
    ) -> None:
        super().__init__()
        if gc_weight < 0:
            raise ValueError(f"SegLoss: gc_weight must be >= 0, got {gc_weight}")
        if lovasz_weight < 0:
            raise ValueError(f"SegLoss: lovasz_weight must be >= 0, got {lovasz_weight}")
        self.mask_loss = mask_loss
        self.gc_weight = float(gc_weight)
        self.gc_loss = gc_loss if gc_loss is not None else GradientConsistencyLoss()
        self.lovasz_weight = float(lovasz_weight)
        self.lovasz_loss = lovasz_loss if lovasz_loss is not None else LovaszSoftmaxLoss()

    def components(self, logits: Tensor, target: Tensor, image: Tensor | None = None) -> dict[str, Tensor]:
        """Return ``{"mask", "gc", "lovasz", "total"}`` so training can log the terms separately."""
        mask_term = self.mask_loss(logits, target)
        if self.gc_weight > 0:
            if image is None:
                raise ValueError(
                    f"SegLoss: gc_weight={self.gc_weight} > 0 needs the input image for the gradient "
                    "consistency term; call loss(logits, target, image=images)"
                )
            gc_term = self.gc_loss(logits, image, target)
        else:
            gc_term = mask_term.new_zeros(())
        lovasz_term = self.lovasz_loss(logits, target) if self.lovasz_weight > 0 else mask_term.new_zeros(())
        total = mask_term + self.gc_weight * gc_term + self.lovasz_weight * lovasz_term
        return {"mask": mask_term, "gc": gc_term, "lovasz": lovasz_term, "total": total}

    def forward(self, logits: Tensor, target: Tensor, image: Tensor | None = None) -> Tensor:
        return self.components(logits, target, image)["total"]


def build_loss(
    name: str = "ce",
    gc_weight: float = 0.0,
    focal_gamma: float = 2.0,
    focal_alpha: float | None = 0.25,
    ignore_index: int = 255,
    lovasz_weight: float = 0.0,
) -> SegLoss:
    """Build the training loss from search-space values; ``name`` is a key of ``LOSSES``."""
    if name == "focal":
        mask_loss = LOSSES.build(name, gamma=focal_gamma, alpha=focal_alpha, ignore_index=ignore_index)
    else:
        mask_loss = LOSSES.build(name, ignore_index=ignore_index)
    return SegLoss(
        mask_loss,
        gc_weight=gc_weight,
        gc_loss=GradientConsistencyLoss(ignore_index=ignore_index),
        lovasz_weight=lovasz_weight,
        lovasz_loss=LovaszSoftmaxLoss(ignore_index=ignore_index),
    )


def mixed_loss(
    loss_fn: nn.Module,
    logits: Tensor,
    y_a: Tensor,
    y_b: Tensor,
    lam: float,
    image: Tensor | None = None,
) -> Tensor:
    """Mixup-aware loss ``λ·L(ŷ, y_a) + (1 − λ)·L(ŷ, y_b)`` for a :class:`SegLoss` or a mask loss.

    The masks are never blended (paper §5.3): interpolating the two losses is equivalent to training on
    the soft target ``λ y_a + (1 − λ) y_b`` for CE, while each hard mask keeps its own ignore pixels.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"mixed_loss: lam must lie in [0, 1], got {lam}")
    # Plain mask losses (CrossEntropyLoss, FocalLoss) take no image; only pass it when there is one.
    extra = {} if image is None else {"image": image}
    if lam == 1.0:  # mixup disabled (alpha = 0): skip the second, zero-weighted forward
        return loss_fn(logits, y_a, **extra)
    return lam * loss_fn(logits, y_a, **extra) + (1.0 - lam) * loss_fn(logits, y_b, **extra)
