"""Draw docs/portrait.png: input | hair probability | recoloured, for the README.

The picture shows what the webcam app does to one frame, with the app's own code: the export is loaded
through ``load_predictor`` (the ONNX file, letterboxed as ``model.json`` says) and coloured with
``recolor`` at the app's default strength. The input is a synthetic portrait drawn by
``render_portrait`` from a seed the built-in data set does not use, so the model never saw it and the
repository ships no photograph (the real data sets are licensed for research use only).

    python docs/make_portrait.py --model exports/<sweep>          # or models:/hairseg@champion

Run from the repository root with the project installed (``pip install -e ".[test]"``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from hairseg_core.data.synthetic import render_portrait
from hairseg_core.deploy.coloring import recolor
from hairseg_core.deploy.inference import load_predictor

#: Far from the built-in set's seeds (0 for every split), so the portrait is one no trial trained on.
DEFAULT_SEED = 2026


def _iou(prob: np.ndarray, mask: np.ndarray) -> float:
    """Hair IoU of the thresholded probability against the portrait's own hair mask (for the caption)."""
    pred, true = prob >= 0.5, mask > 0
    union = np.logical_or(pred, true).sum()
    return float(np.logical_and(pred, true).sum() / union) if union else 1.0


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    """A white strip with the panel's name above it, so the picture explains itself."""
    strip = np.full((22, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([strip, panel])


def portrait_panels(
    model: str, seed: int, size: int, panel: int, color: str, strength: float
) -> tuple[np.ndarray, float]:
    """(RGB picture of the three panels, each ``panel`` px wide, and the model's hair IoU on this portrait).

    The model sees the portrait at ``size`` (the built-in set's side); only the finished panels are
    shrunk, which keeps the PNG small enough for a README.
    """
    image, mask = render_portrait(np.random.default_rng(seed), size=size)
    prob = load_predictor(model)(image)
    heat = cv2.applyColorMap((prob * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
    coloured = recolor(image, prob, color, strength)
    shown = [cv2.resize(p, (panel, panel), interpolation=cv2.INTER_AREA) for p in (image, heat, coloured)]
    names = ["input (synthetic)", "hair probability", f"recoloured ({color})"]
    gap = np.full((panel + 22, 4, 3), 255, np.uint8)
    row = [gap] * 5
    row[0::2] = [_label(p, n) for p, n in zip(shown, names, strict=True)]
    return np.hstack(row), _iou(prob, mask)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="export folder, model file or models:/ URI")
    parser.add_argument("--output", type=Path, default=Path("docs/portrait.png"))
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"portrait seed (default {DEFAULT_SEED})")
    parser.add_argument("--size", type=int, default=257, help="portrait side the model sees (default 257)")
    parser.add_argument("--panel", type=int, default=224, help="side of each shown panel (default 224)")
    parser.add_argument("--color", default="red", help="target colour, as the webcam app's --color (default red)")
    parser.add_argument("--strength", type=float, default=0.8, help="colour strength (default 0.8, the app's)")
    args = parser.parse_args(argv)
    picture, iou = portrait_panels(args.model, args.seed, args.size, args.panel, args.color, args.strength)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.output), picture[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"{args.output}: {picture.shape[1]}x{picture.shape[0]}, seed {args.seed}, hair IoU {iou:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
