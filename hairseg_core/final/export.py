"""Export a trained DeepLabv3+ for deployment: TorchScript + ONNX + ``model.json``, with a parity check.

What the webcam app needs is a model that maps an ImageNet-normalised ``[B, 3, H, W]`` batch to hair
probabilities at *any* H, W (the bilinear upsampling to the input size must stay dynamic), plus a metadata
file that says how to build that batch from a camera frame. Both exported files therefore wrap the network
in :class:`ProbabilityModel` (softmax inside the graph, as the paper colours by softmax probability), and
every export is verified numerically against eager PyTorch before it is declared done:

* ``export_torchscript``: ``torch.jit.trace`` with ``check_inputs`` at a second batch size and an odd
  spatial size, so a trace that baked in a shape fails at export time, not in the app.
* ``export_onnx``: the ``torch.export``-based (dynamo) exporter with dynamic batch/height/width; if it
  fails, cannot produce the requested opset, or its graph does not run at other sizes, the TorchScript-based
  exporter with ``dynamic_axes`` is used instead. Either result is run in onnxruntime at 224x224 (batch 1)
  and 257x257 (batch 3) and compared with eager PyTorch.
* ``parity_check``: max |Δprob| against eager on a real image at its own resolution; ``ExportParityError``
  above the tolerance (1e-4 by default).

The default opset is 18 because the dynamo exporter has no lower-opset implementations (asking it for 17
silently yields 18 after a failed down-conversion); pass ``opset=17`` to get a true opset-17 file from the
TorchScript-based exporter.

This module writes the artifact; what the files contain (checkpoint format, ``model.json`` schema, the
normaliser, ``ProbabilityModel``) and how they are read back is defined in ``hairseg_core.artifact``. The
latency recorded in ``model.json`` is ``latency.measure_latency`` of each ``inference`` back-end.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hairseg_core.artifact import (
    DEFAULT_FILES,
    EXPORT_CHECKPOINT_FORMAT,
    ModelMetadata,
    ProbabilityModel,
    load_model,
    model_config_of,
    normalize_image,
    synthetic_portrait,
)
from hairseg_core.deploy.inference import BACKENDS, HairPredictor, OnnxRunner
from hairseg_core.deploy.latency import measure_latency
from hairseg_core.deploy.quantize import calibration_batches, quantize_static_int8
from hairseg_core.scaling import DEFAULT_SIZE, check_scale, deploy_input_size, model_train_scale

DEFAULT_OPSET = 18
#: ``finalize.quantize`` values: ``int8`` makes the export's ``model.onnx`` entry a static int8 QDQ graph.
QUANTIZE_MODES = ("none", "int8")
INT8_ONNX = "model.int8.onnx"
DYNAMO_MIN_OPSET = 18
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """An export could not be produced or does not behave like the eager model."""


class ExportParityError(ExportError):
    """An exported model's probabilities differ from eager PyTorch by more than the tolerance."""


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    """Export from a CPU copy in eval mode so the caller's model keeps its device and train/eval state."""
    inner = model.model if isinstance(model, ProbabilityModel) else model
    return copy.deepcopy(inner).cpu().eval()


# ------------------------------------------------------------------------------------------- TorchScript


def _check_size(example_size: int) -> int:
    if example_size < 64:
        raise ValueError(f"example_size must be >= 64 (the network downsamples by 16-32), got {example_size}")
    return int(example_size)


