"""Static int8 quantisation of an exported ONNX model (QDQ), calibrated on letterboxed training images.

Why static QDQ and not dynamic: on an AVX-512 VNNI CPU the int8 convolutions ONNX Runtime fuses from
QuantizeLinear/DequantizeLinear pairs run 2.6-3.6x faster than fp32 for MobileNetV2-DeepLabv3+, while
dynamic quantisation (ConvInteger, activations scaled per call) is *slower* than fp32 there
(benchmarks/README.md, "Webcam app"). The graph keeps today's contract: float32 NCHW input, ImageNet
normalisation, softmax output; only the inside is int8, so the webcam app, the browser page and
``hairseg evaluate`` read it unchanged.

Calibration runs the exact preprocessing of the app (``inference.Preprocessor``: letterbox on the
``input_size`` canvas + ImageNet normalisation) over a few training images, so the activation ranges
are those the deployed model sees. Weights are int8 per output channel, activations uint8 per tensor.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from hairseg_core.artifact import ModelMetadata
from hairseg_core.deploy.inference import Preprocessor

#: Images the calibration pass letterboxes; MinMax ranges settle after a few dozen portraits.
DEFAULT_CALIBRATION_IMAGES = 32


class QuantizationError(RuntimeError):
    """The ONNX file could not be quantised (no calibration images, or onnxruntime failed)."""


def calibration_batches(images: Iterable[np.ndarray], input_size: int) -> list[np.ndarray]:
    """Letterboxed, normalised ``[1, 3, S, S]`` float32 batches of ``images`` (HxWx3 uint8 RGB)."""
    preprocess = Preprocessor(ModelMetadata(input_size=int(input_size)))
    return [preprocess(image)[0].copy() for image in images]


class _Batches:
    """The ``get_next`` protocol of ``onnxruntime.quantization.CalibrationDataReader`` over fixed batches."""

    def __init__(self, batches: list[np.ndarray], input_name: str) -> None:
        self._items: Iterator[dict[str, np.ndarray]] = iter([{input_name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def quantize_static_int8(fp32_path: str | Path, out_path: str | Path, batches: list[np.ndarray]) -> Path:
    """Write the QDQ int8 version of ``fp32_path`` to ``out_path``, calibrated on ``batches``.

    ``quant_pre_process`` (ONNX shape inference + graph optimisation) runs first, as onnxruntime
    recommends; symbolic shape inference is skipped because it cannot follow the dynamic resize chain of
    the decoder. It writes scratch files into the current directory, so it runs inside a temporary one.
    """
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not batches:
        raise QuantizationError(f"{fp32_path}: int8 calibration needs at least one image, got none")
    fp32_path, out_path = Path(fp32_path).resolve(), Path(out_path).resolve()
    input_name = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(_Batches, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="hairseg-quant-") as scratch:
        pre = Path(scratch) / "model.pre.onnx"
        try:
            with contextlib.chdir(scratch):
                quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
                quantize_static(
                    str(pre),
                    str(out_path),
                    Reader(batches, input_name),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                )
        except Exception as exc:  # onnxruntime raises plain Exceptions with the node name in the text
            raise QuantizationError(f"{fp32_path}: static int8 quantisation failed: {exc}") from exc
    return out_path
