"""Frame → hair probability, behind interchangeable back-ends (ONNX Runtime, TorchScript, eager PyTorch).

Preprocessing (``letterbox``, the rule recorded in ``model.json``), exactly:

1. ``scale = input_size / max(H, W)``; the frame (HxWx3 uint8 RGB) is resized to
   ``round(W * scale) x round(H * scale)`` (``cv2.INTER_AREA`` when shrinking, ``INTER_LINEAR`` when
   enlarging), i.e. a fixed scale for a given camera resolution and no aspect-ratio distortion;
2. it is pasted centred on an ``input_size x input_size`` canvas; the padding is the ImageNet mean colour,
   which is 0 after normalisation, so the network sees "nothing" there;
3. ``(pixel / 255 - mean) / std`` per RGB channel, HWC → NCHW float32, batch of one;
4. the network returns softmax probabilities at the canvas size; the hair channel of the pasted region is
   cropped out and resized bilinearly to H x W.

Why letterbox and not resize-short-side + centre-crop: a crop would leave the frame borders without a
probability (the app must colour the whole frame), and a plain resize would squash faces, which the model
never saw in training. A fixed square input also keeps latency constant and suits int8 / static-shape
runtimes.

That is the webcam path (``scale="letterbox"``, the default). Evaluation instead asks for the model's
trained scale (``scale="auto"``, or a pixel count, or ``"native"``): the frame is resized so its *short*
side equals the scale the network was trained at (``model.json`` ``input.train_scale``; see
``hairseg_core.scaling``), run at that dynamic size, and the probabilities are resized back to H x W,
optionally averaged over several scales and a mirrored copy. Both ONNX and TorchScript exports take any
input size, so one file serves both.

``load_predictor`` is the one way to get a predictor from something on disk: it picks the back-end from the
file suffix (``.onnx``, ``.ts``, ``.pt`` / ``.pth`` / ``.ckpt`` of either checkpoint format) or, for a
directory written by ``export.export_all``, from ``model.json`` (ONNX by default, the fastest on CPU); a
training run directory holding ``checkpoint.pt`` runs eager. A ``models:/name@alias`` URI is resolved
through ``hairseg_core.track.registry.resolve_model_uri`` first. :meth:`HairPredictor.from_model` wraps a network
already in memory (evaluation during the final stage). What the files contain is defined in
``hairseg_core.artifact``, whose ``load_model`` every back-end loads its file through.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch

from hairseg_core.artifact import (
    CHECKPOINT_FILE,
    DEFAULT_FILES,
    FORM_FILE_KEYS,
    SUFFIX_FORMS,
    CheckpointError,
    ModelMetadata,
    ProbabilityModel,
    export_file,
    load_model,
    model_config_of,
    read_metadata,
)
from hairseg_core.builders import Registry
from hairseg_core.scaling import (
    DEFAULT_SIZE,
    ScaleArg,
    check_scales,
    deploy_input_size,
    describe_scale,
    model_train_scale,
    resolve_scale,
    scaled_probabilities,
)

#: Input size assumed for a bare ``.pt`` checkpoint without ``model.json`` or a trained scale.
DEFAULT_INPUT_SIZE = DEFAULT_SIZE

#: ``scale=`` of :class:`HairPredictor` for the app's fixed-size letterbox canvas (see the module docstring).
LETTERBOX = "letterbox"

#: The back-end a model file's suffix implies: the artifact's form of that file (each back-end runs one form).
SUFFIX_BACKENDS: dict[str, str] = SUFFIX_FORMS
#: Which file of an export directory each back-end reads.
BACKEND_FILE_KEYS: dict[str, str] = FORM_FILE_KEYS


class InferenceError(RuntimeError):
    """A model file could not be loaded or does not produce the expected output."""


class Runner(Protocol):
    """A back-end: normalised ``[B, 3, H, W]`` float32 batch → probabilities ``[B, C, H, W]`` float32."""

    name: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


BACKENDS: Registry[Runner] = Registry("inference backend")


@BACKENDS.register("onnx")
class OnnxRunner:
    """onnxruntime CPU session, ``ORT_ENABLE_ALL``; ``intra_op_threads=None``: every CPU this process may use."""

    name = "onnx"

    def __init__(
        self, path: str | Path, intra_op_threads: int | None = None, allow_spinning: bool = False, **_: Any
    ) -> None:
        self.path = Path(path)
        try:
            self.session = load_model(
                self.path, "onnx", intra_op_threads=intra_op_threads, allow_spinning=allow_spinning
            )
        except Exception as exc:
            raise InferenceError(f"{self.path}: onnxruntime cannot load this file: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


class _TorchRunner:
    """Shared part of the PyTorch back-ends: inference mode, optional channels-last input, any device."""

    name = "torch"
    module: torch.nn.Module
    channels_last: bool = False
    device: torch.device = torch.device("cpu")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch)
        if self.device.type != "cpu":
            x = x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.module(x).float().cpu().numpy()


@BACKENDS.register("torchscript")
class TorchScriptRunner(_TorchRunner):
    """A traced ``ProbabilityModel`` saved by ``export.export_torchscript``."""

    name = "torchscript"

    def __init__(self, path: str | Path, **_: Any) -> None:
        self.path = Path(path)
        try:
            self.module = load_model(self.path, "torchscript")
        except Exception as exc:
            raise InferenceError(f"{self.path}: cannot load TorchScript module: {exc}") from exc


class ModuleRunner(_TorchRunner):
    """Eager PyTorch on a network in memory (moved to ``device``, eval mode), softmax via ``ProbabilityModel``;
    ``channels_last=True`` converts weights and input to NHWC."""

    name = "eager"

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu", channels_last: bool = False) -> None:
        self.device = torch.device(device)
        self.module = ProbabilityModel(model).to(self.device).eval()
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)


@BACKENDS.register("eager")
class EagerRunner(ModuleRunner):
    """Eager PyTorch from a checkpoint of either format (``artifact.load_model(path, "eager")``)."""

    def __init__(
        self, path: str | Path, channels_last: bool = False, device: str | torch.device = "cpu", **_: Any
    ) -> None:
        self.path = Path(path)
        try:
            model = load_model(self.path, "eager")
        except CheckpointError as exc:
            raise InferenceError(str(exc)) from exc
        #: What the checkpoint records besides the weights: its model config and trained scale.
        self.model_config = model_config_of(model)
        self.train_scale = model_train_scale(model)
        super().__init__(model, device=device, channels_last=channels_last)


# ------------------------------------------------------------------------------------------- preprocess


@dataclass(frozen=True)
class Letterbox:
    """Where a frame of ``frame_hw`` sits inside the ``size x size`` network input."""

    frame_hw: tuple[int, int]
    size: int
    resized_hw: tuple[int, int]
    top: int
    left: int

    @classmethod
    def fit(cls, height: int, width: int, size: int) -> Letterbox:
        if height < 1 or width < 1:
            raise ValueError(f"frame must be non-empty, got {height}x{width}")
        scale = size / max(height, width)
        new_h = min(size, max(1, round(height * scale)))
        new_w = min(size, max(1, round(width * scale)))
        return cls((height, width), size, (new_h, new_w), (size - new_h) // 2, (size - new_w) // 2)


class Preprocessor:
    """Letterbox + ImageNet normalisation into a reused buffer (no per-frame allocation of the canvas)."""

    def __init__(self, metadata: ModelMetadata) -> None:
        if metadata.preprocess != "letterbox":
            raise InferenceError(f"preprocess mode {metadata.preprocess!r} is not implemented here")
        self.size = int(metadata.input_size)
        self.normalizer = metadata.normalizer
        self._canvas = np.zeros((1, 3, self.size, self.size), np.float32)

    def __call__(self, frame_rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        if frame_rgb.ndim != 3 or frame_rgb.shape[2] != 3 or frame_rgb.dtype != np.uint8:
            raise ValueError(f"frame must be HxWx3 uint8 RGB, got shape {frame_rgb.shape} {frame_rgb.dtype}")
        box = Letterbox.fit(frame_rgb.shape[0], frame_rgb.shape[1], self.size)
        new_h, new_w = box.resized_hw
        interp = cv2.INTER_AREA if new_h < frame_rgb.shape[0] else cv2.INTER_LINEAR
        resized = cv2.resize(frame_rgb, (new_w, new_h), interpolation=interp)
        normalised = self.normalizer.hwc(resized)
        self._canvas.fill(0.0)
        self._canvas[0, :, box.top : box.top + new_h, box.left : box.left + new_w] = normalised.transpose(2, 0, 1)
        return self._canvas, box


def unletterbox(prob: np.ndarray, box: Letterbox) -> np.ndarray:
    """Crop the pasted region out of a ``size x size`` map and resize it bilinearly to the frame size."""
    new_h, new_w = box.resized_hw
    crop = np.ascontiguousarray(prob[box.top : box.top + new_h, box.left : box.left + new_w], dtype=np.float32)
    height, width = box.frame_hw
    if (new_h, new_w) == (height, width):
        return crop
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)


# -------------------------------------------------------------------------------------------- predictor


class HairPredictor:
    """``predictor(frame_rgb) -> HxW float32 hair probability`` for a frame of any size.

    ``scale``: ``"letterbox"`` (default) fits the frame into the fixed ``input_size`` canvas, the webcam
    app's constant-latency path; a pixel count resizes the short side to it and runs at that dynamic size;
    ``"auto"`` is the metadata's ``train_scale`` (``input_size`` for files from before it was recorded,
    the size they were exported and evaluated at); ``"native"`` / None runs at the frame's own size.
    ``scales`` (multipliers) and ``flip`` average several runs and need a short-side scale or native.
    """

    def __init__(
        self,
        runner: Runner,
        metadata: ModelMetadata,
        scale: ScaleArg | str = LETTERBOX,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
    ) -> None:
        self.runner = runner
        self.metadata = metadata
        self.preprocess = Preprocessor(metadata)
        self.scale: int | str | None = LETTERBOX
        if scale != LETTERBOX:
            recorded = metadata.train_scale if metadata.train_scale is not None else metadata.input_size
            self.scale = resolve_scale(scale, recorded)  # type: ignore[arg-type]
        self.scales = check_scales(scales)
        self.flip = bool(flip)
        if self.scale == LETTERBOX and (self.scales != (1.0,) or self.flip):
            raise ValueError("multi-scale / flip inference needs a short-side scale, not the letterbox canvas")

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        device: str | torch.device = "cpu",
        scale: ScaleArg | str = "auto",
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
    ) -> HairPredictor:
        """A network in memory as a predictor (eager, on ``device``; the module is moved there, in eval mode).

        ``scale="auto"`` (default) is the scale recorded on the module (``artifact.load_model(path, "eager")``
        attaches it), falling back to native for a bare module: that is how such a model was always
        measured, and guessing a size would silently change its numbers.
        """
        recorded = model_train_scale(model)
        metadata = ModelMetadata(
            input_size=max(32, recorded or DEFAULT_INPUT_SIZE),
            model_config=model_config_of(model),
            train_scale=recorded,
        )
        if scale != LETTERBOX:
            resolved = resolve_scale(scale, recorded)  # type: ignore[arg-type]
            scale = "native" if resolved is None else resolved
        return cls(ModuleRunner(model, device), metadata, scale, scales, flip)

    @property
    def inference_scale(self) -> int | str:
        """Pixels (short side), ``"native"``, or ``"letterbox-<input_size>"`` for the app's canvas."""
        if self.scale == LETTERBOX:
            return f"{LETTERBOX}-{self.input_size}"
        return describe_scale(self.scale)  # type: ignore[arg-type]

    @property
    def backend(self) -> str:
        return self.runner.name

    @property
    def input_size(self) -> int:
        return self.metadata.input_size

    def _run_checked(self, batch: np.ndarray) -> np.ndarray:
        probs = self.runner(batch)
        expected = (batch.shape[0], len(self.metadata.class_names), *batch.shape[2:])
        if probs.shape != expected:
            raise InferenceError(f"{self.backend} back-end returned shape {probs.shape}, expected {expected}")
        return probs

    def probabilities(self, frame_rgb: np.ndarray) -> np.ndarray:
        """[C, H, W] float32 probabilities at the frame's own size (post-processing needs every class)."""
        if self.scale != LETTERBOX:
            return scaled_probabilities(
                self._run_checked,
                frame_rgb,
                self.scale,  # type: ignore[arg-type]
                normalize=self.preprocess.normalizer.batch,
                scales=self.scales,
                flip=self.flip,
            )
        probs, box = self._letterboxed(frame_rgb)
        return np.stack([unletterbox(channel, box) for channel in probs[0]])

    def _letterboxed(self, frame_rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        batch, box = self.preprocess(frame_rgb)
        probs = self.runner(batch)
        expected = (1, len(self.metadata.class_names), self.input_size, self.input_size)
        if probs.shape != expected:
            raise InferenceError(f"{self.backend} back-end returned shape {probs.shape}, expected {expected}")
        return probs, box

    def __call__(self, frame_rgb: np.ndarray) -> np.ndarray:
        if self.scale != LETTERBOX:
            return np.clip(self.probabilities(frame_rgb)[self.metadata.hair_channel], 0.0, 1.0)
        probs, box = self._letterboxed(frame_rgb)
        return np.clip(unletterbox(probs[0, self.metadata.hair_channel], box), 0.0, 1.0)


def _resolve(path_or_uri: str | Path) -> Path:
    text = str(path_or_uri)
    if text.startswith("models:/"):
        # Deferred: MLflow is a heavy import that plain files and export directories never need.
        from hairseg_core.track.registry import resolve_model_uri

        return Path(resolve_model_uri(text))
    path = Path(path_or_uri).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model path {path} does not exist (expected .onnx, .ts, .pt, an export dir or a training run dir)"
        )
    return path