def export_torchscript(model: nn.Module, path: str | Path, example_size: int = DEFAULT_SIZE) -> Path:
    """Trace ``ProbabilityModel(model)`` and save it to ``path`` (``.ts``).

    The trace is checked (``check_inputs``) at batch 2 and a non-square size that is not a multiple of the
    output stride; tracing records ``x.shape`` reads as graph ops, so the final upsampling stays dynamic.
    """
    size = _check_size(example_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = ProbabilityModel(_cpu_eval_copy(model)).eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(1, 3, size, size, generator=generator)
    check = torch.randn(2, 3, size * 3 // 4 + 1, size + 31, generator=generator)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still supported
        try:
            traced = torch.jit.trace(wrapped, example, check_inputs=[(check,)], check_tolerance=1e-5)
        except Exception as exc:  # TracingCheckError and friends
            raise ExportError(f"TorchScript trace of {type(wrapped.model).__name__} failed its check: {exc}") from exc
        traced.save(str(path))
    return path


# ------------------------------------------------------------------------------------------------- ONNX


@dataclass(frozen=True)
class OnnxExport:
    """Where the ONNX file went and how it was made (recorded in ``model.json``)."""

    path: Path
    exporter: str  # "dynamo" or "torchscript"
    opset: int
    fallback_reason: str | None = None


def _onnx_opset(path: Path) -> int:
    # Deferred: the onnx protobuf package is needed only here, after an export, never at inference time.
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _verify_onnx_dynamic(path: Path, wrapped: nn.Module) -> None:
    """Run the file at (1, 224, 224) and (3, DEFAULT_SIZE, DEFAULT_SIZE) and compare with eager; ExportError if off.

    This guards the dynamic axes: a baked-in shape fails to run or is off by O(0.1). The tolerance is
    therefore 10x looser than :func:`parity_check`'s, which is the strict numerical check on a real image.
    """
    session = load_model(path, "onnx")
    name = session.get_inputs()[0].name
    for batch, size in ((1, 224), (3, DEFAULT_SIZE)):
        x = torch.cat([normalize_image(synthetic_portrait(size, size, seed=b)) for b in range(batch)])
        try:
            got = session.run(None, {name: x.numpy()})[0]
        except Exception as exc:
            raise ExportError(f"{path}: onnxruntime cannot run batch {batch} at {size}x{size}: {exc}") from exc
        if got.shape[0] != batch or got.shape[2:] != (size, size):
            raise ExportError(f"{path}: output shape {got.shape} for input {(batch, 3, size, size)}")
        with torch.no_grad():
            want = wrapped(x).numpy()
        diff = float(np.max(np.abs(got - want)))
        if diff > 10 * PARITY_TOLERANCE:
            raise ExportError(f"{path}: batch {batch} at {size}x{size} differs from eager by {diff:.2e}")


def _export_onnx_dynamo(wrapped: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=256)
    height = torch.export.Dim("height", min=64, max=4096)
    width = torch.export.Dim("width", min=64, max=4096)
    torch.onnx.export(
        wrapped,
        (example,),
        str(path),
        dynamo=True,
        opset_version=opset,
        input_names=["input"],
        output_names=["probs"],
        dynamic_shapes=({0: batch, 2: height, 3: width},),
        external_data=False,
        verbose=False,
    )


def _export_onnx_torchscript(wrapped: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(
        wrapped,
        (example,),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=["input"],
        output_names=["probs"],
        dynamic_axes={"input": axes, "probs": axes},
        do_constant_folding=True,
    )


def export_onnx(
    model: nn.Module, path: str | Path, opset: int = DEFAULT_OPSET, example_size: int = DEFAULT_SIZE
) -> OnnxExport:
    """Export ``ProbabilityModel(model)`` to ONNX with dynamic batch, height and width.

    Tries the dynamo exporter first, falls back to the TorchScript-based one (see module docstring); the
    returned :class:`OnnxExport` says which one produced the file and why a fallback happened.
    """
    size = _check_size(example_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = ProbabilityModel(_cpu_eval_copy(model)).eval()
    example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))

    reason: str | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter progress chatter and deprecation notices
        try:
            if opset < DYNAMO_MIN_OPSET:
                raise ExportError(f"the dynamo exporter implements opset >= {DYNAMO_MIN_OPSET} only")
            with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints progress lines
                _export_onnx_dynamo(wrapped, example, path, opset)
            got_opset = _onnx_opset(path)
            if got_opset != opset:
                raise ExportError(f"dynamo exporter produced opset {got_opset}, not the requested {opset}")
            _verify_onnx_dynamic(path, wrapped)
            return OnnxExport(path=path, exporter="dynamo", opset=got_opset)
        except Exception as exc:  # the fallback below is the documented plan B for any dynamo failure
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
        try:
            _export_onnx_torchscript(wrapped, example, path, opset)
            _verify_onnx_dynamic(path, wrapped)
        except Exception as exc:
            raise ExportError(
                f"ONNX export of {type(wrapped.model).__name__} to {path} failed with both exporters; "
                f"dynamo: {reason}; torchscript: {exc}"
            ) from exc
    return OnnxExport(path=path, exporter="torchscript", opset=_onnx_opset(path), fallback_reason=reason)


# ----------------------------------------------------------------------------------------------- parity


def _exported_probs(path: Path, x: torch.Tensor) -> np.ndarray:
    if path.suffix == ".onnx":
        session = load_model(path, "onnx")
        return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    if path.suffix == ".ts":
        with torch.no_grad():
            return load_model(path, "torchscript")(x).numpy()
    raise ValueError(f"{path}: parity_check knows .onnx and .ts files, not {path.suffix!r}")


def parity_check(
    model: nn.Module,
    exported_paths: Iterable[str | Path],
    image: np.ndarray,
    tolerance: float = PARITY_TOLERANCE,
) -> dict[str, float]:
    """Max |Δprob| between eager ``model`` and each exported file on ``image`` (HxWx3 uint8 RGB).

    The image is only normalised, not resized, so the check also covers sizes other than the example size
    used at export time. Returns ``{file name: max abs diff}``; raises :class:`ExportParityError` naming
    every file above ``tolerance``.
    """
    x = normalize_image(image)
    wrapped = ProbabilityModel(_cpu_eval_copy(model)).eval()
    with torch.no_grad():
        reference = wrapped(x).numpy()
    diffs: dict[str, float] = {}
    for raw in exported_paths:
        path = Path(raw)
        got = _exported_probs(path, x)
        if got.shape != reference.shape:
            raise ExportParityError(f"{path}: output shape {got.shape} != eager {reference.shape}")
        diffs[path.name] = float(np.max(np.abs(got - reference)))
    failed = {k: v for k, v in diffs.items() if not v < tolerance}
    if failed:
        detail = ", ".join(f"{k}: {v:.2e}" for k, v in failed.items())
        raise ExportParityError(
            f"exported probabilities differ from eager PyTorch by more than {tolerance:g} on a "
            f"{image.shape[1]}x{image.shape[0]} image: {detail}"
        )
    return diffs


# --------------------------------------------------------------------------------------------- metadata


def write_metadata(
    path: str | Path,
    *,
    input_size: int,
    model_config: Mapping[str, Any],
    metrics: Mapping[str, float] | None = None,
    onnx_opset: int | None = None,
    onnx_exporter: str | None = None,
    files: Mapping[str, str] | None = None,
    parity: Mapping[str, float] | None = None,
    latency_ms: Mapping[str, float] | None = None,
    preprocess: str = "letterbox",
    train_scale: int | None = None,
    quantization: Mapping[str, Any] | None = None,
) -> ModelMetadata:
    """Write ``model.json`` (ImageNet mean/std, class names, torch version and a UTC timestamp are filled in)."""
    metadata = ModelMetadata(
        input_size=int(input_size),
        train_scale=train_scale,
        model_config=dict(model_config),
        preprocess=preprocess,
        metrics={str(k): float(v) for k, v in (metrics or {}).items()},
        onnx_opset=onnx_opset,
        onnx_exporter=onnx_exporter,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        files=dict(files or {}),
        parity=dict(parity or {}),
        latency_ms=dict(latency_ms or {}),
        quantization=dict(quantization or {}),
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metadata.to_dict(), indent=2) + "\n")
    return metadata


# ------------------------------------------------------------------------------------------- everything


def save_checkpoint(model: nn.Module, path: str | Path, train_scale: int | None = None) -> Path:
    """Save ``{"format", "model_config", "model_state", "train_scale"}`` so the eager back-end can rebuild
    the model and run it at its trained scale (``train_scale`` defaults to the one attached to ``model``;
    None when unknown, which readers treat as "not recorded")."""
    inner = _cpu_eval_copy(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = check_scale(train_scale if train_scale is not None else model_train_scale(model))
    torch.save(
        {
            "format": EXPORT_CHECKPOINT_FORMAT,
            "model_config": model_config_of(model),
            "model_state": inner.state_dict(),
            "train_scale": scale,
        },
        path,
    )
    return path


def int8_agreement(model: nn.Module, int8_path: Path, image: np.ndarray) -> dict[str, float]:
    """How far the int8 graph's probabilities are from eager fp32 on ``image``: max / mean |Δprob| and the
    share of pixels whose hair decision (p >= 0.5) agrees. Reported, not checked against a tolerance:
    int8 is expected to differ; its accuracy is measured on the test split by the final stage."""
    x = normalize_image(image)
    with torch.no_grad():
        reference = ProbabilityModel(_cpu_eval_copy(model)).eval()(x).numpy()
    got = _exported_probs(int8_path, x)
    diff = np.abs(got - reference)
    agree = float(np.mean((got[:, 1] >= 0.5) == (reference[:, 1] >= 0.5)))
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()), "agreement": agree}


