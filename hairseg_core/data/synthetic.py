"""The embedded default dataset: procedurally drawn portraits with exact hair masks.

Why synthetic: the default sweep must run offline on a 2-core CPU in minutes, and tests
must not depend on licensed photo sets. The generator is built so that a model has to
learn *shape and context*, not a colour rule:

* hair is a textured region (streak noise + hundreds of thin curved strands + flyaways)
  in black/brown/blond/red/grey (rarely dyed) with long, bob, short, bun, curly and bald
  styles (bald → no hair pixels);
* hard negatives share hair colours and textures: eyebrows, glasses, clothes in hair
  colours, fur-like collars and background panels with strand texture, cluttered shapes;
* skin tones overlap hair colours (blond vs. pale skin, auburn vs. dark skin);
* some images hold two people; lighting, colour cast, blur and noise vary.

The mask is the hair exactly as painted: every layer updates image and label through the
same coverage mask, so later layers (a face over back hair) remove hair from the label.

Images are cached as PNGs in the *folder* layout (``<cache>/synthetic-v1-s<seed>-<size>/
{train,val,test}/{images,masks}``) so the ordinary folder loader reads them and every
process on a node shares one copy. Writing goes to a temporary folder that is renamed
into place, so concurrent Ray trials never see a half-written set.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from hairseg_core.data.errors import DataError

log = logging.getLogger(__name__)

SYNTHETIC_VERSION = "v1"
DEFAULT_COUNTS = {"train": 240, "val": 60, "test": 60}
MANIFEST = "synthetic.json"
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}

Rgb = tuple[float, float, float]

HAIR_COLOURS: dict[str, tuple[Rgb, float]] = {  # name: (RGB, sampling weight)
    "black": ((22, 20, 19), 0.21),
    "dark_brown": ((55, 38, 28), 0.17),
    "brown": ((100, 68, 42), 0.14),
    "light_brown": ((150, 112, 72), 0.10),
    "blond": ((214, 182, 120), 0.10),
    "platinum": ((230, 220, 190), 0.04),
    "red": ((168, 72, 34), 0.06),
    "auburn": ((118, 46, 26), 0.05),
    "grey": ((140, 138, 136), 0.06),
    "white": ((210, 208, 204), 0.03),
    "dyed_blue": ((45, 70, 160), 0.01),
    "dyed_pink": ((220, 110, 160), 0.01),
    "dyed_purple": ((110, 52, 140), 0.01),
    "dyed_green": ((52, 122, 74), 0.01),
}
_HAIR_RGB = np.array([c for c, _ in HAIR_COLOURS.values()], dtype=np.float32)
_HAIR_P = np.array([w for _, w in HAIR_COLOURS.values()], dtype=np.float64)
_HAIR_P /= _HAIR_P.sum()

SKIN_TONES = np.array(
    [(255, 224, 200), (240, 200, 165), (225, 178, 140), (198, 145, 105), (160, 110, 75), (115, 75, 50), (80, 52, 35)],
    dtype=np.float32,
)

STYLES: dict[str, float] = {"long": 0.3, "bob": 0.14, "short": 0.16, "bun": 0.09, "curly": 0.21, "bald": 0.08}
_STYLE_NAMES = list(STYLES)
_STYLE_P = np.array(list(STYLES.values()), dtype=np.float64) / sum(STYLES.values())


# --------------------------------------------------------------------------- drawing helpers


def _to_fixed(points: np.ndarray) -> np.ndarray:
    """Float pixel coordinates → int32 with 4 fractional bits (OpenCV ``shift=4``)."""
    return np.round(points * 16.0).astype(np.int32)


def _blob(
    rng: np.random.Generator,
    centre: tuple[float, float],
    radii: tuple[float, float],
    angle: float = 0.0,
    roughness: float = 0.0,
    n: int = 72,
    arc: tuple[float, float] = (0.0, 2 * math.pi),
) -> np.ndarray:
    """Points of an ellipse (or arc) whose radius wobbles by ``roughness`` (irregular outlines)."""
    t = np.linspace(arc[0], arc[1], n, endpoint=False)
    r = np.ones(n, dtype=np.float64)
    if roughness > 0:
        for k in range(2, 7):
            r += roughness / k * rng.uniform(0.5, 1.0) * np.sin(k * t + rng.uniform(0, 2 * math.pi))
        r += roughness * 0.15 * rng.standard_normal(n)
    x, y = radii[0] * r * np.cos(t), radii[1] * r * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    return np.stack([centre[0] + ca * x - sa * y, centre[1] + sa * x + ca * y], axis=1)


def _jitter(rng: np.random.Generator, rgb: np.ndarray | Rgb, amount: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3), 0, 255).astype(np.float32)


def _scaled(rgb: np.ndarray, factor: float) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, int(float(v) * factor))) for v in rgb)
    return r, g, b


class _Canvas:
    """Image + label painted together: every layer writes both through one coverage mask.

    Masks are uint8 0/1 and copies go through ``cv2.copyTo``: boolean fancy indexing is
    ~100x slower and generation time matters (it runs on first use of the default set).
    """

    def __init__(self, size: int, background: np.ndarray) -> None:
        self.size = size
        self.image = background
        self.label = np.zeros((size, size), np.uint8)
        self._scratch = np.zeros((size, size), np.uint8)
        self._solid = np.empty((size, size, 3), np.uint8)
        self._ones = np.ones((size, size), np.uint8)
        self._zeros = np.zeros((size, size), np.uint8)

    def cover(self, draw: Callable[[np.ndarray], None]) -> np.ndarray:
        """Run ``draw(scratch)`` (which paints 1s); the returned uint8 mask is valid until the next call."""
        self._scratch.fill(0)
        draw(self._scratch)
        return self._scratch

    def paint(self, cover: np.ndarray, fill: np.ndarray | tuple[int, int, int], hair: bool) -> None:
        if not isinstance(fill, np.ndarray) or fill.ndim != 3:
            cv2.rectangle(self._solid, (0, 0), (self.size, self.size), tuple(int(v) for v in fill), -1)
            fill = self._solid
        cv2.copyTo(fill, cover, self.image)
        cv2.copyTo(self._ones if hair else self._zeros, cover, self.label)


def _poly(points: np.ndarray) -> Callable[[np.ndarray], None]:
    pts = [_to_fixed(points)]
    return lambda m: cv2.fillPoly(m, pts, 1, cv2.LINE_8, 4)


def _streak_texture(
    rng: np.random.Generator, size: int, rgb: np.ndarray, curly: bool, contrast: float = 0.28
) -> np.ndarray:
    """Hair-like shading: noise smeared along strands (or blotchy for curls), plus broad highlights."""
    # Uniform noise (3x cheaper than Gaussian); after smoothing it is near-Gaussian anyway.
    noise = rng.random((size, size), dtype=np.float32) - 0.5
    if curly:
        noise = cv2.GaussianBlur(noise, (0, 0), 1.2) * 7.5
    else:
        length = max(5, size // 10) | 1
        noise = cv2.blur(noise, (1, length)) * math.sqrt(length) * 1.7
    coarse = cv2.resize(rng.uniform(-1, 1, (4, 4)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    shade = 1.0 + contrast * noise + 0.22 * coarse
    # Per channel: rgb·shade + 18·(shade − 1); the absolute term gives dark hair a grey sheen.
    # (convertScaleAbs saturates to uint8; the rare shade < 0 would fold back, which is harmless.)
    channels = [cv2.convertScaleAbs(shade, alpha=float(c) + 18.0, beta=-18.0) for c in rgb]
    return cv2.merge(channels)


def _strands(
    rng: np.random.Generator,
    region: np.ndarray,
    count: int,
    length: float,
    flow: Callable[[np.ndarray], np.ndarray],
    curl: float,
    steps: int = 8,
) -> np.ndarray:
    """``count`` curved polylines (count, steps+1, 2) starting inside ``region`` and following ``flow``."""
    x0, y0, w, h = cv2.boundingRect(region)
    if w == 0 or count <= 0:
        return np.zeros((0, steps + 1, 2), np.float64)
    # Rejection-sample start points inside the region (much cheaper than listing its pixels).
    tries = rng.uniform(0, 1, (count * 4 + 16, 2)) * (w, h) + (x0, y0)
    inside = region[tries[:, 1].astype(np.intp), tries[:, 0].astype(np.intp)] > 0
    pos = tries[inside][:count]
    if len(pos) == 0:
        return np.zeros((0, steps + 1, 2), np.float64)
    count = len(pos)
    bend = rng.normal(0.0, curl, count)
    step = length / steps * rng.uniform(0.6, 1.4, count)
    angle = rng.uniform(-0.25, 0.25, count)
    path = [pos]
    for _ in range(steps):
        d = flow(pos)
        ca, sa = np.cos(angle), np.sin(angle)
        d = np.stack([ca * d[:, 0] - sa * d[:, 1], sa * d[:, 0] + ca * d[:, 1]], axis=1)
        pos = pos + d * step[:, None]
        path.append(pos)
        angle = angle + bend + rng.normal(0.0, 0.08, count)
    return np.stack(path, axis=1)


def _draw_polylines(target: np.ndarray, lines: np.ndarray, colour, thickness: int, aa: bool) -> None:
    if len(lines):
        cv2.polylines(target, list(_to_fixed(lines)), False, colour, thickness, cv2.LINE_AA if aa else cv2.LINE_8, 4)


# --------------------------------------------------------------------------- scene parts


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradient or blotchy base, then clutter: shapes (often hair-coloured) and strand-textured panels."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    # Blend weights on a coarse grid, upsampled: blending is linear, so this equals blending at
    # full resolution and costs a fraction of it.
    if rng.random() < 0.55:
        phi = rng.uniform(0, 2 * math.pi)
        g = (np.arange(9, dtype=np.float64) + 0.5) / 9 - 0.5
        t = np.clip(g[None, :] * math.cos(phi) + g[:, None] * math.sin(phi) + 0.5, 0, 1)[..., None]
        interpolation = cv2.INTER_LINEAR
    else:
        k = int(rng.integers(2, 7))
        t = rng.uniform(0, 1, (k, k, 3))
        interpolation = cv2.INTER_CUBIC
    small = np.clip(c0 * (1 - t) + c1 * t, 0, 255).astype(np.uint8)
    image = cv2.resize(small, (size, size), interpolation=interpolation)
    for _ in range(int(rng.integers(3, 10))):
        colour = _hair_colour(rng) if rng.random() < 0.35 else rng.uniform(0, 255, 3)
        colour = tuple(int(v) for v in colour)
        kind = rng.integers(0, 4)
        p = rng.uniform(-0.1, 1.1, (2, 2)) * size
        if kind == 0:
            cv2.rectangle(image, _ipt(p[0]), _ipt(p[1]), colour, -1)
        elif kind == 1:
            cv2.circle(image, _ipt(p[0]), int(rng.uniform(0.03, 0.2) * size), colour, -1, cv2.LINE_AA)
        elif kind == 2:
            cv2.line(image, _ipt(p[0]), _ipt(p[1]), colour, int(rng.integers(1, max(2, size // 25))), cv2.LINE_AA)
        else:
            pts = _blob(rng, (p[0, 0], p[0, 1]), tuple(rng.uniform(0.04, 0.2, 2) * size), rng.uniform(0, 3), 0.3, 16)
            cv2.fillPoly(image, [_to_fixed(pts)], colour, cv2.LINE_AA, 4)
    if rng.random() < 0.45:  # a panel with hair texture: colour + texture alone must not mean "hair"
        x0, y0 = rng.uniform(-0.1, 0.7, 2) * size
        w, h = rng.uniform(0.2, 0.6, 2) * size
        mask = np.zeros((size, size), np.uint8)
        cv2.rectangle(mask, _ipt((x0, y0)), _ipt((x0 + w, y0 + h)), 1, -1)
        rgb = _hair_colour(rng)
        tex = _streak_texture(rng, size, rgb, curly=rng.random() < 0.3)
        down = np.array([0.0, 1.0]) if rng.random() < 0.5 else np.array([1.0, 0.0])
        lines = _strands(rng, mask, int(mask.sum() / 45), size * 0.15, lambda p: np.broadcast_to(down, p.shape), 0.05)
        _draw_polylines(tex, lines, _scaled(rgb, 1.5), 1, True)
        cv2.copyTo(tex, mask, image)
    if rng.random() < 0.4:  # shallow depth of field
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.8, 2.5))
    return image


def _ipt(p) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def _hair_colour(rng: np.random.Generator) -> np.ndarray:
    return _jitter(rng, _HAIR_RGB[rng.choice(len(_HAIR_RGB), p=_HAIR_P)], 12)


@dataclass
class _Person:
    cx: float
    cy: float
    a: float  # head half-width
    b: float  # head half-height
    tilt: float  # radians
    style: str
    hair: np.ndarray
    skin: np.ndarray


class _Hair:
    """One person's hair texture, flow field and everything painted as hair so far.

    Every hair layer goes through :meth:`paint`, which also records its coverage: strands
    are drawn last, and only where this hair is still visible after the head, face and
    other layers covered parts of it.
    """

    def __init__(self, rng: np.random.Generator, canvas: _Canvas, person: _Person) -> None:
        self.canvas = canvas
        self.person = person
        self.crown = np.array([person.cx + rng.uniform(-0.3, 0.3) * person.a, person.cy - 0.85 * person.b])
        self.down_pull = {"long": 1.6, "bob": 1.0, "curly": 0.6, "short": 0.25, "bun": 0.4}.get(person.style, 0.5)
        curly = person.style == "curly"
        self.texture = None if person.style == "bald" else _streak_texture(rng, canvas.size, person.hair, curly)
        self.cover = np.zeros((canvas.size, canvas.size), np.uint8)

    def flow(self, pos: np.ndarray) -> np.ndarray:
        """Strand direction at ``pos``: away from the crown, pulled down more the lower (and longer) the hair."""
        d = pos - self.crown
        d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-6
        w = np.clip((pos[:, 1] - self.person.cy) / self.person.b + 0.3, 0.0, 3.0) * self.down_pull
        d[:, 1] += w
        return d / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-6)

    def paint(self, cover: np.ndarray) -> None:
        self.canvas.paint(cover, self.texture, hair=True)
        cv2.bitwise_or(self.cover, cover, dst=self.cover)


def _draw_person(rng: np.random.Generator, canvas: _Canvas, person: _Person) -> None:
    """Back hair → torso → neck → ears → head → face → cap/fringe → front locks → flyaways.

    The order is the depth order (later layers cover earlier ones in image and label alike)
    and also the order of random draws: changing it changes every generated set.
    """
    hair = _Hair(rng, canvas, person)
    _draw_back_hair(rng, hair)
    shoulder_c, shoulder_r = _draw_torso(rng, canvas, person)
    _draw_head(rng, canvas, person, shoulder_c, shoulder_r)
    if person.style == "bald":
        return
    _draw_hair_cap(rng, hair)
    if person.style == "long" and rng.random() < 0.6:
        _draw_front_locks(rng, hair)
    _draw_strands(rng, hair)


def _draw_back_hair(rng: np.random.Generator, hair: _Hair) -> None:
    """Hair behind head and shoulders (long/bob sheet, curly halo, bun), painted first so the head covers it."""
    p, canvas = hair.person, hair.canvas
    cx, cy, a, b = p.cx, p.cy, p.a, p.b
    y_top = cy - b * rng.uniform(1.04, 1.2)  # drawn for every style: keeps the random stream the same
    if p.style in ("long", "bob"):
        hair.paint(canvas.cover(_poly(_back_sheet_outline(rng, p, y_top))))
    elif p.style == "curly":
        span = rng.uniform(0.3, 1.0)
        radii = (a * rng.uniform(1.15, 1.5), b * rng.uniform(1.05, 1.25))
        t = np.linspace(math.pi - span * 0.6, 2 * math.pi + span * 0.6, int(rng.integers(14, 24)))
        centres = np.stack([cx + radii[0] * np.cos(t), cy - 0.05 * b + radii[1] * np.sin(t)], axis=1)
        blobs = rng.uniform(0.22, 0.45, len(t)) * a

        def draw_curls(m: np.ndarray) -> None:
            cv2.ellipse(m, _ipt((cx, cy - 0.1 * b)), _ipt(radii), 0, 0, 360, 1, -1)
            for (x, y), r in zip(centres, blobs, strict=True):
                cv2.circle(m, _ipt((x, y)), max(1, int(r)), 1, -1)

        hair.paint(canvas.cover(draw_curls))
    elif p.style == "bun":
        bun_c = (cx + rng.uniform(-0.35, 0.35) * a, cy - b * rng.uniform(1.0, 1.2))
        bun_r = a * rng.uniform(0.35, 0.6)
        hair.paint(canvas.cover(_poly(_blob(rng, bun_c, (bun_r, bun_r * 0.9), 0, 0.08, 40))))


def _back_sheet_outline(rng: np.random.Generator, p: _Person, y_top: float) -> np.ndarray:
    """Outline of long or bob hair behind the head: rounded top, wavy sides, a ragged row of tips."""
    cx, cy, a, b = p.cx, p.cy, p.a, p.b
    y_end = cy + b * (rng.uniform(1.3, 2.8) if p.style == "long" else rng.uniform(0.5, 0.95))
    w_bot = a * (rng.uniform(1.3, 1.9) if p.style == "long" else rng.uniform(1.2, 1.45))
    top = _blob(
        rng,
        (cx, cy - 0.05 * b),
        (a * rng.uniform(1.15, 1.3), cy - 0.05 * b - y_top),
        0,
        0.04,
        36,
        (math.pi, 2 * math.pi),
    )
    ys = np.linspace(cy, y_end, 10)
    wave = rng.uniform(0.02, 0.08) * a * np.sin(np.linspace(0, rng.uniform(2, 6), 10) + rng.uniform(0, 6))
    right = np.stack([np.linspace(top[-1, 0], cx + w_bot, 10) + wave, ys], axis=1)
    left = np.stack([np.linspace(cx - w_bot, top[0, 0], 10) - wave[::-1], ys[::-1]], axis=1)
    n_tips = int(rng.integers(5, 12))
    tip_x = np.linspace(cx + w_bot, cx - w_bot, 2 * n_tips + 1)
    tip_y = y_end - np.where(np.arange(2 * n_tips + 1) % 2 == 1, rng.uniform(0.0, 0.15, 2 * n_tips + 1) * b, 0)
    return np.concatenate([top, right, np.stack([tip_x, tip_y], axis=1), left])


def _draw_torso(
    rng: np.random.Generator, canvas: _Canvas, p: _Person
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Shoulders and clothes; returns the shoulder ellipse (centre, radii) that the neck reaches down to."""
    size, cx, cy, a, b = canvas.size, p.cx, p.cy, p.a, p.b
    shoulder_c = (cx + rng.uniform(-0.2, 0.2) * a, cy + b * rng.uniform(1.85, 2.3))
    shoulder_r = (a * rng.uniform(2.0, 2.9), b * rng.uniform(0.8, 1.1))

    def draw_torso(m: np.ndarray) -> None:
        cv2.ellipse(m, _ipt(shoulder_c), _ipt(shoulder_r), math.degrees(p.tilt) * 0.3, 0, 360, 1, -1)
        cv2.rectangle(
            m,
            _ipt((shoulder_c[0] - shoulder_r[0], shoulder_c[1])),
            _ipt((shoulder_c[0] + shoulder_r[0], size + 5)),
            1,
            -1,
        )

    torso = canvas.cover(draw_torso)
    canvas.paint(torso, _cloth_fill(rng, size), hair=False)
    return shoulder_c, shoulder_r


