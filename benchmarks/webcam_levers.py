#!/usr/bin/env python
"""Webcam latency levers on one core: ms per frame of MobileNetV2-DeepLabv3+ variants, fp32 and int8.

What it times is what the webcam app runs per frame with an export directory: ``HairPredictor`` on an
ONNX Runtime session (letterbox + ImageNet normalisation, the network, the hair probability back to the
frame's size), on real portraits, one intra-op thread, the process pinned to one CPU. Every row runs
once per round on the same image, rows shuffled each round (``deploy.latency.interleaved_times``), so
background load hits all rows alike; medians are reported with the ratio to the first row.

Rows: each ``--variant ASPP/DECODER@SIZE`` (ImageNet MobileNetV2 backbone from ``--weights`` when given,
random head: latency does not depend on the values) exported to fp32 ONNX and to static int8 QDQ
(``hairseg_core.deploy.quantize``, calibrated on 32 letterboxed training portraits); each ``--export
NAME=DIR`` is a real export directory run as its ``model.json`` says (the laptop champion, a webcam export);
``--int8-of NAME`` adds that export's fp32 graph quantised here (the "int8 alone" lever on a trained model).

With ``--test NAME=SPLIT_DIR`` (repeatable: a folder with images/ and masks/) every export row is also
scored the way ``hairseg evaluate`` scores an export (network at its trained scale, metrics on the
full-resolution masks) with a 95 % paired-bootstrap interval over images, and its video flicker on shake
videos of 3 test portraits (``deploy.temporal.video_stability``, the final stage's figure).

    python benchmarks/webcam_levers.py --data ../shared/data/celeb1k/val/images \
        --calibration ../shared/data/celeb1k/train/images --weights ../shared/weights/mobilenet_v2-b0353104.pth \
        --variant 128/128@193 --variant 128/128@160 --variant 64/48@176 --rounds 100 --json levers.json
    python benchmarks/webcam_levers.py --data ../shared/data/celeb1k/test/images \
        --calibration ../shared/data/celeb1k/train/images --export laptop=exports/<laptop sweep> \
        --int8-of laptop --export webcam=exports/<webcam_laptop sweep> \
        --test celeb1k=../shared/data/celeb1k/test --test figaro1k=../shared/data/figaro1k/test
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from hairseg_core.artifact import ModelMetadata, read_metadata
from hairseg_core.deploy.inference import HairPredictor, OnnxRunner, load_predictor
from hairseg_core.deploy.latency import describe_machine, interleaved_times, machine_info
from hairseg_core.deploy.quantize import calibration_batches, quantize_static_int8
from hairseg_core.deploy.temporal import video_stability
from hairseg_core.final.bootstrap import PerImageCounts, bootstrap_weights, metric_interval
from hairseg_core.final.export import export_onnx
from hairseg_core.models import build_model
from hairseg_core.train.metrics import SegmentationMetrics

VARIANT = re.compile(r"^(\d+)/(\d+)@(\d+)$")


def read_images(folder: Path, count: int) -> list[np.ndarray]:
    """The first ``count`` images of ``folder`` (sorted by name) as RGB uint8."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[:count]
    if not files:
        sys.exit(f"{folder}: no .jpg/.png images")
    return [cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in files]


def variant_rows(spec: str, weights: str, calibration: list[np.ndarray], work: Path) -> dict[str, HairPredictor]:
    """fp32 and int8 predictors of one ``ASPP/DECODER@SIZE`` variant."""
    match = VARIANT.match(spec)
    if match is None:
        sys.exit(f"--variant {spec!r}: expected ASPP/DECODER@SIZE, e.g. 128/128@193")
    aspp, decoder, size = (int(g) for g in match.groups())
    model = build_model("mobilenet_v2", 16, pretrained=weights, aspp_channels=aspp, decoder_channels=decoder)
    fp32 = work / f"{aspp}-{decoder}-{size}.onnx"
    export_onnx(model, fp32, example_size=size)
    int8 = quantize_static_int8(fp32, fp32.with_suffix(".int8.onnx"), calibration_batches(calibration, size))
    metadata = ModelMetadata(input_size=size, train_scale=size)
    return {
        f"mnv2 {aspp}/{decoder} @{size} fp32": HairPredictor(OnnxRunner(fp32, intra_op_threads=1), metadata),
        f"mnv2 {aspp}/{decoder} @{size} int8": HairPredictor(OnnxRunner(int8, intra_op_threads=1), metadata),
    }


def int8_copy(folder: Path, calibration: list[np.ndarray], work: Path) -> Path:
    """A copy of export ``folder`` whose ``onnx`` entry is its fp32 graph quantised here."""
    meta = read_metadata(folder)
    out = work / f"{folder.name}-int8"
    out.mkdir()
    fp32 = folder / meta.files.get("onnx_fp32", meta.files.get("onnx", "model.onnx"))
    shutil.copy2(fp32, out / "model.onnx")
    quantize_static_int8(out / "model.onnx", out / "model.int8.onnx", calibration_batches(calibration, meta.input_size))
    data = json.loads((folder / "model.json").read_text())
    data["export"]["files"] = {"onnx": "model.int8.onnx", "onnx_fp32": "model.onnx"}
    (out / "model.json").write_text(json.dumps(data, indent=2))
    return out


