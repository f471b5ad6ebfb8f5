"""Segmentation metrics of paper §5.1 (Acc, Acc_class, mIoU, fwIoU) plus a hair boundary F-score.

All metrics are *streaming*: call ``update`` once per batch and ``compute`` at the end of the epoch, so
dataset-level scores come from summed counts (not from averaging per-batch scores, which would weight a
batch of small images like a batch of large ones). Inputs are integer label maps, ``[B, H, W]`` or
``[H, W]``, as torch tensors or numpy arrays; pixels whose *target* is ``ignore_index`` (crop padding)
count nowhere. Scores are fractions in [0, 1].

The confusion matrix is indexed ``cm[true, pred]``: row sums are ground-truth pixel counts per class.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

__all__ = [
    "BoundaryFScore",
    "ConfusionMatrix",
    "SegmentationMetrics",
    "boundary_map",
    "scores_from_confusion",
]

LabelArray = np.ndarray | torch.Tensor


def scores_from_confusion(cm: np.ndarray) -> dict[str, float]:
    """Acc, Acc_class, mIoU and fwIoU from a ``[C, C]`` confusion matrix ``cm[true, pred]`` (§5.1).

    * ``acc``       = trace / total
    * ``acc_class`` = mean_i diag_i / row_i            (classes with no true pixels are skipped)
    * ``miou``      = mean_i diag_i / (row_i + col_i − diag_i)  (classes absent from both are skipped)
    * ``fwiou``     = Σ_i freq_i · IoU_i with freq_i = row_i / total (classes with freq 0 add nothing)

    An empty matrix gives NaN everywhere: there is nothing to score, and 0 would look like a real result.
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"scores_from_confusion: expected a square [C, C] matrix, got shape {cm.shape}")
    total = cm.sum()
    if total == 0:
        nan = float("nan")
        return {"acc": nan, "acc_class": nan, "miou": nan, "fwiou": nan}
    diag = np.diag(cm)
    rows = cm.sum(axis=1)
    cols = cm.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc_per_class = diag / rows
        iou = diag / (rows + cols - diag)
    freq = rows / total
    present = freq > 0
    return {
        "acc": float(diag.sum() / total),
        "acc_class": float(np.nanmean(acc_per_class)),
        "miou": float(np.nanmean(iou)),
        "fwiou": float((freq[present] * iou[present]).sum()),
    }


