"""The one model artifact: what a trained or exported hair model is on disk, and every way to read it back.

Everything that must mean the same thing for the trainer, the exporter, the inference back-ends, the
evaluation and the MLflow registry is defined here and only here:

* the input convention of every model (``model.json``'s normalisation is ``hairseg_core.imagenet``'s
  :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`, applied by its :class:`Normalizer`);
* the two checkpoint formats, under distinct names: :data:`TRAINING_CHECKPOINT_FORMAT` (the trainer's
  resumable state, ``checkpoint.pt``) and :data:`EXPORT_CHECKPOINT_FORMAT` (``export_all``'s ``model.pt``:
  weights, model config and trained scale only);
* ``model.json`` (:class:`ModelMetadata`: the schema, its validation and :func:`read_metadata`) and the
  file names of an export directory (:data:`DEFAULT_FILES`);
* :class:`ProbabilityModel`, the softmax-inside graph every exported file holds;
* :func:`load_model`, the one loader: a checkpoint's training state, its eager network (trained scale
  attached), a TorchScript module or an ONNX Runtime session, from a file, an export or a run directory.

Writers live in ``hairseg_core.final.export`` (and the trainer's ``save_checkpoint``), the back-ends and the one
``load_predictor`` (file, export directory or ``models:/`` URI → predictor) in ``hairseg_core.deploy.inference``.
This module imports the leaves ``imagenet``, ``scaling`` and ``threads`` and the model zoo
(``hairseg_core.models``, to rebuild a network), none of which imports it back.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from hairseg_core.imagenet import IMAGENET, IMAGENET_MEAN, IMAGENET_STD, Normalizer
from hairseg_core.models import build_model
from hairseg_core.scaling import attach_train_scale, check_scale, inference_scale
from hairseg_core.threads import ort_thread_options

# --------------------------------------------------------------------------------------------- constants

CLASS_NAMES: tuple[str, ...] = ("background", "hair")

#: ``format`` of the trainer's checkpoint (model, optimiser, schedule, RNG, history: resumable).
TRAINING_CHECKPOINT_FORMAT = "hairseg-checkpoint/1"
#: ``format`` of ``export_all``'s ``model.pt`` (model config, weights and trained scale: deployable).
EXPORT_CHECKPOINT_FORMAT = "hairseg-export/1"
#: File name of the training checkpoint inside a run / trial directory.
CHECKPOINT_FILE = "checkpoint.pt"

METADATA_FORMAT = "hairseg-webcam-model"
METADATA_VERSION = 1

#: File names written by ``export.export_all`` (and looked up by ``inference.load_predictor`` in a directory).
DEFAULT_FILES: dict[str, str] = {
    "onnx": "model.onnx",
    "torchscript": "model.ts",
    "checkpoint": "model.pt",
    "metadata": "model.json",
}

#: The only preprocessing mode so far; see ``hairseg_core.deploy.inference`` for the exact rule.
PREPROCESS_MODES: dict[str, str] = {
    "letterbox": (
        "Scale the frame by input_size / max(H, W) (keeps the aspect ratio; cv2 INTER_AREA when shrinking, "
        "INTER_LINEAR when enlarging), paste it centred on an input_size x input_size canvas whose padding "
        "is the ImageNet mean colour (0 after normalisation), divide by 255, subtract mean, divide by std, "
        "HWC RGB -> NCHW float32. The hair probability of the pasted region is cropped out and resized "
        "bilinearly back to H x W, so every frame pixel gets a probability."
    ),
}


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or from another format."""


class MetadataError(ValueError):
    """``model.json`` is missing, unreadable or lacks a required key."""


# ------------------------------------------------------------------------------------------- normaliser


def normalize_image(image_rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 RGB → ``[1, 3, H, W]`` float32 ImageNet-normalised tensor (no resizing)."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {image_rgb.shape} {image_rgb.dtype}")
    return torch.from_numpy(IMAGENET.batch([image_rgb]))


# ---------------------------------------------------------------------------------------------- network


class ProbabilityModel(nn.Module):
    """Wrap a logits model so it returns softmax probabilities ``[B, C, H, W]`` (channel 1 = hair).

    Putting the softmax inside the exported graph keeps every runtime (TorchScript, ONNX, int8 ONNX)
    numerically identical to what the app consumes, instead of re-implementing it per back-end.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def model_config_of(model: nn.Module) -> dict[str, Any]:
    """The ``build_model`` keyword arguments a network (or its ``ProbabilityModel``) was built with."""
    inner = model.model if isinstance(model, ProbabilityModel) else model
    config = getattr(inner, "config", None)
    return dict(config) if isinstance(config, Mapping) else {}


# ------------------------------------------------------------------------------------------ checkpoints


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """The raw dict of a checkpoint file of either format: ``torch.load`` with ``weights_only=True`` (no code
    from the pickle runs), errors naming the file. A model is loaded through :func:`load_model`."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/corrupt files
        if "weights only load failed" in str(exc).lower():
            # torch's message runs to a dozen lines suggesting weights_only=False: never do that for a foreign file
            raise CheckpointError(
                f"{path}: refused: the pickle holds objects other than tensors and plain values (code would run "
                "on loading); only checkpoints this package wrote are read"
            ) from exc
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise CheckpointError(f"{path}: cannot read checkpoint: {first}") from exc


