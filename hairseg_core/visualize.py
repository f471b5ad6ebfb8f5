"""Pictures people would rather look at than read: prediction overlays and sweep plots."""

from __future__ import annotations

import numpy as np

HAIR_RGB = np.array([255, 40, 160], dtype=np.float32)
MISS_RGB = np.array([255, 220, 0], dtype=np.float32)


def overlay(image: np.ndarray, prob: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Tint hair by its probability (soft, so uncertain edges show as faint colour)."""
    weight = (alpha * np.clip(prob, 0, 1))[..., None]
    return (image.astype(np.float32) * (1 - weight) + HAIR_RGB * weight).astype(np.uint8)


def prediction_panel(image: np.ndarray, mask: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Image | ground truth | prediction overlay | errors, side by side (uint8 RGB).

    Errors: magenta = false hair, yellow = missed hair; ignored pixels (255) are left grey.
    """
    mask = np.asarray(mask)
    truth = overlay(image, (mask == 1).astype(np.float32))
    pred = overlay(image, prob)
    pred_bin = prob >= 0.5
    errors = (image.astype(np.float32) * 0.35).astype(np.uint8)
    valid = mask != 255
    errors[valid & pred_bin & (mask == 0)] = HAIR_RGB.astype(np.uint8)
    errors[valid & ~pred_bin & (mask == 1)] = MISS_RGB.astype(np.uint8)
    errors[~valid] = 128
    gap = np.full((image.shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([image, gap, truth, gap, pred, gap, errors], axis=1)


def stack_rows(panels: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Panels one above the other with a white gap, padded to the widest (uint8 RGB)."""
    width = max(p.shape[1] for p in panels)
    rows: list[np.ndarray] = []
    for i, panel in enumerate(panels):
        if i:
            rows.append(np.full((gap, width, 3), 255, dtype=np.uint8))
        pad = np.full((panel.shape[0], width - panel.shape[1], 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([panel, pad], axis=1))
    return np.concatenate(rows, axis=0)


def metrics_bar_figure(rows: list[dict], metrics: list[str], label_key: str, title: str):
    """Grouped bars of ``metrics`` per row (e.g. the post-processing table)."""
    import matplotlib  # deferred: matplotlib only when drawing a figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after choosing the Agg backend

    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(rows), 3.6))
    width = 0.8 / max(1, len(metrics))
    xs = np.arange(len(rows))
    for i, metric in enumerate(metrics):
        ax.bar(xs + i * width, [r[metric] for r in rows], width, label=metric)
    ax.set_xticks(xs + width * (len(metrics) - 1) / 2, [str(r[label_key]) for r in rows])
    lows = [r[m] for r in rows for m in metrics]
    ax.set_ylim(max(0.0, min(lows) - 0.05), min(1.0, max(lows) + 0.03))
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=len(metrics))
    fig.tight_layout()
    return fig