def _as_numpy_labels(x: LabelArray, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim not in (2, 3):
        raise ValueError(f"metrics: {name} must be [B, H, W] or [H, W] labels, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.integer) and x.dtype != np.bool_:
        raise ValueError(f"metrics: {name} must hold integer class labels, got dtype {x.dtype}")
    return x.astype(np.int64, copy=False)


class ConfusionMatrix:
    """Streaming ``[C, C]`` confusion matrix ``cm[true, pred]`` built with one bincount per update."""

    def __init__(self, num_classes: int = 2, ignore_index: int = 255) -> None:
        if num_classes < 2:
            raise ValueError(f"ConfusionMatrix: num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def reset(self) -> None:
        self.matrix[:] = 0

    def update(self, pred: LabelArray, target: LabelArray) -> None:
        """Add a batch. GPU tensors are counted on their device (only the C×C result is copied back);
        CPU tensors go through numpy, whose bincount is ~4× faster than torch's masked path on CPU."""
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(
                f"ConfusionMatrix.update: pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}"
            )
        if len(pred.shape) not in (2, 3):
            raise ValueError(f"ConfusionMatrix.update: expected [B, H, W] or [H, W], got {tuple(pred.shape)}")
        on_device = isinstance(pred, torch.Tensor) and isinstance(target, torch.Tensor) and target.device.type != "cpu"
        counts = self._counts_torch(pred, target) if on_device else self._counts_numpy(pred, target)
        self.matrix += counts.reshape(self.num_classes, self.num_classes)

    def _counts_torch(self, pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
        if pred.is_floating_point() or target.is_floating_point():
            raise ValueError(
                "ConfusionMatrix.update: pred and target must be integer labels (argmax the logits "
                f"first), got dtypes {pred.dtype} / {target.dtype}"
            )
        n = self.num_classes
        t = target.reshape(-1).long()
        p = pred.reshape(-1).to(t.device).long()
        keep = t != self.ignore_index
        t, p = t[keep], p[keep]
        self._check_range(t, p)
        return torch.bincount(t * n + p, minlength=n * n).cpu().numpy()

    def _counts_numpy(self, pred: LabelArray, target: LabelArray) -> np.ndarray:
        n = self.num_classes
        t = _as_numpy_labels(target, "target").reshape(-1)
        p = _as_numpy_labels(pred, "pred").reshape(-1)
        keep = t != self.ignore_index
        t, p = t[keep], p[keep]
        self._check_range(t, p)
        return np.bincount(t * n + p, minlength=n * n)

    def _check_range(self, t: LabelArray, p: LabelArray) -> None:
        """Out-of-range labels would silently land in another cell of the flattened bincount."""
        if len(t) == 0:
            return
        lo = min(int(t.min()), int(p.min()))
        hi = max(int(t.max()), int(p.max()))
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(
                f"ConfusionMatrix.update: labels must lie in [0, {self.num_classes}) or equal "
                f"ignore_index={self.ignore_index} (target only); found values in [{lo}, {hi}]"
            )

    def compute(self) -> dict[str, float]:
        return scores_from_confusion(self.matrix)


def boundary_map(labels: np.ndarray, valid: np.ndarray, positive_class: int = 1) -> np.ndarray:
    """Inner boundary of the ``positive_class`` region of one ``[H, W]`` label map.

    A boundary pixel is a positive pixel with at least one *valid* non-positive pixel among its 8
    neighbours. Invalid (ignored) pixels are neither boundary nor a reason for one, and the image frame
    is not an edge (cv2.dilate pads with zeros), so padding never adds boundaries.
    """
    positive = (labels == positive_class) & valid
    negative = (valid & ~positive).astype(np.uint8)
    touches_negative = cv2.dilate(negative, np.ones((3, 3), np.uint8)).astype(bool)
    return positive & touches_negative


class BoundaryFScore:
    """F1 of hair boundary pixels with a distance tolerance, accumulated over the dataset.

    Precision = share of predicted boundary pixels lying within ``tolerance`` px (Euclidean) of a true
    boundary pixel; recall = share of true boundary pixels within ``tolerance`` px of a predicted one.
    Matched and total counts are summed over all images before forming P, R and F, so an image with a
    long boundary weighs more than one with a tiny hair region. mIoU barely moves when an edge is off by
    a few pixels; this score is what shows it.
    """

    def __init__(self, tolerance: float = 2, ignore_index: int = 255, positive_class: int = 1) -> None:
        if tolerance < 0:
            raise ValueError(f"BoundaryFScore: tolerance must be >= 0 px, got {tolerance}")
        self.tolerance = float(tolerance)
        self.ignore_index = ignore_index
        self.positive_class = positive_class
        self.reset()

    def reset(self) -> None:
        self.pred_matched = 0
        self.pred_total = 0
        self.true_matched = 0
        self.true_total = 0

    def _within_tolerance(self, source: np.ndarray, reference: np.ndarray) -> int:
        """Number of ``source`` boundary pixels within tolerance of any ``reference`` boundary pixel."""
        if not source.any() or not reference.any():
            return 0
        # distanceTransform measures the distance to the nearest zero pixel: make reference pixels zero.
        dist = cv2.distanceTransform((~reference).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        return int((dist[source] <= self.tolerance + 1e-6).sum())

    def update(self, pred: LabelArray, target: LabelArray) -> None:
        pred_np = _as_numpy_labels(pred, "pred")
        target_np = _as_numpy_labels(target, "target")
        if pred_np.shape != target_np.shape:
            raise ValueError(f"BoundaryFScore.update: pred shape {pred_np.shape} != target {target_np.shape}")
        if pred_np.ndim == 2:
            pred_np, target_np = pred_np[None], target_np[None]
        for p, t in zip(pred_np, target_np, strict=True):
            valid = t != self.ignore_index
            pred_b = boundary_map(p, valid, self.positive_class)
            true_b = boundary_map(t, valid, self.positive_class)
            self.pred_total += int(pred_b.sum())
            self.true_total += int(true_b.sum())
            self.pred_matched += self._within_tolerance(pred_b, true_b)
            self.true_matched += self._within_tolerance(true_b, pred_b)

    def precision_recall(self) -> tuple[float, float]:
        """(precision, recall); an empty side gives NaN for its ratio."""
        precision = self.pred_matched / self.pred_total if self.pred_total else float("nan")
        recall = self.true_matched / self.true_total if self.true_total else float("nan")
        return precision, recall

    def compute(self) -> float:
        """Boundary F1. No boundary in either prediction or target → 1.0 (they agree); one side only → 0."""
        if self.pred_total == 0 and self.true_total == 0:
            return 1.0
        if self.pred_total == 0 or self.true_total == 0:
            return 0.0
        precision, recall = self.precision_recall()
        if precision + recall == 0:
            return 0.0
        return 2.0 * precision * recall / (precision + recall)


class SegmentationMetrics:
    """Confusion-matrix scores and boundary F in one object: ``update`` per batch, ``compute`` per epoch."""

    def __init__(self, num_classes: int = 2, ignore_index: int = 255, boundary_tolerance: float = 2) -> None:
        self.confusion = ConfusionMatrix(num_classes=num_classes, ignore_index=ignore_index)
        self.boundary = BoundaryFScore(tolerance=boundary_tolerance, ignore_index=ignore_index)

    def reset(self) -> None:
        self.confusion.reset()
        self.boundary.reset()

    def update(self, pred: LabelArray, target: LabelArray) -> None:
        self.confusion.update(pred, target)
        self.boundary.update(pred, target)

    def compute(self) -> dict[str, float]:
        """``{"acc", "acc_class", "miou", "fwiou", "boundary_f"}`` as fractions in [0, 1]."""
        scores = self.confusion.compute()
        scores["boundary_f"] = self.boundary.compute()
        return scores