def _cloth_fill(rng: np.random.Generator, size: int) -> np.ndarray:
    """Clothes: often hair-coloured, sometimes fur/knit with hair texture or stripes (hard negatives)."""
    cloth = _hair_colour(rng) if rng.random() < 0.45 else rng.uniform(0, 255, 3).astype(np.float32)
    cloth_kind = rng.random()
    if cloth_kind < 0.18:  # fur / knit: hair-like texture that is not hair
        return _streak_texture(rng, size, cloth, curly=rng.random() < 0.5, contrast=0.4)
    cloth_fill = np.empty((size, size, 3), np.uint8)
    cloth_fill[...] = _scaled(cloth, 1.0)
    if cloth_kind < 0.4:  # stripes
        gap = max(3, int(size * rng.uniform(0.02, 0.06)))
        stripe = _scaled(_jitter(rng, rng.uniform(0, 255, 3), 0), 1.0)
        for y in range(0, size, gap * 2):
            cv2.rectangle(cloth_fill, (0, y), (size, y + gap - 1), stripe, -1)
    return cloth_fill


def _draw_head(
    rng: np.random.Generator,
    canvas: _Canvas,
    p: _Person,
    shoulder_c: tuple[float, float],
    shoulder_r: tuple[float, float],
) -> None:
    """Neck (and shirt neckline), ears, head with soft shading, then the face."""
    size, cx, cy, a, b = canvas.size, p.cx, p.cy, p.a, p.b
    skin_fill = _smooth_field(
        size, lambda x, y: p.skin * (1.0 - 0.22 * np.clip(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2, 0, 1.3))[..., None]
    )
    neck_w = a * rng.uniform(0.42, 0.55)
    neck = np.array(
        [
            (cx - neck_w, cy + 0.5 * b),
            (cx + neck_w, cy + 0.5 * b),
            (cx + neck_w * 1.1, shoulder_c[1] - 0.6 * shoulder_r[1]),
            (cx - neck_w * 1.1, shoulder_c[1] - 0.6 * shoulder_r[1]),
        ]
    )
    canvas.paint(canvas.cover(_poly(neck)), _scaled(p.skin, 0.82), hair=False)
    if rng.random() < 0.6:  # neckline of the shirt
        depth = rng.uniform(0.2, 0.6) * b
        v = np.array(
            [
                (cx - neck_w * 1.6, shoulder_c[1] - shoulder_r[1] * 0.95),
                (cx + neck_w * 1.6, shoulder_c[1] - shoulder_r[1] * 0.95),
                (cx, shoulder_c[1] - shoulder_r[1] * 0.95 + depth),
            ]
        )
        canvas.paint(canvas.cover(_poly(v)), _scaled(p.skin, 0.8), hair=False)

    def draw_ears(m: np.ndarray) -> None:
        for side in (-1, 1):
            cv2.ellipse(m, _ipt((cx + side * a * 0.97, cy + 0.05 * b)), _ipt((a * 0.16, b * 0.22)), 0, 0, 360, 1, -1)

    canvas.paint(canvas.cover(draw_ears), _scaled(p.skin, 0.9), hair=False)
    head = _blob(rng, (cx, cy), (a, b), p.tilt, 0.015, 64)
    canvas.paint(canvas.cover(_poly(head)), skin_fill, hair=False)
    _draw_face(rng, canvas, p)


