"""Natural hair recolouring driven by a soft hair probability map (paper §5.7).

The paper colours hair "proportional to its [softmax] probability" instead of painting a hard mask; that
is what removes the cut-out look at the hair boundary. This module does the colour change in CIE Lab so
the hair keeps its own lightness texture (strands, highlights, shadows) and only its mean lightness and
its hue/chroma move toward the target colour:

* ``L' = L + luminance_shift * (L_target - mean_hair_L)``: the texture ``L - mean`` is kept exactly; the
  mean is shifted part of the way, so black hair dyed blonde gets lighter but still looks like hair.
* ``a', b' = chroma(target) * clip(L' / L_target, 0.25, 1)``: shadows get less chroma than highlights,
  as real dyed hair does, which also keeps very dark pixels inside the sRGB gamut.
* ``out = Lab + strength * prob * (Lab' - Lab)``: a soft blend, no hard edge.

Pixels with ``strength * prob < 1/510`` could move by less than half a grey level, so they are not touched
at all: they stay bit-identical to the input, and the Lab work covers only the bounding box of the hair
region, which keeps colouring at ~1-5 ms per 640x480 frame on 2 CPU cores.

Smoothing across video frames and the flicker metrics live in ``hairseg_core.deploy.temporal``.
"""

from __future__ import annotations

import re

import cv2
import numpy as np

__all__ = ["NAMED_COLORS", "parse_color", "recolor"]

RGB = tuple[int, int, int]

#: Hair-plausible and fun named colours (sRGB, 0-255). Keys are lower-case.
NAMED_COLORS: dict[str, RGB] = {
    "red": (200, 30, 45),
    "copper": (184, 86, 40),
    "auburn": (145, 40, 30),
    "ginger": (205, 110, 50),
    "blonde": (230, 200, 130),
    "platinum": (229, 228, 226),
    "brown": (110, 70, 40),
    "chestnut": (149, 69, 53),
    "black": (25, 22, 20),
    "silver": (192, 192, 196),
    "blue": (30, 80, 220),
    "teal": (0, 128, 128),
    "green": (40, 160, 80),
    "purple": (130, 40, 170),
    "pink": (240, 100, 170),
}

_HEX = re.compile(r"^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})$")

#: Blend weights below this change no uint8 value by more than half a level (255 * w < 0.5).
_MIN_WEIGHT = 1.0 / 510.0


def parse_color(spec: str | tuple[int, int, int]) -> RGB:
    """Return an sRGB triple for a colour name (``"red"``), ``"#RRGGBB"``, ``"#RGB"`` or an (r, g, b) tuple.

    Raises ``ValueError`` naming the bad input and the accepted forms, so a typo on the command line
    fails before a camera is opened.
    """
    if isinstance(spec, tuple | list):
        if len(spec) != 3 or not all(isinstance(c, int | np.integer) and 0 <= c <= 255 for c in spec):
            raise ValueError(f"colour tuple must be three integers in 0..255, got {spec!r}")
        return (int(spec[0]), int(spec[1]), int(spec[2]))
    if not isinstance(spec, str):
        raise ValueError(f"colour must be a name, '#RRGGBB' or an (r, g, b) tuple, got {type(spec).__name__}")
    key = spec.strip().lower()
    if key in NAMED_COLORS:
        return NAMED_COLORS[key]
    match = _HEX.match(key)
    if match:
        digits = match.group(1)
        if len(digits) == 3:
            digits = "".join(ch * 2 for ch in digits)
        return (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))
    raise ValueError(f"unknown colour {spec!r}; use '#RRGGBB', '#RGB' or one of: {', '.join(sorted(NAMED_COLORS))}")


def _rgb_to_lab(rgb_uint8: np.ndarray) -> np.ndarray:
    """sRGB uint8 HxWx3 → float32 Lab with L in [0, 100] (OpenCV's float convention)."""
    return cv2.cvtColor(rgb_uint8.astype(np.float32) * np.float32(1.0 / 255.0), cv2.COLOR_RGB2Lab)


def _lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """float32 Lab HxWx3 → sRGB uint8, rounding and clipping out-of-gamut values."""
    rgb = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    rgb *= np.float32(255.0)
    np.clip(rgb, 0.0, 255.0, out=rgb)
    rgb += np.float32(0.5)  # truncation below then rounds to nearest
    return rgb.astype(np.uint8)


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _check_frame_and_prob(frame_rgb: np.ndarray, prob: np.ndarray) -> None:
    if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
        raise ValueError(f"frame must be an HxWx3 uint8 RGB image, got shape {frame_rgb.shape} {frame_rgb.dtype}")
    if prob.shape != frame_rgb.shape[:2]:
        raise ValueError(f"probability map shape {prob.shape} does not match frame size {frame_rgb.shape[:2]}")


def recolor(
    frame_rgb: np.ndarray,
    prob: np.ndarray,
    color: str | tuple[int, int, int],
    strength: float = 0.8,
    luminance_shift: float = 0.5,
) -> np.ndarray:
    """Recolour hair in ``frame_rgb`` (HxWx3 uint8 RGB) toward ``color`` with weight ``strength * prob``.

    ``prob`` is the hair probability (HxW, values in [0, 1]; clipped). ``strength`` in [0, 1] scales the
    effect; ``luminance_shift`` in [0, 1] says how far the hair's mean lightness moves toward the target
    colour's lightness (0 keeps the original lightness, 1 moves it all the way). Returns a new uint8 array;
    pixels whose weight is below 1/510 are returned unchanged.
    """
    _check_frame_and_prob(frame_rgb, prob)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if not 0.0 <= luminance_shift <= 1.0:
        raise ValueError(f"luminance_shift must be in [0, 1], got {luminance_shift}")
    target_rgb = parse_color(color)

    weight = np.clip(prob.astype(np.float32, copy=False), 0.0, 1.0) * np.float32(strength)
    region = weight >= _MIN_WEIGHT
    out = frame_rgb.copy()
    if not region.any():
        return out

    # Work on the hair's bounding box as a 2-D image: OpenCV converts whole images an order of magnitude
    # faster than gathered pixel lists, and the box is usually a fraction of the frame.
    rows, cols = _bounding_box(region)
    w = weight[rows, cols]
    lab = _rgb_to_lab(frame_rgb[rows, cols])
    target = _rgb_to_lab(np.asarray(target_rgb, dtype=np.uint8).reshape(1, 1, 3))[0, 0]

    lightness = lab[..., 0]
    mean_l = float(np.sum(lightness * w) / np.sum(w))
    # dyed = (L', a_t * c, b_t * c), computed in place: fresh full-frame temporaries cost more than the maths
    dyed = np.empty_like(lab)
    new_l = dyed[..., 0]
    np.add(lightness, np.float32(luminance_shift * (target[0] - mean_l)), out=new_l)
    np.clip(new_l, 0.0, 100.0, out=new_l)
    chroma_scale = new_l * np.float32(1.0 / max(float(target[0]), 1.0))
    np.clip(chroma_scale, 0.25, 1.0, out=chroma_scale)
    np.multiply(chroma_scale, target[1], out=dyed[..., 1])
    np.multiply(chroma_scale, target[2], out=dyed[..., 2])
    # blended = lab + w * (dyed - lab)
    dyed -= lab
    dyed *= w[..., None]
    dyed += lab
    cv2.copyTo(_lab_to_rgb(dyed), region[rows, cols].view(np.uint8), out[rows, cols])  # in place, masked
    return out
