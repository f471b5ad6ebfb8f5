#!/usr/bin/env python
"""Flicker benchmark: temporal smoothers of the webcam app on shake videos made from real stills.

Each of ``--images`` test stills (evenly spaced through the split) becomes a ``--frames`` video under small
seeded camera shake (``hairseg_core.deploy.temporal.shake_video``: AR(1) translation <= 2 px, rotation <= 1 deg,
zoom <= 1 %, Gaussian sensor noise ``--noise`` grey levels), with the ground-truth mask warped alike. The
model runs once per frame the way the app runs it (letterbox at the export's input size); every smoother
then gets the same probabilities. Per smoother:

* flicker: mean fraction of pixels whose hair decision (>= 0.5) flips between consecutive frames, out of
  the pixels whose ground truth stays the same (hair that truly moved is not flicker; a perfect segmenter
  scores 0), over the whole frame and in a ``--band`` px band around the ground-truth boundary;
* IoU: mean per-frame hair IoU against the warped ground truth (lag under motion shows up here);
* ms: median cost of one ``update`` call of the smoother alone on one frame.

The title line states the true motion (fraction of pixels whose ground truth flips per frame). The last
line is JSON. "best" is the smoother with the lowest boundary flicker whose IoU is at most
``--iou-tolerance`` below ``none``'s. torch, ONNX Runtime and OpenCV use one thread.

    python benchmarks/flicker.py --model exports/<sweep> --data ../shared/data/celeb1k/test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from hairseg_core.deploy.inference import load_predictor  # noqa: E402
from hairseg_core.deploy.temporal import (  # noqa: E402
    DEFAULT_SMOOTHER,
    SMOOTHERS,
    ShakeSettings,
    Smoother,
    compare_smoothers,
    ground_truth_floor,
    shake_video,
    true_motion,
)
from hairseg_core.deploy.web.smoothing import WebFlowEma  # noqa: E402

DEFAULT_SMOOTHERS = (
    "none",
    "ema",
    "ema:momentum=0.8",
    "hysteresis",
    "hysteresis:low=0.25,high=0.75",
    "gated",
    "gated_hysteresis",
    "flow_ema",
    "flow_ema:momentum=0.5",
    "flow_ema:momentum=0.7",
    "flow_ema:flow_scale=0.25",
)


def parse_smoother(spec: str) -> tuple[str, dict[str, float]]:
    """``"name"`` or ``"name:key=value,key=value"`` → (registry name, float parameters)."""
    name, _, rest = spec.partition(":")
    SMOOTHERS.get(name)  # UnknownNameError listing the names
    params = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--smoothers {spec!r}: expected key=value after ':'")
        params[key.strip()] = float(value)
    return name, params


def load_stills(split_dir: Path, count: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``count`` (name, RGB image, bool mask) evenly spaced through ``split_dir/images`` + ``masks``."""
    images = sorted(p for p in (split_dir / "images").iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not images:
        raise SystemExit(f"--data {split_dir}: no images/ found")
    picks = np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int)
    stills = []
    for index in picks:
        path = images[index]
        mask = cv2.imread(str(split_dir / "masks" / f"{path.stem}.png"), cv2.IMREAD_GRAYSCALE)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if mask is None or image is None:
            raise SystemExit(f"{path}: image or its mask masks/{path.stem}.png is missing or unreadable")
        stills.append((path.stem, cv2.cvtColor(image, cv2.COLOR_BGR2RGB), mask > 127))
    return stills


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows → a Markdown table (pasted as is into benchmarks/README.md); floats to 4 significant places."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "-" if value != value else f"{value:.4g}"
        return str(value)

    columns = list(rows[0])
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if c in ("smoother", "params") else "---:" for c in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="export dir, .onnx/.ts/.pt file or a training checkpoint.pt")
    parser.add_argument("--backend", choices=["onnx", "torchscript", "eager"], default=None)
    parser.add_argument("--data", type=Path, required=True, help="split dir with images/ and masks/")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--noise", type=float, default=2.0, help="sensor noise std in grey levels (default 2)")
    parser.add_argument("--band", type=int, default=5, help="boundary band half-width in px (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--smoothers", nargs="+", default=list(DEFAULT_SMOOTHERS), help="name[:key=value,...]; web_flow_ema: the page's"
    )
    parser.add_argument("--iou-tolerance", type=float, default=0.001, help="IoU loss allowed vs none for 'best'")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    predictor = load_predictor(args.model, args.backend, intra_op_threads=1)
    stills = load_stills(args.data, args.images)
    settings = ShakeSettings(noise_std=args.noise)
    videos = [shake_video(img, mask, args.frames, settings, args.seed + i) for i, (_, img, mask) in enumerate(stills)]
    predictor(videos[0].frames[0])  # warm-up (ORT arena, first-call allocations)
    net_seconds, prob_videos = [], []
    for video in videos:
        probs = []
        for frame in video.frames:
            start = time.perf_counter()
            probs.append(predictor(frame))  # the app's path: letterbox, network, back to the frame size
            net_seconds.append(time.perf_counter() - start)
        prob_videos.append(probs)

    builders: dict[str, Any] = {}
    for spec in args.smoothers:
        if spec == "web_flow_ema":  # the browser page's smoother (hairseg_core/deploy/web/smoothing.py), at its grid
            builders[spec] = lambda: WebFlowEma(size=predictor.input_size)
            continue
        name, params = parse_smoother(spec)

        def build(name: str = name, params: dict[str, float] = params) -> Smoother:
            return SMOOTHERS.build(name, **params)

        builders[spec] = build
    results = compare_smoothers(prob_videos, videos, builders, args.band)
    motion = true_motion(videos, args.band)
    floor = ground_truth_floor(videos, args.band).summary()

    rows = [result.row() for result in results.values()]
    none_iou = results["none"].scores.iou if "none" in results else max(r["iou"] for r in rows)
    eligible = [r for r in rows if r["iou"] >= none_iou - args.iou_tolerance]
    best = min(eligible, key=lambda r: r["flicker_boundary"])["smoother"] if eligible else None
    table = [
        {
            "smoother": r["smoother"],
            "params": r["params"],
            "flicker_%": 100 * r["flicker"],
            "boundary_flicker_%": 100 * r["flicker_boundary"],
            "iou": r["iou"],
            "ms_per_frame": r["ms"],
        }
        for r in rows
    ]
    table.append(
        {
            "smoother": "perfect segmenter",
            "params": "floor: warped coverage of the true mask",
            "flicker_%": 100 * floor["flicker"],
            "boundary_flicker_%": 100 * floor["flicker_boundary"],
            "iou": floor["iou"],
            "ms_per_frame": float("nan"),
        }
    )
    height, width = videos[0].frames[0].shape[:2]
    network_ms = 1000 * float(np.median(net_seconds))
    title = (
        f"flicker on {len(videos)} shake videos x {args.frames} frames ({width}x{height}, noise {args.noise:g}, "
        f"band {args.band} px; the truth flips {motion['motion']:.2%} of pixels per frame, "
        f"{motion['motion_boundary']:.2%} of the band); model {args.model} "
        f"({predictor.backend}, letterbox {predictor.input_size}, "
        f"{network_ms:.1f} ms/frame)"
    )
    print(title)
    print(markdown_table(table))
    print(f"best (lowest boundary flicker, IoU within {args.iou_tolerance:g} of none): {best}")
    print(f"app default (hairseg_core.deploy.temporal.DEFAULT_SMOOTHER): {DEFAULT_SMOOTHER}")
    result = {
        "model": str(args.model),
        "backend": predictor.backend,
        "input_size": predictor.input_size,
        "images": [name for name, _, _ in stills],
        "frames": args.frames,
        "frame_hw": [height, width],
        "noise": args.noise,
        "band_px": args.band,
        "seed": args.seed,
        "network_ms": network_ms,
        "rows": rows,
        "true_motion": motion,
        "floor": floor,
        "best": best,
        "default": DEFAULT_SMOOTHER,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": 1},
    }
    line = json.dumps(result, default=float)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