def _draw_hair_cap(rng: np.random.Generator, hair: _Hair) -> None:
    """Hair over the head: an outer outline minus a face window (hairline or fringe), cut off below the ears."""
    p, canvas = hair.person, hair.canvas
    size, cx, cy, a, b = canvas.size, p.cx, p.cy, p.a, p.b
    curly = p.style == "curly"
    fringe = rng.random() < (0.45 if p.style in ("long", "bob") else 0.2)
    h_mid = rng.uniform(0.08, 0.25) if fringe else rng.uniform(0.3, 0.62)
    # All three draws happen whatever the style (the dict is built first): keeps the random stream the same.
    drop = {"short": rng.uniform(-0.1, 0.15), "bun": rng.uniform(0.0, 0.3)}.get(p.style, rng.uniform(0.25, 0.7))
    volume = 0.14 if curly else 0.08
    outer = _blob(
        rng,
        (cx, cy - b * rng.uniform(0.04, 0.14)),
        (a * rng.uniform(1.07, 1.15 + volume), b * rng.uniform(1.02, 1.09 + volume)),
        p.tilt,
        0.09 if curly else 0.03,
        72,
    )
    window = _blob(
        rng,
        (cx, cy + 0.28 * b),
        (a * rng.uniform(0.8, 0.92), b * (0.28 + h_mid)),
        p.tilt,
        0.06 if fringe else 0.025,
        48,
    )
    y_cut = int(cy + drop * b)

    def draw_cap(m: np.ndarray) -> None:
        cv2.fillPoly(m, [_to_fixed(outer)], 1, cv2.LINE_8, 4)
        cv2.fillPoly(m, [_to_fixed(window)], 0, cv2.LINE_8, 4)
        m[max(0, min(size, y_cut)) :] = 0

    hair.paint(canvas.cover(draw_cap))


