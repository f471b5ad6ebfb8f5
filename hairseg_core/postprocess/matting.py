"""Alpha matting inside a trimap's unknown band (paper §3.4): Mishima's method and closed-form.

Both solve eq. (11), C = αF + (1 - α)B, for α where the trimap is unknown (128) and keep
α = 1 / 0 exactly on known foreground (255) / background (0).

Mishima (US patent 5,355,174; described in Chuang et al. 2001) is a blue-screen method: it
wraps the background samples and the foreground samples in two closed shells in RGB and reads
α off the position of a pixel's colour between the shells. A natural photo has no single
backdrop colour, so the shells here are *local*: for each unknown pixel, the known foreground
and background pixels inside a ``window``-sized square give two colour spheres (centre = mean
colour, radius = ``sphere_scale`` × RMS distance of the samples from that mean, i.e. a shell
around most of the cluster). The pixel colour is projected onto the line through the two
centres (the least-squares α for eq. (11) given F and B) and α is its relative position
between the two sphere surfaces, clipped to [0, 1]: inside the background sphere α = 0,
inside the foreground sphere α = 1. Where the window holds fewer than ``min_samples`` known
pixels of a class, that class's global statistics are used instead. All window sums come from
one OpenCV box filter, so the cost is O(H·W) whatever the window: ~4 ms at 250x250
(benchmarks/README.md).

Closed-form matting (Levin et al. 2008) is delegated to pymatting; it is far slower (a sparse
linear solve) but propagates α along local colour-line structure instead of per-pixel
colour distances.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pymatting

from hairseg_core.builders import Registry
from hairseg_core.postprocess.crf import check_rgb_image
from hairseg_core.postprocess.trimap import BACKGROUND, FOREGROUND, check_trimap

MattingFn = Callable[..., np.ndarray]

# name -> function(image uint8 HxWx3, trimap uint8 HxW, **params) -> alpha float32 HxW
MATTING: Registry[np.ndarray] = Registry("matting method")


def _split(image: np.ndarray, trimap: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate inputs and return (image, fg mask, bg mask)."""
    image = check_rgb_image(image, where)
    trimap = check_trimap(trimap, image.shape[:2], where)
    fg, bg = trimap == FOREGROUND, trimap == BACKGROUND
    if not (fg.any() or bg.any()):
        raise ValueError(f"{where}: trimap has no known pixels (all unknown); nothing to propagate from")
    return image, fg, bg


def _trivial_alpha(fg: np.ndarray, bg: np.ndarray) -> np.ndarray | None:
    """α when the unknown band is empty or only one class is known; None when a solve is needed.

    With no known foreground there is no evidence of a foreground colour, so α = 0 in the band
    (it is also the exact closed-form solution); symmetrically α = 1 with no known background.
    This is how matting 'eliminates small hair regions' (paper §6) that erode away entirely.
    """
    alpha = fg.astype(np.float32)
    unknown = ~(fg | bg)
    if not unknown.any() or not fg.any():
        return alpha
    if not bg.any():
        alpha[unknown] = 1.0
        return alpha
    return None


def _check_params(where: str, **checks: tuple[float, float, float]) -> None:
    """Each check is name=(value, low, high) with low <= value <= high required."""
    for name, (value, low, high) in checks.items():
        if not low <= value <= high:
            raise ValueError(f"{where}: {name} must lie in [{low}, {high}], got {value!r}")


@MATTING.register("mishima")
def mishima_matting(
    image: np.ndarray,
    trimap: np.ndarray,
    *,
    window: int = 31,
    sphere_scale: float = 1.0,
    max_fill: float = 0.9,
    min_samples: int = 10,
    min_separation: float = 1.0,
) -> np.ndarray:
    """Mishima-style α matte (float32 HxW in [0, 1]) with local colour spheres; see module doc.

    ``window`` (odd, pixels) should exceed the trimap band width so most unknown pixels see
    both classes. ``max_fill`` caps the summed sphere radii at that fraction of the centre
    distance: where the clusters overlap the matte becomes steep instead of undefined.
    Where the two centres are closer than ``min_separation`` colour units the colours carry no
    information and α = 0.5.
    """
    where = "mishima_matting"
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 3 or window % 2 == 0:
        raise ValueError(f"{where}: window must be an odd int >= 3, got {window!r}")
    _check_params(
        where,
        sphere_scale=(sphere_scale, 0.0, 10.0),
        max_fill=(max_fill, 0.0, 0.99),
        min_samples=(min_samples, 1, window * window),
        min_separation=(min_separation, 1e-6, 442.0),
    )
    image, fg, bg = _split(image, trimap, where)
    trivial = _trivial_alpha(fg, bg)
    if trivial is not None:
        return trivial

    ys, xs = np.nonzero(~(fg | bg))
    sums = _window_sums(image, fg, bg, ys, xs, window)
    f_mean, r_f = _class_spheres(image, fg, sums[:, :5], min_samples, sphere_scale)
    b_mean, r_b = _class_spheres(image, bg, sums[:, 5:], min_samples, sphere_scale)
    pixels = image[ys, xs].astype(np.float64)
    alpha = fg.astype(np.float32)
    alpha[ys, xs] = _alpha_between_spheres(pixels, f_mean, r_f, b_mean, r_b, max_fill, min_separation)
    return alpha


