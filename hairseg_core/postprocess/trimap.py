"""Trimaps from segmentation output: the input that alpha matting needs.

Matting only solves for opacity where the segmentation is uncertain, so the hard mask is
turned into three regions: sure background (0), sure foreground (255) and an ``unknown`` band
(128) straddling the predicted hair boundary, where the matting algorithm decides.
"""

from __future__ import annotations

import cv2
import numpy as np

BACKGROUND = 0
UNKNOWN = 128
FOREGROUND = 255
_TRIMAP_VALUES = (BACKGROUND, UNKNOWN, FOREGROUND)


def _elliptical_kernel(radius: int) -> np.ndarray:
    """A disc of the given radius, so the band has the same width in every direction."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _to_mask(hair_prob_or_mask: np.ndarray, threshold: float) -> np.ndarray:
    """Binary hair mask (uint8 0/1) from a probability map or an existing mask."""
    x = np.asarray(hair_prob_or_mask)
    if x.ndim != 2:
        raise ValueError(f"make_trimap: expected a HxW hair probability or mask, got shape {x.shape}")
    if x.dtype == np.bool_ or np.issubdtype(x.dtype, np.integer):
        # Integer input is a mask (0/1 or 0/255): any non-zero pixel is hair.
        return (x != 0).view(np.uint8) if x.dtype == np.bool_ else (x != 0).astype(np.uint8)
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"make_trimap: expected a float probability map or a bool/int mask, got {x.dtype}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"make_trimap: threshold must lie in [0, 1], got {threshold}")
    # Strict '>' matches argmax over [bg, hair] softmax scores, where a tie goes to background.
    return (x > threshold).astype(np.uint8)


def make_trimap(hair_prob_or_mask: np.ndarray, width: int = 10, threshold: float = 0.5) -> np.ndarray:
    """Trimap (uint8 HxW: 0 background, 128 unknown, 255 foreground) around the hair boundary.

    ``width`` is the total thickness of the unknown band in pixels across a straight boundary:
    the hair mask is eroded by ``width // 2`` and dilated by ``width - width // 2`` pixels with
    elliptical (disc) kernels, and unknown = dilate(fg) - erode(fg). ``width=0`` gives a hard
    two-level trimap. Float input is thresholded (``p > threshold``); bool/integer input is
    taken as a mask (non-zero = hair).
    """
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 0:
        raise ValueError(f"make_trimap: width must be a non-negative int (pixels), got {width!r}")
    mask = _to_mask(hair_prob_or_mask, threshold)
    trimap = np.where(mask > 0, np.uint8(FOREGROUND), np.uint8(BACKGROUND))
    if width == 0:
        return trimap
    inner, outer = int(width) // 2, int(width) - int(width) // 2
    # BORDER_REPLICATE: the image border is not a hair boundary, so it must not create a band.
    eroded = cv2.erode(mask, _elliptical_kernel(inner), borderType=cv2.BORDER_REPLICATE) if inner else mask
    dilated = cv2.dilate(mask, _elliptical_kernel(outer), borderType=cv2.BORDER_REPLICATE)
    trimap[dilated > 0] = UNKNOWN
    trimap[eroded > 0] = FOREGROUND
    return trimap


def check_trimap(trimap: np.ndarray, shape: tuple[int, int], where: str) -> np.ndarray:
    """Validate a trimap made by :func:`make_trimap` against an image of ``shape`` (H, W).

    ``where`` names the caller so the error says which function got the bad input.
    """
    t = np.asarray(trimap)
    if t.dtype != np.uint8:
        raise TypeError(f"{where}: trimap must be uint8 with values 0/128/255 (see make_trimap), got {t.dtype}")
    if t.shape != tuple(shape):
        raise ValueError(f"{where}: trimap shape {t.shape} does not match the image's HxW {tuple(shape)}")
    bad = (t != BACKGROUND) & (t != UNKNOWN) & (t != FOREGROUND)
    if bad.any():
        raise ValueError(f"{where}: trimap may only hold {_TRIMAP_VALUES}; found {np.unique(t[bad])[:5].tolist()}")
    return t
