"""The browser page's ``flow_ema`` in Python, so ``benchmarks/flicker.py`` can score it beside the app's.

The page (``static/app.js``, ``Smoother``) cannot use OpenCV's DIS flow, so it carries its EMA along a dense
pyramidal Lucas-Kanade flow, and it smooths on the network's output grid (the letterbox crop, ``nh x nw``)
rather than at the frame's resolution. :class:`WebFlowEma` does the same steps with the same constants:
the probability and the frame are brought to the crop size, the grey frame is halved (2x2 mean), the flow
has 3 pyramid levels, 2 iterations per level, a 5x5 window and 1e-2 on the tensor's diagonal; the state is
warped bilinearly (border replicate), blended with momentum 0.8 and resized back to the frame. Only the
order of floating-point operations differs from the JavaScript.
"""

from __future__ import annotations

import cv2
import numpy as np

from hairseg_core.deploy.temporal import Smoother


def _half(img: np.ndarray) -> np.ndarray:
    h, w = img.shape
    hh, hw = max(1, h >> 1), max(1, w >> 1)
    ys0 = np.minimum(2 * np.arange(hh), h - 1)
    ys1 = np.minimum(2 * np.arange(hh) + 1, h - 1)
    xs0 = np.minimum(2 * np.arange(hw), w - 1)
    xs1 = np.minimum(2 * np.arange(hw) + 1, w - 1)
    return 0.25 * (img[ys0][:, xs0] + img[ys0][:, xs1] + img[ys1][:, xs0] + img[ys1][:, xs1])


def _sample(img: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    h, w = img.shape
    xs = np.clip(xs, 0, w - 1).astype(np.float32)
    ys = np.clip(ys, 0, h - 1).astype(np.float32)
    return cv2.remap(img.astype(np.float32), xs, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _box(img: np.ndarray, radius: int) -> np.ndarray:
    size = 2 * radius + 1
    return cv2.boxFilter(img, -1, (size, size), normalize=False, borderType=cv2.BORDER_REPLICATE)


def lk_flow(prev: np.ndarray, cur: np.ndarray, levels: int = 3, iters: int = 2, radius: int = 2) -> np.ndarray:
    """(u, v) per pixel of ``cur``: where it was in ``prev`` (``prev(x + u) ~ cur(x)``), as app.js computes it."""
    pyramid = [(prev.astype(np.float32), cur.astype(np.float32))]
    while len(pyramid) < levels and min(pyramid[-1][0].shape) >= 16:
        pyramid.append((_half(pyramid[-1][0]), _half(pyramid[-1][1])))
    u = v = None
    for p, c in reversed(pyramid):
        h, w = p.shape
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        if u is None:
            u, v = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
        else:
            u, v = 2 * _sample(u, xs / 2, ys / 2), 2 * _sample(v, xs / 2, ys / 2)
        for _ in range(iters):
            warped = _sample(p, xs + u, ys + v)
            right, left = np.minimum(np.arange(w) + 1, w - 1), np.maximum(np.arange(w) - 1, 0)
            down, up = np.minimum(np.arange(h) + 1, h - 1), np.maximum(np.arange(h) - 1, 0)
            ix = 0.5 * (warped[:, right] - warped[:, left])
            iy = 0.5 * (warped[down] - warped[up])
            t = c - warped
            sxx, sxy, syy = _box(ix * ix, radius) + 1e-2, _box(ix * iy, radius), _box(iy * iy, radius) + 1e-2
            sxt, syt = _box(ix * t, radius), _box(iy * t, radius)
            det = sxx * syy - sxy * sxy
            ok = det >= 1e-6
            safe = np.where(ok, det, 1.0)
            u = u + np.where(ok, (syy * sxt - sxy * syt) / safe, 0.0).astype(np.float32)
            v = v + np.where(ok, (sxx * syt - sxy * sxt) / safe, 0.0).astype(np.float32)
    return np.stack([u, v], axis=-1)


class WebFlowEma(Smoother):
    """The page's ``flow_ema`` (see the module docstring); ``size``: the export's letterbox size."""

    name = "web_flow_ema"

    def __init__(self, size: int = 193, momentum: float = 0.8) -> None:
        self.size, self.momentum = int(size), float(momentum)
        self.reset()

    def reset(self) -> None:
        self._state: np.ndarray | None = None
        self._grey: np.ndarray | None = None

    def update(self, prob: np.ndarray, frame: np.ndarray | None = None) -> np.ndarray:
        height, width = prob.shape
        scale = self.size / max(height, width)
        nh, nw = min(self.size, max(1, round(height * scale))), min(self.size, max(1, round(width * scale)))
        crop = cv2.resize(prob.astype(np.float32), (nw, nh), interpolation=cv2.INTER_AREA)
        grey = None
        if frame is not None:
            small = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA).astype(np.float32)
            grey = _half(0.299 * small[..., 0] + 0.587 * small[..., 1] + 0.114 * small[..., 2])
        if self._state is None or self._state.shape != crop.shape or grey is None or self._grey is None:
            self._state = crop.copy()
        else:
            flow = lk_flow(self._grey, grey)
            gh, gw = grey.shape
            sx, sy = gw / nw, gh / nh
            ys, xs = np.mgrid[0:nh, 0:nw].astype(np.float32)
            fx, fy = (xs + 0.5) * sx - 0.5, (ys + 0.5) * sy - 0.5
            du, dv = _sample(flow[..., 0], fx, fy) / sx, _sample(flow[..., 1], fx, fy) / sy
            warped = _sample(self._state, xs + du, ys + dv)
            self._state = self.momentum * warped + (1 - self.momentum) * crop
        self._grey = grey
        out = cv2.resize(self._state, (width, height), interpolation=cv2.INTER_LINEAR)
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    def describe(self) -> str:
        return f"web_flow_ema(size={self.size}, momentum={self.momentum:g})"