def _metadata_for_file(path: Path, input_size: int | None, runner: Runner) -> ModelMetadata:
    """Metadata of a single model file: ``model.json`` beside it, else defaults (ImageNet, letterbox)."""
    sibling = path.parent / DEFAULT_FILES["metadata"]
    if sibling.is_file():
        metadata = read_metadata(sibling)
        if input_size is not None and input_size != metadata.input_size:
            warnings.warn(
                f"{sibling} says input size {metadata.input_size}; using the requested {input_size}",
                stacklevel=3,
            )
            metadata = replace(metadata, input_size=input_size)
        return metadata
    config: dict[str, Any] = {}
    train_scale: int | None = None
    if isinstance(runner, EagerRunner):  # either checkpoint format: export_all's model.pt or a training one
        config = dict(runner.model_config)
        train_scale = runner.train_scale
    size = deploy_input_size(input_size, train_scale) or DEFAULT_INPUT_SIZE
    return ModelMetadata(input_size=int(size), model_config=config, train_scale=train_scale)


def load_predictor(
    path_or_uri: str | Path,
    backend: str | None = None,
    *,
    device: str = "cpu",
    intra_op_threads: int | None = None,
    channels_last: bool = False,
    input_size: int | None = None,
    scale: ScaleArg | str = LETTERBOX,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> HairPredictor:
    """Load a model file, an ``export_all`` directory, a training run directory or a ``models:/`` URI as a
    :class:`HairPredictor`: the app, the evaluation CLI and the final stage all load models through here.

    ``backend`` ("onnx", "torchscript", "eager") defaults to the file suffix, or to "onnx" for a directory;
    for an export directory it selects which of the exported files to use. ``input_size`` overrides the metadata's
    letterbox size (useful for benchmarks; the model accepts any size). ``scale``: ``"letterbox"`` (the
    app), ``"auto"`` (short side = the trained scale in the metadata, for evaluation), a pixel count or
    ``"native"``; ``scales`` / ``flip`` as in :class:`HairPredictor`. ``intra_op_threads`` applies to ONNX
    Runtime, ``channels_last`` and ``device`` to eager PyTorch.
    """
    path = _resolve(path_or_uri)
    if backend is not None:
        BACKENDS.get(backend)  # UnknownNameError listing the valid names
    options = {"intra_op_threads": intra_op_threads, "channels_last": channels_last, "device": device}
    if path.is_dir() and not (path / DEFAULT_FILES["metadata"]).is_file() and (path / CHECKPOINT_FILE).is_file():
        path = path / CHECKPOINT_FILE  # a training run directory
    if path.is_dir():
        metadata = read_metadata(path)
        backend = backend or "onnx"
        model_file = export_file(path, metadata, backend)
        if input_size is not None:
            metadata = replace(metadata, input_size=input_size)
        runner = BACKENDS.build(backend, model_file, **options)
        return HairPredictor(runner, metadata, scale, scales, flip)

    suffix_backend = SUFFIX_BACKENDS.get(path.suffix.lower())
    if suffix_backend is None:
        raise InferenceError(
            f"{path}: unknown model file type {path.suffix!r}; expected one of {sorted(SUFFIX_BACKENDS)}"
        )
    if backend is not None and backend != suffix_backend:
        raise InferenceError(f"{path}: a {path.suffix} file needs the {suffix_backend!r} back-end, not {backend!r}")
    runner = BACKENDS.build(suffix_backend, path, **options)
    metadata = _metadata_for_file(path, input_size, runner)
    return HairPredictor(runner, metadata, scale, scales, flip)