def check_training_format(state: Any, source: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` is a training checkpoint of this code."""
    if not isinstance(state, dict) or state.get("format") != TRAINING_CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{source}: not a hairseg checkpoint (format {found!r}, expected {TRAINING_CHECKPOINT_FORMAT!r})"
        )


def _training_state(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A training checkpoint's dict (a file, or a directory holding ``checkpoint.pt``), format-checked."""
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    state = read_checkpoint(path, map_location)
    check_training_format(state, str(path))
    return state


def checkpoint_train_scale(state: Mapping[str, Any]) -> int | None:
    """The short side a checkpoint's network was trained at: ``train_scale`` (export format) or the
    ``base_size`` of its ``train_config`` (training format); None when neither is recorded."""
    scale = state.get("train_scale")
    if scale is None and state.get("train_config"):
        scale = inference_scale(state["train_config"])
    return check_scale(scale)


def _model_from_state(state: Any, source: str) -> nn.Module:
    """Rebuild the eval-mode network of a checkpoint dict holding ``model_config`` and ``model_state``."""
    missing = [key for key in ("model_config", "model_state") if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(
            f"{source}: checkpoint lacks {missing}; expected a dict with model_config and model_state"
        )
    model = build_model(**{**state["model_config"], "pretrained": "none"})
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{source}: model_state does not fit model_config {state['model_config']}: {exc}"
        ) from exc
    return model.eval()


def _eager_model(path: Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The eval-mode network of a checkpoint of either format, its trained scale attached.

    A model only segments well at the object scale it saw in training (``base_size``; see
    ``hairseg_core.scaling``), so whoever evaluates or exports it needs that number as much as the weights:
    it travels on the module (``scaling.model_train_scale``), so copies, exports and registered models keep it.
    """
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    state = read_checkpoint(path, map_location)
    model = _model_from_state(state, str(path))
    return attach_train_scale(model, checkpoint_train_scale(state))


# -------------------------------------------------------------------------------------- exported runtimes


def _torchscript(path: Path) -> torch.jit.ScriptModule:
    """Load a ``.ts`` file on the CPU in eval mode (quietly: torch.jit warns that it is deprecated)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    return module.eval()


def _onnx_session(path: Path, intra_op_threads: int | None = None, allow_spinning: bool = False) -> Any:
    """onnxruntime CPU session with all graph optimisations (fusions, constant folding, layout).

    Spinning is off by default: between two frames the app does its own CPU work (letterbox, colouring,
    video I/O), and ORT worker threads busy-waiting for the next run would take the cores it needs.
    """
    # Deferred: onnxruntime is a large native library that training and eager evaluation never use.
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # hairseg_core.threads: None = the CPUs this process may use, not ORT's count of the host's cores.
    options.intra_op_num_threads, options.inter_op_num_threads = ort_thread_options(intra_op_threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------ probe image


def synthetic_portrait(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic image-like RGB frame: smooth background, skin-toned face, dark textured hair.

    The probe input of an artifact when no real photo is at hand: the export's parity and dynamic-shape
    checks, its latency runs, the MLflow signature example, tests. Unlike uniform noise it has the smooth
    regions and strong edges of a photo, so activations look like those of real inputs. (The training
    data generator, ``hairseg_core.data.synthetic``, draws labelled square portraits; this one is a
    cheap unlabelled frame of any H x W.)
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    image[..., 0] = 120 + 80 * xx / max(width - 1, 1)
    image[..., 1] = 140 + 60 * yy / max(height - 1, 1)
    image[..., 2] = 170 - 50 * xx / max(width - 1, 1)
    cx, cy = width / 2, height * 0.55
    hair = ((xx - cx) / (0.34 * width)) ** 2 + ((yy - cy * 0.85) / (0.42 * height)) ** 2 < 1
    strands = 25 * np.sin(xx * 0.9 + 3 * np.sin(yy * 0.05)) + rng.normal(0, 8, (height, width))
    image[hair] = np.stack([45 + strands, 32 + strands, 25 + strands], -1)[hair]
    face = ((xx - cx) / (0.22 * width)) ** 2 + ((yy - cy) / (0.3 * height)) ** 2 < 1
    image[face] = (224, 172, 140)
    image = cv2.GaussianBlur(image, (3, 3), 0) + rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ model.json


@dataclass(frozen=True)
class ModelMetadata:
    """Everything a deployment needs besides the weights; serialised as ``model.json``.

    ``train_scale`` is the short side (px) the network saw in training (``input.train_scale`` in the file;
    None for files written before it was recorded). Evaluation runs the network at that short side;
    ``input_size`` is the fixed letterbox canvas of the webcam app, by default the same number.
    """

    input_size: int
    model_config: dict[str, Any] = field(default_factory=dict)
    preprocess: str = "letterbox"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_names: tuple[str, ...] = CLASS_NAMES
    hair_channel: int = 1
    metrics: dict[str, float] = field(default_factory=dict)
    onnx_opset: int | None = None
    onnx_exporter: str | None = None
    torch_version: str = torch.__version__
    created_at: str = ""
    files: dict[str, str] = field(default_factory=dict)
    parity: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    train_scale: int | None = None
    # how the "onnx" file was quantised (empty: fp32): mode, calibration images, agreement with fp32
    quantization: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if int(self.input_size) < 32:
            raise MetadataError(f"input_size must be >= 32, got {self.input_size}")
        try:
            check_scale(self.train_scale)
        except ValueError as exc:
            raise MetadataError(f"train_scale: {exc}") from None
        if self.preprocess not in PREPROCESS_MODES:
            raise MetadataError(
                f"preprocess mode {self.preprocess!r} unknown; expected one of {sorted(PREPROCESS_MODES)}"
            )
        if not 0 <= self.hair_channel < len(self.class_names):
            raise MetadataError(f"hair_channel {self.hair_channel} outside class_names {list(self.class_names)}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise MetadataError(f"mean/std must be three numbers (std > 0), got {self.mean} / {self.std}")

    @property
    def normalizer(self) -> Normalizer:
        """The normalisation this model expects (ImageNet for every model this code writes)."""
        return Normalizer(self.mean, self.std)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": METADATA_FORMAT,
            "format_version": METADATA_VERSION,
            "input": {
                "size": int(self.input_size),
                "train_scale": None if self.train_scale is None else int(self.train_scale),
                "layout": "NCHW",
                "dtype": "float32",
                "color_order": "RGB",
            },
            "preprocess": {"mode": self.preprocess, "rule": PREPROCESS_MODES[self.preprocess]},
            "normalization": {"pixel_scale": 1.0 / 255.0, "mean": list(self.mean), "std": list(self.std)},
            "output": {
                "kind": "softmax_probabilities",
                "shape": "[B, num_classes, H, W] at the input size",
                "hair_channel": int(self.hair_channel),
            },
            "class_names": list(self.class_names),
            "model": {
                "backbone": self.model_config.get("backbone"),
                "output_stride": self.model_config.get("output_stride"),
                "config": dict(self.model_config),
            },
            "metrics": dict(self.metrics),
            "export": {
                "onnx_opset": self.onnx_opset,
                "onnx_exporter": self.onnx_exporter,
                "torch_version": self.torch_version,
                "created_at": self.created_at,
                "files": dict(self.files),
                "parity_max_abs_diff": dict(self.parity),
                "latency_ms": dict(self.latency_ms),
                "quantization": dict(self.quantization),
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "model.json") -> ModelMetadata:
        def need(*keys: str) -> Any:
            node: Any = data
            for depth, key in enumerate(keys):
                if not isinstance(node, Mapping) or key not in node:
                    raise MetadataError(f"{source}: missing key {'.'.join(keys[: depth + 1])!r}")
                node = node[key]
            return node

        if data.get("format") != METADATA_FORMAT:
            raise MetadataError(f"{source}: 'format' is {data.get('format')!r}, expected {METADATA_FORMAT!r}")
        if int(data.get("format_version", -1)) > METADATA_VERSION:
            raise MetadataError(
                f"{source}: format_version {data.get('format_version')} is newer than this code "
                f"understands ({METADATA_VERSION})"
            )
        export = data.get("export", {}) or {}
        train_scale = (data.get("input") or {}).get("train_scale")  # absent in older files
        try:
            return cls(
                input_size=int(need("input", "size")),
                model_config=dict(data.get("model", {}).get("config") or {}),
                preprocess=str(need("preprocess", "mode")),
                mean=tuple(float(v) for v in need("normalization", "mean")),  # type: ignore[arg-type]
                std=tuple(float(v) for v in need("normalization", "std")),  # type: ignore[arg-type]
                class_names=tuple(str(v) for v in need("class_names")),
                hair_channel=int(need("output", "hair_channel")),
                metrics={str(k): v for k, v in (data.get("metrics") or {}).items()},
                onnx_opset=export.get("onnx_opset"),
                onnx_exporter=export.get("onnx_exporter"),
                torch_version=str(export.get("torch_version", "")),
                created_at=str(export.get("created_at", "")),
                files={str(k): str(v) for k, v in (export.get("files") or {}).items()},
                parity={str(k): float(v) for k, v in (export.get("parity_max_abs_diff") or {}).items()},
                latency_ms={str(k): float(v) for k, v in (export.get("latency_ms") or {}).items()},
                quantization=dict(export.get("quantization") or {}),
                train_scale=None if train_scale is None else int(train_scale),
            )
        except MetadataError as exc:
            if str(exc).startswith(source):
                raise
            raise MetadataError(f"{source}: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise MetadataError(f"{source}: malformed value: {exc}") from exc


def read_metadata(path: str | Path) -> ModelMetadata:
    """Read ``model.json`` (or ``<dir>/model.json``) with errors that name the file and the key."""
    path = Path(path)
    if path.is_dir():
        path = path / DEFAULT_FILES["metadata"]
    if not path.is_file():
        raise MetadataError(f"{path}: metadata file not found (export_all writes it next to the model)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MetadataError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MetadataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return ModelMetadata.from_dict(data, source=str(path))


# ------------------------------------------------------------------------------------------- the loader

#: The forms :func:`load_model` returns a model in.
MODEL_FORMS: dict[str, str] = {
    "state": "the training checkpoint's dict, format-checked (what a resumed trainer reads)",
    "eager": "the eval-mode torch network of a checkpoint of either format, its trained scale attached",
    "torchscript": "the traced ProbabilityModel of a .ts file, eval mode, CPU",
    "onnx": "an onnxruntime CPU session of a .onnx file",
}

#: The form a model file's suffix implies.
SUFFIX_FORMS: dict[str, str] = {
    ".onnx": "onnx",
    ".ts": "torchscript",
    ".pt": "eager",
    ".pth": "eager",
    ".ckpt": "eager",
}

#: Which file of an export directory (a key of :data:`DEFAULT_FILES`) each form reads.
FORM_FILE_KEYS: dict[str, str] = {"onnx": "onnx", "torchscript": "torchscript", "eager": "checkpoint"}


def export_file(directory: str | Path, metadata: ModelMetadata, form: str) -> Path:
    """The file of ``form`` in an ``export_all`` directory (as ``model.json`` names it), which must exist."""
    key = FORM_FILE_KEYS[form]
    path = Path(directory) / metadata.files.get(key, DEFAULT_FILES[key])
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {form} model file {path.name} in this export directory")
    return path


def _model_path(source: Path, form: str | None) -> tuple[Path, str]:
    """The file to read and the form to read it in: a run directory is its ``checkpoint.pt``, an export
    directory the file of ``form`` (default ONNX, the fastest on CPU), a file the form of its suffix."""
    if source.is_dir():
        if form == "state" or (
            not (source / DEFAULT_FILES["metadata"]).is_file() and (source / CHECKPOINT_FILE).is_file()
        ):
            return source / CHECKPOINT_FILE, form or "eager"  # a training run directory
        form = form or "onnx"
        return export_file(source, read_metadata(source), form), form
    implied = SUFFIX_FORMS.get(source.suffix.lower())
    return source, form or implied or "eager"


def load_model(
    source: str | Path,
    form: str | None = None,
    *,
    map_location: str | torch.device = "cpu",
    intra_op_threads: int | None = None,
    allow_spinning: bool = False,
) -> Any:
    """The one way to read a model back from disk, in any form (:data:`MODEL_FORMS`).

    ``source``: a checkpoint of either format (``.pt`` / ``.pth`` / ``.ckpt``), a ``.ts`` or ``.onnx``
    export, an ``export_all`` directory or a training run directory (its ``checkpoint.pt``). ``form``
    defaults to the file's suffix (``eager`` for checkpoints), ``onnx`` for an export directory and
    ``eager`` for a run directory. ``map_location`` applies to checkpoints, ``intra_op_threads`` and
    ``allow_spinning`` to ONNX Runtime. A predictor (preprocessing, back-end choice, ``models:/`` URIs from
    the registry) is ``hairseg_core.deploy.inference.load_predictor``, which loads through here.
    """
    if form is not None and form not in MODEL_FORMS:
        raise ValueError(f"unknown model form {form!r}; expected one of {sorted(MODEL_FORMS)}")
    path, form = _model_path(Path(source), form)
    if form == "state":
        return _training_state(path, map_location)
    if form == "eager":
        return _eager_model(path, map_location)
    if form == "torchscript":
        return _torchscript(path)
    return _onnx_session(path, intra_op_threads=intra_op_threads, allow_spinning=allow_spinning)