def frame_latency_ms(onnx_path: Path, input_size: int, frames: Sequence[np.ndarray], repeats: int = 40) -> float:
    """Median ms per frame the way the webcam app runs an export on one core: letterbox + normalise, ONNX
    Runtime with one intra-op thread, the hair probability back to the frame (``HairPredictor``), cycling
    through ``frames`` (HxWx3 uint8 RGB portraits)."""
    predictor = HairPredictor(OnnxRunner(onnx_path, intra_op_threads=1), ModelMetadata(input_size=input_size))
    calls = iter(range(10**9))
    return measure_latency(lambda: predictor(frames[next(calls) % len(frames)]), repeats).median_ms


def _quantize_int8(
    model: nn.Module,
    paths: dict[str, Path],
    calibration: Sequence[np.ndarray],
    input_size: int,
    probe: tuple[np.ndarray, str],
) -> dict[str, Any]:
    """Write ``model.int8.onnx`` beside ``model.onnx`` (``paths["onnx_int8"]``); say how and how close it is."""
    paths["onnx_int8"] = quantize_static_int8(
        paths["onnx"], paths["onnx"].with_name(INT8_ONNX), calibration_batches(calibration, input_size)
    )
    return {
        "mode": "int8 static QDQ (per-channel int8 weights, uint8 activations, MinMax)",
        "calibration_images": len(calibration),
        "agreement_with_fp32_on": probe[1],
        **int8_agreement(model, paths["onnx_int8"], probe[0]),
    }