def _draw_front_locks(rng: np.random.Generator, hair: _Hair) -> None:
    """Long hair: locks falling in front of the shoulders (each side three times in four)."""
    p, canvas = hair.person, hair.canvas
    cx, cy, a, b = p.cx, p.cy, p.a, p.b
    y_end = cy + b * rng.uniform(1.2, 2.4)
    for side in (-1, 1):
        if rng.random() < 0.25:
            continue
        x_in = cx + side * a * rng.uniform(0.75, 0.9)
        x_out = cx + side * a * rng.uniform(1.1, 1.35)
        lock = np.array(
            [
                (x_in, cy - 0.3 * b),
                (x_out, cy - 0.4 * b),
                (x_out + side * a * rng.uniform(0.0, 0.35), y_end),
                (x_in + side * a * rng.uniform(0.1, 0.4), y_end + rng.uniform(-0.1, 0.1) * b),
            ]
        )
        hair.paint(canvas.cover(_poly(lock)))


def _draw_strands(rng: np.random.Generator, hair: _Hair) -> None:
    """Strands inside the visible hair, and flyaways from its edge (crossing it; those are hair too)."""
    p, canvas = hair.person, hair.canvas
    curly = p.style == "curly"
    visible = cv2.bitwise_and(hair.cover, canvas.label)
    area = cv2.countNonZero(visible)
    lines = _strands(rng, visible, area // 28, p.b * (0.35 if curly else 0.6), hair.flow, 0.55 if curly else 0.06)
    shades = (0.55, 0.75, 1.3, 1.6)
    strand_layer = hair.texture.copy()
    for i, f in enumerate(shades):
        _draw_polylines(strand_layer, lines[i :: len(shades)], _scaled(p.hair, f), 1, True)
    cv2.copyTo(strand_layer, visible, canvas.image)
    edge = cv2.subtract(visible, cv2.erode(visible, np.ones((3, 3), np.uint8)))
    fly = _strands(rng, edge, int(rng.integers(4, 22)), p.b * 0.25, hair.flow, 0.25, steps=5)
    thick = max(1, canvas.size // 300)
    for i, f in enumerate((0.8, 1.25)):
        fly_cover = canvas.cover(lambda m, ln=fly[i::2]: _draw_polylines(m, ln, 1, thick, False))
        canvas.paint(fly_cover, _scaled(p.hair, f), hair=True)


def _draw_face(rng: np.random.Generator, canvas: _Canvas, p: _Person) -> None:
    """Eyes, hair-coloured eyebrows (a classic false positive), nose, mouth, sometimes glasses."""
    cx, cy, a, b = p.cx, p.cy, p.a, p.b
    img = canvas.image
    eye_y, eye_dx = cy - 0.05 * b, a * rng.uniform(0.36, 0.46)
    eye_r = (max(1, int(a * 0.16)), max(1, int(b * 0.07)))
    brow_colour = _scaled(p.hair if p.style != "bald" else p.skin * 0.5, 0.9)
    brow_t = max(1, int(b * rng.uniform(0.04, 0.08)))
    for side in (-1, 1):
        ex = cx + side * eye_dx
        cv2.ellipse(img, _ipt((ex, eye_y)), eye_r, 0, 0, 360, (235, 235, 230), -1, cv2.LINE_AA)
        iris = tuple(int(v) for v in rng.uniform(20, 120, 3))
        cv2.circle(img, _ipt((ex, eye_y)), max(1, int(eye_r[1] * 0.9)), iris, -1, cv2.LINE_AA)
        cv2.ellipse(
            img,
            _ipt((ex, eye_y - b * 0.16)),
            (eye_r[0] + 2, max(1, int(b * 0.06))),
            0,
            200,
            340,
            brow_colour,
            brow_t,
            cv2.LINE_AA,
        )
    nose = np.array([(cx, eye_y + 0.05 * b), (cx - 0.08 * a, cy + 0.3 * b), (cx + 0.06 * a, cy + 0.33 * b)])
    cv2.polylines(img, [_to_fixed(nose)], False, _scaled(p.skin, 0.7), 1, cv2.LINE_AA, 4)
    lips = _scaled(np.array([170, 80, 80], np.float32) * 0.5 + p.skin * 0.5, 1.0)
    cv2.ellipse(
        img, _ipt((cx, cy + 0.55 * b)), (max(1, int(a * 0.3)), max(1, int(b * 0.07))), 0, 0, 360, lips, -1, cv2.LINE_AA
    )
    if rng.random() < 0.15:  # glasses: dark frames like dark hair, never labelled hair
        frame = _scaled(_HAIR_RGB[0], 1.0)

        def draw_glasses(m: np.ndarray) -> None:
            for side in (-1, 1):
                cv2.ellipse(m, _ipt((cx + side * eye_dx, eye_y)), (eye_r[0] + 4, eye_r[1] + 5), 0, 0, 360, 1, 2)
                cv2.line(
                    m, _ipt((cx + side * (eye_dx + eye_r[0] + 4), eye_y)), _ipt((cx + side * a * 1.02, eye_y - 2)), 1, 2
                )
            cv2.line(m, _ipt((cx - eye_dx + eye_r[0], eye_y)), _ipt((cx + eye_dx - eye_r[0], eye_y)), 1, 2)

        canvas.paint(canvas.cover(draw_glasses), frame, hair=False)


def _people(rng: np.random.Generator, size: int) -> list[_Person]:
    count = 1 if rng.random() < 0.8 else 2
    people = []
    for i in range(count):
        if count == 1:
            a = size * rng.uniform(0.17, 0.27)
            cx, cy = size * rng.uniform(0.33, 0.67), size * rng.uniform(0.36, 0.52)
        else:
            a = size * rng.uniform(0.12, 0.17)
            cx = size * (0.27 + 0.46 * i + rng.uniform(-0.07, 0.07))
            cy = size * rng.uniform(0.3, 0.55)
        style = _STYLE_NAMES[rng.choice(len(_STYLE_NAMES), p=_STYLE_P)]
        people.append(
            _Person(
                cx=cx,
                cy=cy,
                a=a,
                b=a * rng.uniform(1.2, 1.4),
                tilt=math.radians(rng.uniform(-12, 12)),
                style=style,
                hair=_hair_colour(rng),
                skin=_jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 10),
            )
        )
    rng.shuffle(people)  # drawing order = depth order
    return people


def _lighting(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Directional light ramp, exposure, colour cast, optional blur, sensor noise."""
    size = image.shape[0]
    phi = rng.uniform(0, 2 * math.pi)
    gain, slope = rng.uniform(0.65, 1.25), rng.uniform(0, 0.7)
    cast = rng.uniform(0.88, 1.12, 3)
    field = _smooth_field(
        size,
        lambda x, y: (
            (gain * (1.0 + slope * ((x / size - 0.5) * math.cos(phi) + (y / size - 0.5) * math.sin(phi))))[..., None]
            * cast
        ),
        dtype=np.float32,
    )
    out = cv2.multiply(image, field, dtype=cv2.CV_32F)
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 1.1))
    amplitude = int(rng.integers(2, 12))  # uniform sensor noise of +-amplitude grey levels
    noise = rng.integers(0, 2 * amplitude + 1, out.shape, dtype=np.uint8)
    out = cv2.add(out, noise, dtype=cv2.CV_32F)
    return cv2.convertScaleAbs(out, beta=-amplitude)  # saturates to uint8


def _smooth_field(
    size: int, fn: Callable[[np.ndarray, np.ndarray], np.ndarray], dtype: type = np.uint8, cells: int = 24
) -> np.ndarray:
    """Evaluate a smooth per-pixel colour/gain function on a coarse grid and upsample bilinearly.

    Lighting ramps and face shading vary slowly, so a 24×24 evaluation is visually identical
    to a full one at a fraction of the cost.
    """
    centres = (np.arange(cells, dtype=np.float64) + 0.5) * size / cells - 0.5
    values = fn(centres[None, :], centres[:, None])
    if dtype == np.uint8:
        values = np.clip(values, 0, 255)
    return cv2.resize(values.astype(dtype), (size, size), interpolation=cv2.INTER_LINEAR)


def render_portrait(rng: np.random.Generator, size: int = 257) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic portrait: (uint8 H×W×3 RGB image, uint8 H×W mask with 1 = hair)."""
    canvas = _Canvas(size, _background(rng, size))
    for person in _people(rng, size):
        _draw_person(rng, canvas, person)
    return _lighting(rng, canvas.image), canvas.label


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Per-image generator: image ``index`` of ``split`` is the same whatever the split sizes are."""
    return np.random.default_rng([seed, _SPLIT_CODES[split], index])


# --------------------------------------------------------------------------- cache on disk


def default_cache_root() -> Path:
    """``$HAIRSEG_CACHE`` or ``~/.cache/hairseg``."""
    env = os.environ.get("HAIRSEG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hairseg"


def synthetic_dir_name(size: int = 257, n_train: int = 240, n_val: int = 60, n_test: int = 60, seed: int = 0) -> str:
    """``synthetic-v1-s<seed>-<size>``, plus ``-n<train>-<val>-<test>`` for non-default counts."""
    name = f"synthetic-{SYNTHETIC_VERSION}-s{seed}-{size}"
    if (n_train, n_val, n_test) != tuple(DEFAULT_COUNTS.values()):
        name += f"-n{n_train}-{n_val}-{n_test}"
    return name


def write_synthetic(folder: Path, size: int, counts: dict[str, int], seed: int) -> dict[str, object]:
    """Render every split into ``folder`` (folder layout, PNG) and return the manifest."""
    hair_fractions = []
    for split, count in counts.items():
        image_dir, mask_dir = folder / split / "images", folder / split / "masks"
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, mask = render_portrait(sample_rng(seed, split, index), size)
            stem = f"{split}_{index:05d}"
            _write_png(image_dir / f"{stem}.png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            _write_png(mask_dir / f"{stem}.png", mask * np.uint8(255))
            hair_fractions.append(float(mask.mean()))
    return {
        "version": SYNTHETIC_VERSION,
        "seed": seed,
        "size": size,
        "counts": counts,
        "hair_fraction_mean": float(np.mean(hair_fractions)),
        "empty_masks": int(sum(f == 0 for f in hair_fractions)),
    }


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())


def _manifest_matches(folder: Path, expected: dict[str, object]) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all(manifest.get(k) == v for k, v in expected.items())


def ensure_synthetic(
    root: str | os.PathLike[str] | None = None,
    size: int = 257,
    n_train: int = 240,
    n_val: int = 60,
    n_test: int = 60,
    seed: int = 0,
) -> Path:
    """Return the folder of the synthetic set, generating it on first use.

    ``root`` is the cache directory (else ``$HAIRSEG_CACHE``, else ``~/.cache/hairseg``).
    Generation writes into a private temporary folder beside the target and renames it into
    place; if another process finished first, its copy is used and ours is discarded.
    """
    if size < 64:
        raise ValueError(f"synthetic size must be at least 64 pixels, got {size}")
    counts = {"train": n_train, "val": n_val, "test": n_test}
    for split, count in counts.items():
        if count < 1:
            raise ValueError(f"synthetic n_{split} must be at least 1, got {count}")
    cache = Path(root).expanduser() if root is not None else default_cache_root()
    target = cache / synthetic_dir_name(size, n_train, n_val, n_test, seed)
    expected = {"version": SYNTHETIC_VERSION, "seed": seed, "size": size, "counts": counts}
    if _manifest_matches(target, expected):
        return target
    if target.exists():
        raise DataError(
            f"{target}: exists but is not a complete synthetic set with {expected} "
            f"(no matching {MANIFEST}); delete it to regenerate"
        )
    log.info("generating synthetic dataset %s (first use; a few seconds)", target)
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=cache))
    try:
        manifest = write_synthetic(staging, size, counts, seed)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared by every process on the node
        try:
            os.rename(staging, target)
        except OSError:
            if not _manifest_matches(target, expected):  # not a lost race: a real failure
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