def fp32_copy(folder: Path, work: Path) -> Path:
    """A view of an int8 export whose ``onnx`` entry is its fp32 graph (the "before int8" step)."""
    out = work / f"{folder.name}-fp32"
    out.mkdir()
    (out / "model.onnx").symlink_to((folder / "model.onnx").resolve())
    data = json.loads((folder / "model.json").read_text())
    data["export"]["files"] = {"onnx": "model.onnx"}
    (out / "model.json").write_text(json.dumps(data, indent=2))
    return out


def read_split(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, RGB image, 0/1 mask) of a split folder with images/ and masks/ (masks: PNG, hair > 127)."""
    items = []
    for image_path in sorted((folder / "images").iterdir()):
        mask_path = folder / "masks" / f"{image_path.stem}.png"
        image = cv2.cvtColor(cv2.imread(str(image_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        mask = (cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 127).astype(np.int64)
        items.append((image_path.stem, image, mask))
    return items


def score(folder: Path, split: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """mIoU [95 % bootstrap interval] of an export on a split, at its trained scale, native-size metrics."""
    predictor = load_predictor(folder, backend="onnx", scale="auto")
    metrics, counts = SegmentationMetrics(num_classes=2), PerImageCounts()
    for name, image, mask in split:
        counts.record(metrics, (predictor(image) >= 0.5).astype(np.int64), mask, name)
    estimate = metric_interval(counts, bootstrap_weights(len(split), 2000, 0), "miou", 0.95)
    return {"miou": float(metrics.compute()["miou"]), "miou_lo": estimate.lo, "miou_hi": estimate.hi}


def quality(folders: dict[str, Path], tests: list[str]) -> dict[str, dict[str, float]]:
    """Each export row's test mIoU per ``--test`` split and its flicker on the first split's portraits."""
    splits = {}
    for item in tests:
        name, _, folder = item.partition("=")
        splits[name] = read_split(Path(folder))
    out: dict[str, dict[str, float]] = {}
    for row, folder in folders.items():
        out[row] = {}
        for name, split in splits.items():
            out[row].update({f"{name}_{k}": v for k, v in score(folder, split).items()})
        first = next(iter(splits.values()))
        stability = video_stability(load_predictor(folder), [(img, mask) for _, img, mask in first[:3]])
        out[row].update(flicker=stability["flicker"], flicker_none=stability["flicker_none"])
        print(f"{row}: " + ", ".join(f"{k} {v:.4f}" for k, v in out[row].items()), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder of real portraits to time on")
    parser.add_argument("--calibration", type=Path, help="folder of training images for int8 calibration")
    parser.add_argument("--weights", default="none", help="ImageNet MobileNetV2 file for the variants")
    parser.add_argument("--variant", action="append", default=[], help="ASPP/DECODER@SIZE (repeatable)")
    parser.add_argument("--export", action="append", default=[], help="NAME=DIR of a real export (repeatable)")
    parser.add_argument("--int8-of", action="append", default=[], help="NAME of an --export to quantise here")
    parser.add_argument("--fp32-of", action="append", default=[], help="NAME of an int8 --export to run as fp32")
    parser.add_argument("--test", action="append", default=[], help="NAME=SPLIT_DIR to score exports on")
    parser.add_argument("--images", type=int, default=100, help="portraits to cycle through")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=0, help="the one CPU the process is pinned to")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    os.sched_setaffinity(0, {args.cpu})
    torch.set_num_threads(1)
    frames = read_images(args.data, args.images)
    calibration = read_images(args.calibration or args.data, 32)
    rows: dict[str, HairPredictor] = {}
    with tempfile.TemporaryDirectory(prefix="levers-") as tmp:
        folders = {name: Path(folder) for name, _, folder in (item.partition("=") for item in args.export)}
        for name in args.fp32_of:
            folders[f"{name} fp32 graph"] = fp32_copy(folders[name], Path(tmp))
        for name in args.int8_of:
            folders[f"{name} int8 (quantised here)"] = int8_copy(folders[name], calibration, Path(tmp))
        for name, folder in folders.items():
            rows[name] = load_predictor(folder, backend="onnx", intra_op_threads=1)
            meta = read_metadata(folder)
            print(f"{name}: {folder} ({meta.files.get('onnx', 'model.onnx')}, letterbox {meta.input_size})")
        for spec in args.variant:
            rows.update(variant_rows(spec, args.weights, calibration, Path(tmp)))
        calls = {name: (lambda i, p=p: p(frames[i % len(frames)])) for name, p in rows.items()}
        times = interleaved_times(calls, args.rounds, args.warmup)
        scores = quality(folders, args.test) if args.test else {}
    medians = {name: statistics.median(t) for name, t in times.items()}
    first = next(iter(medians.values()))
    print(f"\n{describe_machine(machine_info(1))}; pinned to CPU {args.cpu}; {len(frames)} portraits from {args.data}")
    print(f"{'row':<34} {'ms/frame':>9} {'p90':>7} {'vs first':>9}")
    for name, median in medians.items():
        p90 = float(np.percentile(times[name], 90))
        print(f"{name:<34} {median:9.2f} {p90:7.2f} {first / median:8.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"median_ms": medians, "quality": scores, "times_ms": times}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
