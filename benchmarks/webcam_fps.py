#!/usr/bin/env python
"""Webcam speed benchmark: model-only and end-to-end frame rates of every inference back-end.

For each model variant (the paper's MobileNetV2 DeepLabv3+ with 256-channel ASPP/decoder, and a lighter
webcam variant: MobileNetV3-Large, output stride 16, 128-channel ASPP, 64-channel decoder) and each input
size, the same webcam-like 640x480 frames go through:

  eager (NCHW) | eager channels-last | TorchScript (traced) | ONNX Runtime fp32 (ORT_ENABLE_ALL)
  | ONNX int8 dynamic (weights int8, activations quantised on the fly) | ONNX int8 static (QDQ, calibrated)

Reported per row: median model-only ms/frame on the letterboxed input, fps, speed-up over eager PyTorch,
and the end-to-end fps of the whole app loop (BGR→RGB, letterbox + normalise, model, probability back to
640x480, EMA smoothing, Lab recolouring, RGB→BGR). Timing is interleaved across back-ends (one call of
each per round) so that load from other processes on a shared machine hits every row alike.

int8 quality: the speed variants have random weights (nothing is downloaded), so for them only the
numerical agreement of int8 with fp32 is printed (max/mean |Δprob|; not accuracy). With ``--checkpoint`` (a
trained model) and ``--miou-data`` (a split folder with images/ and masks/), the same model is exported and
quantised and the mIoU of fp32 vs int8 ONNX on that split is reported, with pixel agreement; a speed variant
with the checkpoint's architecture then also runs with the trained weights, so its end-to-end numbers colour a
realistic hair area instead of the whole frame (random weights give p ≈ 0.5 everywhere).

    python benchmarks/webcam_fps.py --data ../shared/data/celeb1k/val --threads 2 \
        --checkpoint runs/light/checkpoint.pt --miou-data ../shared/data/celeb1k/val --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from hairseg_core.artifact import ModelMetadata, load_model, normalize_image, read_checkpoint, read_metadata  # noqa: E402
from hairseg_core.deploy.coloring import recolor  # noqa: E402
from hairseg_core.deploy.inference import BACKENDS, HairPredictor, OnnxRunner, Preprocessor, unletterbox  # noqa: E402
from hairseg_core.deploy.latency import LatencyStats, interleaved_times, latency_stats  # noqa: E402
from hairseg_core.deploy.temporal import EmaSmoother  # noqa: E402
from hairseg_core.deploy.webcam import colour_frame  # noqa: E402
from hairseg_core.final.export import export_all, synthetic_portrait  # noqa: E402
from hairseg_core.models import build_model  # noqa: E402
from hairseg_core.scaling import effective_eval_size  # noqa: E402
from hairseg_core.train.trainer import recalibrate_batchnorm as precise_bn  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "mnv2-256": {"backbone": "mobilenet_v2", "output_stride": 16, "aspp_channels": 256, "decoder_channels": 256},
    "webcam-mnv3": {
        "backbone": "mobilenet_v3_large",
        "output_stride": 16,
        "aspp_channels": 128,
        "decoder_channels": 64,
    },
}
BACKEND_ROWS = (
    "eager",
    "eager-channels-last",
    "torchscript",
    "onnx",
    "onnx-int8-dynamic",
    "onnx-int8-static",
)
FRAME_HW = (480, 640)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


# ----------------------------------------------------------------------------------------------- frames


def _to_webcam_frame(rgb: np.ndarray) -> np.ndarray:
    """Resize to cover 640x480 and centre-crop: a 4:3 frame like a webcam's."""
    height, width = FRAME_HW
    scale = max(height / rgb.shape[0], width / rgb.shape[1])
    resized = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)))
    top, left = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width])


def load_frames(data: Path | None, count: int) -> tuple[list[np.ndarray], str]:
    """``count`` BGR 640x480 frames from the images under ``data`` (else synthetic portraits)."""
    if data is not None:
        files = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and "mask" not in str(p))
        files = files[:count]
        if files:
            frames = [cv2.cvtColor(_to_webcam_frame(cv2.imread(str(p))[..., ::-1]), cv2.COLOR_RGB2BGR) for p in files]
            return frames, f"{len(frames)} images from {data}, resized/cropped to 640x480"
    frames = [cv2.cvtColor(synthetic_portrait(*FRAME_HW, seed=i), cv2.COLOR_RGB2BGR) for i in range(count)]
    return frames, f"{count} synthetic 640x480 portraits (no --data given or no images found)"


# ---------------------------------------------------------------------------------------- quantisation