def _window_sums(
    image: np.ndarray, fg: np.ndarray, bg: np.ndarray, ys: np.ndarray, xs: np.ndarray, window: int
) -> np.ndarray:
    """Per unknown pixel (``ys``, ``xs``), sums over its window: [n, Σr, Σg, Σb, Σ|c|²] of the known
    foreground, then the same of the known background (N x 10).

    One box filter over all ten channels, and only over the part of the image that windows around
    unknown pixels can reach: O(H·W) whatever the window.
    """
    half = window // 2
    y0, y1 = max(int(ys.min()) - half, 0), min(int(ys.max()) + half + 1, image.shape[0])
    x0, x1 = max(int(xs.min()) - half, 0), min(int(xs.max()) + half + 1, image.shape[1])
    crop = image[y0:y1, x0:x1].astype(np.float64)
    sq = np.einsum("hwc,hwc->hw", crop, crop)
    fg_c, bg_c = fg[y0:y1, x0:x1].astype(np.float64), bg[y0:y1, x0:x1].astype(np.float64)
    stack = np.concatenate(
        [
            fg_c[..., None],
            crop * fg_c[..., None],
            (sq * fg_c)[..., None],
            bg_c[..., None],
            crop * bg_c[..., None],
            (sq * bg_c)[..., None],
        ],
        axis=2,
    )
    sums = cv2.boxFilter(stack, -1, (window, window), normalize=False, borderType=cv2.BORDER_CONSTANT)
    return sums[ys - y0, xs - x0]


def _class_spheres(
    image: np.ndarray, mask: np.ndarray, local: np.ndarray, min_samples: int, sphere_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """One class's colour sphere per unknown pixel: (centres N x 3, radii N) from its window sums ``local``
    (N x 5), or from the class's global statistics where the window holds fewer than ``min_samples``."""
    colours = image[mask].astype(np.float64)
    global_sums = np.concatenate([[len(colours)], colours.sum(0), [np.einsum("nc,nc->", colours, colours)]])
    local = np.where((local[:, :1] >= min_samples), local, global_sums[None, :])
    mean = local[:, 1:4] / local[:, :1]
    var = local[:, 4] / local[:, 0] - np.einsum("nc,nc->n", mean, mean)
    return mean, sphere_scale * np.sqrt(np.maximum(var, 0.0))


def _alpha_between_spheres(
    pixels: np.ndarray,
    f_mean: np.ndarray,
    r_f: np.ndarray,
    b_mean: np.ndarray,
    r_b: np.ndarray,
    max_fill: float,
    min_separation: float,
) -> np.ndarray:
    """α of each pixel: its projection on the B→F centre line, placed between the two sphere surfaces.

    Radii are shrunk so they fill at most ``max_fill`` of the centre distance (overlapping clusters give
    a steep matte, not an undefined one); centres closer than ``min_separation`` give α = 0.5.
    """
    axis = f_mean - b_mean
    length = np.sqrt(np.einsum("nc,nc->n", axis, axis))
    safe_len = np.maximum(length, min_separation)
    along = np.einsum("nc,nc->n", pixels - b_mean, axis) / safe_len  # distance from B towards F
    shrink = np.minimum(1.0, max_fill * length / np.maximum(r_f + r_b, 1e-12))
    r_f, r_b = r_f * shrink, r_b * shrink
    alpha_u = np.clip((along - r_b) / np.maximum(length - r_f - r_b, 1e-12), 0.0, 1.0)
    return np.where(length < min_separation, 0.5, alpha_u)


@MATTING.register("closed_form")
def closed_form_matting(image: np.ndarray, trimap: np.ndarray, *, epsilon: float = 1e-7, radius: int = 1) -> np.ndarray:
    """Closed-form α matte (Levin et al.) via ``pymatting.estimate_alpha_cf``; float32 HxW in [0, 1].

    ``epsilon``/``radius`` are the matting Laplacian's regulariser and window radius.
    """
    where = "closed_form_matting"
    _check_params(where, epsilon=(epsilon, 0.0, 1.0))
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 1:
        raise ValueError(f"{where}: radius must be an int >= 1, got {radius!r}")
    image, fg, bg = _split(image, trimap, where)
    trivial = _trivial_alpha(fg, bg)
    if trivial is not None:
        return trivial
    unknown = ~(fg | bg)
    # The Laplacian couples pixels that share a (2r+1)^2 window. If no known foreground pixel is
    # that close to the band, the right-hand side is zero, the exact answer is α = 0 there, and
    # pymatting's CG would divide 0 by 0; answer directly instead.
    reach = cv2.dilate(fg.view(np.uint8), np.ones((4 * radius + 1, 4 * radius + 1), np.uint8))
    if not (reach.view(bool) & unknown).any():
        return fg.astype(np.float32)
    trimap01 = np.where(fg, 1.0, np.where(bg, 0.0, 0.5))
    try:
        alpha = pymatting.estimate_alpha_cf(
            image.astype(np.float64) / 255.0,
            trimap01,
            laplacian_kwargs={"epsilon": float(epsilon), "radius": int(radius)},
        )
    except ValueError as err:  # pymatting reports CG non-convergence as ValueError
        raise RuntimeError(f"{where}: pymatting failed on a {image.shape[:2]} image: {err}") from err
    return alpha.astype(np.float32)