def _latencies(paths: Mapping[str, Path], input_size: int, repeats: int) -> dict[str, float]:
    """Median model-only ms of each written back-end (``onnx_int8`` too when there) on a synthetic portrait."""
    x = np.ascontiguousarray(normalize_image(synthetic_portrait(input_size, input_size)).numpy())
    timed = {"eager": "checkpoint", "torchscript": "torchscript", "onnx": "onnx", "onnx_int8": "onnx_int8"}
    latency: dict[str, float] = {}
    for name, key in timed.items():
        if key in paths:
            runner = BACKENDS.build(name.removesuffix("_int8"), paths[key])
            latency[name] = round(measure_latency(lambda r=runner: r(x), repeats=repeats).median_ms, 3)
    return latency


def export_all(
    model: nn.Module,
    out_dir: str | Path,
    input_size: int | None = None,
    metrics: Mapping[str, float] | None = None,
    sample_image: np.ndarray | None = None,
    opset: int = DEFAULT_OPSET,
    latency_repeats: int = 10,
    train_scale: int | None = None,
    quantize: str = "none",
    calibration: Sequence[np.ndarray] = (),
    frames: Sequence[np.ndarray] = (),
) -> dict[str, Any]:
    """Write ``model.pt`` (checkpoint), ``model.ts``, ``model.onnx`` and ``model.json`` to ``out_dir``.

    ``train_scale`` (default: the scale attached to ``model`` by ``artifact.load_model``) is recorded
    in ``model.json`` and ``model.pt``; ``input_size``, the webcam app's letterbox canvas, defaults to it,
    because the network is only accurate at the object scale it was trained at. ``sample_image`` (HxWx3
    uint8 RGB, ideally a real photo) is used for the parity check at its own resolution; without one a
    deterministic synthetic portrait-like image is used and the returned dict says so. Latency is the
    median model-only time of each back-end at ``input_size`` (batch 1) on this machine; with ``frames``
    (real portraits) also ``frame_1_thread``, the app's whole per-frame step on one core.

    ``quantize="int8"`` also writes ``model.int8.onnx`` (static QDQ, calibrated on ``calibration``, training
    images letterboxed at ``input_size``) and makes it the ``onnx`` entry of ``model.json`` (the fp32 graph
    stays as ``onnx_fp32``), so every reader of the export runs int8 with the same float32 input and
    softmax output. Returns paths, parity, latency, the sizes and the ONNX exporter/opset used.
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    train_scale = check_scale(train_scale if train_scale is not None else model_train_scale(model))
    input_size = deploy_input_size(input_size, train_scale)  # type: ignore[assignment]
    if input_size is None:
        raise ValueError("export_all: give input_size, or a train_scale (none is recorded on this model)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / name for key, name in DEFAULT_FILES.items()}
    save_checkpoint(model, paths["checkpoint"], train_scale=train_scale)
    export_torchscript(model, paths["torchscript"], example_size=input_size)
    onnx_info = export_onnx(model, paths["onnx"], opset=opset, example_size=input_size)

    image_source = "sample_image"
    if sample_image is None:
        sample_image, image_source = synthetic_portrait(input_size + 23, input_size - 17), "synthetic"
    parity = parity_check(model, [paths["torchscript"], paths["onnx"]], sample_image)
    files = {k: v for k, v in DEFAULT_FILES.items() if k != "metadata"}
    quantization: dict[str, Any] = {}
    if quantize == "int8":
        quantization = _quantize_int8(model, paths, calibration, input_size, (sample_image, image_source))
        files["onnx"], files["onnx_fp32"] = INT8_ONNX, DEFAULT_FILES["onnx"]
    latency = _latencies(paths, input_size, latency_repeats)
    if frames:
        latency["frame_1_thread"] = round(frame_latency_ms(out / files["onnx"], input_size, frames), 3)

    write_metadata(
        paths["metadata"],
        input_size=input_size,
        model_config=model_config_of(model),
        metrics=metrics,
        onnx_opset=onnx_info.opset,
        onnx_exporter=onnx_info.exporter,
        files=files,
        parity=parity,
        latency_ms=latency,
        train_scale=train_scale,
        quantization=quantization,
    )
    return {
        **paths,
        "dir": out,
        **{"input_size": input_size, "train_scale": train_scale, "quantize": quantize, "quantization": quantization},
        **{"parity": parity, "parity_image": image_source, "latency_ms": latency},
        **{"onnx_exporter": onnx_info.exporter, "onnx_opset": onnx_info.opset},
        "onnx_fallback_reason": onnx_info.fallback_reason,
    }