class _Calibration:
    """onnxruntime CalibrationDataReader over letterboxed frames (the app's exact preprocessing)."""

    def __init__(self, batches: list[np.ndarray], input_name: str) -> None:
        self._items = iter([{input_name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def quantize(onnx_path: Path, calibration: list[np.ndarray]) -> dict[str, Path]:
    """int8 dynamic and static (QDQ, per-channel weights, uint8 activations) versions of ``onnx_path``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Calibration, CalibrationDataReader):
        pass

    pre = onnx_path.with_name("model.pre.onnx")
    # symbolic shape inference cannot follow the dynamic resize chain; ONNX shape inference suffices here.
    # quant_pre_process writes scratch files (sym_shape_infer_temp.onnx + external data) into the current
    # directory: run it inside the output folder so they never land in the caller's checkout.
    with contextlib.chdir(onnx_path.parent):
        quant_pre_process(str(onnx_path.resolve()), str(pre.resolve()), skip_symbolic_shape=True)
    dynamic = onnx_path.with_name("model.int8-dynamic.onnx")
    quantize_dynamic(str(pre), str(dynamic), weight_type=QuantType.QUInt8)
    static = onnx_path.with_name("model.int8-static.onnx")
    quantize_static(
        str(pre),
        str(static),
        Reader(calibration, "input"),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return {"onnx-int8-dynamic": dynamic, "onnx-int8-static": static}


# -------------------------------------------------------------------------------------------- timing


def interleaved_stats(calls: dict[str, Callable[[int], object]], rounds: int, warmup: int) -> dict[str, LatencyStats]:
    """``hairseg_core.deploy.latency.interleaved_times`` (one call of each per round, shuffled), summarised."""
    return {name: latency_stats(t) for name, t in interleaved_times(calls, rounds, warmup).items()}


def app_step(predictor: HairPredictor, smoother: EmaSmoother, frame_bgr: np.ndarray) -> np.ndarray:
    """One iteration of the webcam app's loop (``hairseg_core.deploy.webcam.run_loop``), minus display and file
    output: the library's own per-frame step, red at strength 0.8."""
    return colour_frame(predictor, smoother, frame_bgr, "red", 0.8)


def stage_breakdown(frames: list[np.ndarray], size: int, rounds: int) -> dict[str, float]:
    """Median ms of the non-model stages at ``size`` (independent of the back-end)."""
    pre = Preprocessor(ModelMetadata(input_size=size))
    rgbs = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames]
    boxes = [pre(r)[1] for r in rgbs]
    rng = np.random.default_rng(0)
    fake = rng.random((size, size), dtype=np.float32)
    probs = [unletterbox(fake, b) for b in boxes]
    smoother = EmaSmoother(0.5)
    hair = _hair_blob(*FRAME_HW)
    stages = {
        "bgr<->rgb": lambda i: (
            cv2.cvtColor(frames[i % len(frames)], cv2.COLOR_BGR2RGB),
            cv2.cvtColor(rgbs[i % len(rgbs)], cv2.COLOR_RGB2BGR),
        ),
        "letterbox+normalise": lambda i: pre(rgbs[i % len(rgbs)]),
        "prob->frame": lambda i: unletterbox(fake, boxes[i % len(boxes)]),
        "ema": lambda i: smoother(probs[i % len(probs)]),
        "recolour": lambda i: recolor(rgbs[i % len(rgbs)], hair, "red", 0.8),
    }
    return {k: round(v.median_ms, 2) for k, v in interleaved_stats(stages, rounds, 2).items()}


def _hair_blob(height: int, width: int) -> np.ndarray:
    """A soft head-of-hair probability map (~20% of a 640x480 frame), for timing the recolouring."""
    blob = np.zeros((height, width), np.float32)
    cv2.ellipse(blob, (width // 2, height * 2 // 5), (width // 5, height // 3), 0, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(blob, (0, 0), 6)


# ------------------------------------------------------------------------------------------- quality


def agreement(reference: Callable, other: Callable, batches: list[np.ndarray]) -> dict[str, float]:
    """Argmax pixel agreement and |Δprob| between two runners on the same batches."""
    agree, max_abs, mean_abs = [], 0.0, []
    for batch in batches:
        a, b = np.asarray(reference(batch)), np.asarray(other(batch))
        if a.ndim == 2:  # predictors return HxW hair probabilities
            a, b = np.stack([1 - a, a])[None], np.stack([1 - b, b])[None]
        agree.append(float(np.mean(a.argmax(1) == b.argmax(1))))
        diff = np.abs(a[:, 1] - b[:, 1])
        max_abs = max(max_abs, float(diff.max()))
        mean_abs.append(float(diff.mean()))
    return {
        "pixel_agreement": float(np.mean(agree)),
        "max_abs_dprob": max_abs,
        "mean_abs_dprob": float(np.mean(mean_abs)),
    }


def miou_on_folder(
    predictors: dict[str, HairPredictor], split_dir: Path, limit: int | None, reference: str
) -> dict[str, Any]:
    """mIoU of each predictor (whole-image letterbox pipeline, hair where p > 0.5) on images/ + masks/,
    plus each predictor's agreement with ``reference`` (argmax pixel agreement, max/mean |Δp|)."""
    from hairseg_core.train.metrics import ConfusionMatrix

    images = sorted((split_dir / "images").glob("*"))[:limit]
    if not images:
        raise SystemExit(f"--miou-data {split_dir}: no images/ found for the mIoU check")
    matrices = {name: ConfusionMatrix(2) for name in predictors}
    agree: dict[str, list[float]] = {name: [] for name in predictors}
    mean_abs: dict[str, list[float]] = {name: [] for name in predictors}
    max_abs = dict.fromkeys(predictors, 0.0)
    for image_path in images:
        mask_path = split_dir / "masks" / f"{image_path.stem}.png"
        mask = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise SystemExit(f"{mask_path}: mask missing or unreadable")
        rgb = cv2.imread(str(image_path))[..., ::-1].copy()
        target = (mask > 127).astype(np.int64)
        probs = {name: predictor(rgb) for name, predictor in predictors.items()}
        for name, prob in probs.items():
            matrices[name].update((prob > 0.5).astype(np.int64), target)
            diff = np.abs(prob - probs[reference])
            agree[name].append(float(np.mean((prob > 0.5) == (probs[reference] > 0.5))))
            mean_abs[name].append(float(diff.mean()))
            max_abs[name] = max(max_abs[name], float(diff.max()))
    return {
        "images": len(images),
        "miou": {name: round(float(m.compute()["miou"]), 4) for name, m in matrices.items()},
        "agreement_vs_fp32": {
            name: {
                "pixel_agreement": round(float(np.mean(agree[name])), 5),
                "max_abs_dprob": round(max_abs[name], 4),
                "mean_abs_dprob": round(float(np.mean(mean_abs[name])), 5),
            }
            for name in predictors
            if name != reference
        },
    }


def recalibrate_batchnorm(model: torch.nn.Module, image_dir: Path, count: int, size: int) -> int:
    """Precise BN (``hairseg_core.train.trainer.recalibrate_batchnorm``) from ``count`` images resized to ``size``.

    A very short from-scratch CPU run leaves running statistics that lag far behind the weights, and the
    eval-mode network then predicts one class everywhere; averaging exact batch statistics over some
    training images fixes that without changing any weight. Returns the images used.
    """
    files = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and "mask" not in str(p))
    files = files[:count]
    if not files:
        raise SystemExit(f"--recalibrate-bn {image_dir}: no images found")
    batches = (
        torch.cat(
            [
                normalize_image(cv2.resize(cv2.imread(str(f))[..., ::-1].copy(), (size, size)))
                for f in files[start : start + 8]
            ]
        )
        for start in range(0, len(files), 8)
    )
    precise_bn(model, batches)
    model.eval()
    return len(files)


# ---------------------------------------------------------------------------------------------- main


def benchmark_variant(
    name: str,
    model: torch.nn.Module,
    frames: list[np.ndarray],
    sizes: list[int],
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    out_dir = workdir / name
    started = time.perf_counter()
    exported = export_all(model, out_dir, input_size=sizes[0], latency_repeats=1)
    rgb_frames = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames]
    calibration = [
        Preprocessor(ModelMetadata(input_size=sizes[0]))(rgb)[0].copy() for rgb in rgb_frames[: args.calibration]
    ]
    quantised = quantize(exported["onnx"], calibration)
    export_seconds = time.perf_counter() - started

    files = {
        "eager": exported["checkpoint"],
        "eager-channels-last": exported["checkpoint"],
        "torchscript": exported["torchscript"],
        "onnx": exported["onnx"],
        **quantised,
    }

    def runner(row: str):
        if row.startswith("onnx"):
            return OnnxRunner(files[row], intra_op_threads=args.threads)
        return BACKENDS.build(row.split("-")[0], files[row], channels_last=row == "eager-channels-last")

    runners = {row: runner(row) for row in BACKEND_ROWS}
    metadata = read_metadata(out_dir)
    result: dict[str, Any] = {
        "config": dict(model.config),
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "onnx_exporter": exported["onnx_exporter"],
        "parity": exported["parity"],
        "export_and_quantise_s": round(export_seconds, 1),
        "sizes": {},
    }
    for size in sizes:
        size_meta = dataclasses.replace(metadata, input_size=size)
        preprocess = Preprocessor(size_meta)
        batches = [preprocess(rgb)[0].copy() for rgb in rgb_frames]
        predictors = {row: HairPredictor(r, size_meta) for row, r in runners.items()}
        smoothers = {row: EmaSmoother(0.5) for row in runners}
        calls: dict[str, Callable[[int], object]] = {}
        for row, r in runners.items():  # model-only and end-to-end in the same rounds: same load for both
            calls[f"{row}|model"] = lambda i, r=r, b=batches: r(b[i % len(b)])
            calls[f"{row}|e2e"] = lambda i, p=predictors[row], s=smoothers[row]: app_step(p, s, frames[i % len(frames)])
        timed = interleaved_stats(calls, args.rounds, args.warmup)
        model_only = {row: timed[f"{row}|model"] for row in runners}
        end_to_end = {row: timed[f"{row}|e2e"] for row in runners}
        eager_ms = model_only["eager"].median_ms
        rows = {}
        for row in BACKEND_ROWS:
            ms = model_only[row].median_ms
            e2e = end_to_end[row].median_ms
            rows[row] = {
                "model_ms": round(ms, 2),
                "model_p90_ms": round(model_only[row].p90_ms, 2),
                "model_fps": round(1000.0 / ms, 1),
                "speedup_vs_eager": round(eager_ms / ms, 2),
                "e2e_ms": round(e2e, 2),
                "e2e_fps": round(1000.0 / e2e, 1),
            }
        quality = {
            row: agreement(runners["onnx"], runners[row], batches) for row in ("onnx-int8-dynamic", "onnx-int8-static")
        }
        result["sizes"][size] = {
            "rows": rows,
            "stages_ms": stage_breakdown(frames, size, args.rounds),
            "int8_agreement_vs_fp32": quality,
        }
        print(f"[{name} @ {size}] done", file=sys.stderr)
    return result


def format_tables(results: dict[str, Any]) -> str:
    lines = []
    for name, res in results["variants"].items():
        cfg = res["config"]
        lines.append(
            f"\n**{name}** ({cfg['backbone']}, OS {cfg['output_stride']}, ASPP {cfg['aspp_channels']}, "
            f"decoder {cfg['decoder_channels']}; {res['parameters_m']} M params; ONNX via {res['onnx_exporter']}; "
            f"{res['weights']})\n"
        )
        lines.append("| input | back-end | model ms | model fps | × eager | end-to-end ms | end-to-end fps |")
        lines.append("|---|---|---:|---:|---:|---:|---:|")
        for size, block in res["sizes"].items():
            for row, r in block["rows"].items():
                lines.append(
                    f"| {size} | {row} | {r['model_ms']:.1f} | {r['model_fps']:.1f} | {r['speedup_vs_eager']:.2f} "
                    f"| {r['e2e_ms']:.1f} | {r['e2e_fps']:.1f} |"
                )
        lines.append("\nnon-model stages (ms, 640x480 frame): ")
        for size, block in res["sizes"].items():
            lines.append(f"- {size}: " + ", ".join(f"{k} {v}" for k, v in block["stages_ms"].items()))
        lines.append(f"\nint8 vs fp32 ONNX on the frames ({res['weights']}; agreement, not accuracy):")
        for size, block in res["sizes"].items():
            for row, q in block["int8_agreement_vs_fp32"].items():
                argmax = "" if res["weights"] == "random init" else f"argmax agreement {q['pixel_agreement']:.4f}, "
                lines.append(
                    f"- {size} {row}: {argmax}max |Δp| {q['max_abs_dprob']:.4f}, mean |Δp| {q['mean_abs_dprob']:.5f}"
                )
        if res["weights"] == "random init":
            lines.append("  (random weights give p ≈ 0.5 everywhere, so argmax agreement would be meaningless)")
    if "int8_miou" in results:
        block = results["int8_miou"]
        lines.append(f"\nint8 vs fp32 on a trained model ({block['source']}, {block['images']} images):")
        if "bn_recalibration" in results:
            lines.append(f"(BatchNorm statistics recomputed first on {results['bn_recalibration']})")
        lines.append("\n| model | mIoU | pixel agreement with fp32 | max abs dp | mean abs dp |")
        lines.append("|---|---:|---:|---:|---:|")
        for name, miou in block["miou"].items():
            q = block["agreement_vs_fp32"].get(name)
            extra = (
                f"{q['pixel_agreement']:.4f} | {q['max_abs_dprob']:.3f} | {q['mean_abs_dprob']:.4f}"
                if q
                else "- | - | -"
            )
            lines.append(f"| {name} | {miou:.4f} | {extra} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="folder of images for frames (e.g. .../celeb1k/val)")
    parser.add_argument("--frames", type=int, default=16, help="number of distinct frames (default 16)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 257])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=20, help="timed calls per back-end (default 20)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--calibration", type=int, default=8, help="frames for static int8 calibration")
    parser.add_argument("--checkpoint", type=Path, default=None, help="trained checkpoint for the int8 mIoU check")
    parser.add_argument("--miou-data", type=Path, default=None, help="split dir with images/ masks/ for mIoU")
    parser.add_argument(
        "--miou-size",
        type=int,
        default=None,
        help="input size for the mIoU check (default: the checkpoint's eval_size / crop_size)",
    )
    parser.add_argument("--miou-limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument(
        "--recalibrate-bn",
        type=Path,
        default=None,
        help="recompute the checkpoint's BatchNorm statistics on images of this folder first (for very short runs)",
    )
    parser.add_argument("--recalibrate-images", type=int, default=160)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.simplefilter("ignore")
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization logs every tensor it skips
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    frames, frame_source = load_frames(args.data, args.frames)
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "n/a"
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "load_average_at_start": load,
        "torch": torch.__version__,
        "frames": frame_source,
        "command": "python benchmarks/webcam_fps.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "variants": {},
    }
    with tempfile.TemporaryDirectory(prefix="webcam_fps_") as tmp:
        trained = load_model(args.checkpoint, "eager") if args.checkpoint is not None else None
        state = read_checkpoint(args.checkpoint) if args.checkpoint is not None else {}
        train_config = state.get("train_config") or {}
        if trained is not None and args.recalibrate_bn is not None:
            size = effective_eval_size(train_config) if train_config else args.sizes[0]  # as the trainer's precise BN
            used = recalibrate_batchnorm(trained, args.recalibrate_bn, args.recalibrate_images, size)
            results["bn_recalibration"] = f"{used} images of {args.recalibrate_bn} at {size}x{size}"
        for name in args.variants:
            spec = VARIANTS[name]
            if trained is not None and all(trained.config.get(k) == v for k, v in spec.items()):
                model, weights = trained, f"trained checkpoint {args.checkpoint}"
            else:
                model, weights = build_model(**spec, pretrained="none").eval(), "random init"
            results["variants"][name] = benchmark_variant(name, model, frames, args.sizes, args, Path(tmp))
            results["variants"][name]["weights"] = weights
        if args.checkpoint is not None:
            if args.miou_data is None:
                raise SystemExit("--checkpoint needs --miou-data (a split dir with images/ and masks/)")
            results["int8_miou"] = int8_miou(args, trained, train_config, frames, Path(tmp))
    try:
        results["load_average_at_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        pass
    print(format_tables(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


def int8_miou(
    args: argparse.Namespace,
    model: torch.nn.Module,
    train_config: dict[str, Any],
    frames: list[np.ndarray],
    workdir: Path,
) -> dict[str, Any]:
    """fp32 vs int8 (dynamic, static) ONNX mIoU of a trained checkpoint on a labelled split."""
    # evaluate at the size the model was validated at in training, unless told otherwise
    size = int(args.miou_size or (effective_eval_size(train_config) if train_config else args.sizes[0]))
    exported = export_all(model, workdir / "checkpoint", input_size=size, latency_repeats=1)
    metadata = ModelMetadata(input_size=size, model_config=dict(model.config))
    rgb = [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames[: args.calibration]]
    quantised = quantize(exported["onnx"], [Preprocessor(metadata)(r)[0].copy() for r in rgb])
    predictors = {
        "onnx-fp32": HairPredictor(OnnxRunner(exported["onnx"], args.threads), metadata),
        **{k: HairPredictor(OnnxRunner(p, args.threads), metadata) for k, p in quantised.items()},
    }
    return {
        "source": f"{args.checkpoint} on {args.miou_data} at input {size}",
        "model_config": dict(model.config),
        **miou_on_folder(predictors, args.miou_data, args.miou_limit, reference="onnx-fp32"),
    }


if __name__ == "__main__":
    sys.exit(main())
