"""Evaluate any hair-probability predictor on any dataset; metrics at each image's own resolution.

A predictor is any callable ``image (uint8 HxWx3 RGB) -> hair probability (float HxW)``: an
eager checkpoint, a TorchScript or ONNX export, or one of those followed by CRF / matting.
Metrics are computed on the full-resolution mask, so a model that only looks good after a
resize cannot hide it.

The *network* runs at the scale the model was trained for (short side = ``base_size``, see
``hairseg_core.scaling``) and its probabilities are resized back to H x W: a model trained on
193 px images run at 512 px sees hair 2.7x larger than it ever learnt and loses ~0.14 mIoU,
which measured the input size rather than the model. ``scale="native"`` keeps the old
own-resolution behaviour for comparisons.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hairseg_core.bootstrap import PerImageCounts
from hairseg_core.metrics import SegmentationMetrics
from hairseg_core.scaling import (
    ScaleArg,
    check_scales,
    describe_scale,
    model_train_scale,
    resolve_scale,
    scaled_probabilities,
)
from hairseg_core.train import IMAGENET_MEAN, IMAGENET_STD, load_trained_model

Predictor = Callable[[np.ndarray], np.ndarray]


class ModelPredictor:
    """An eager DeepLabv3+ as a predictor; keeps the softmax so post-processing can use both classes.

    ``scale``: short side (px) the network runs at; ``"auto"`` (default) is the scale recorded on the
    model (``load_trained_model`` / ``model_from_checkpoint`` attach it), falling back to native for a
    bare module; ``"native"`` / None runs at each image's own size. ``scales`` are multipliers of it whose
    probabilities are averaged (e.g. ``scaling.MULTI_SCALES``), ``flip`` adds mirrored inputs. The
    output is always at the image's own H x W.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: str | torch.device = "cpu",
        scale: ScaleArg = "auto",
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.scale = resolve_scale(scale, model_train_scale(model))
        self.scales = check_scales(scales)
        self.flip = bool(flip)

    @property
    def inference_scale(self) -> int | str:
        """The scale as reported in results: pixels or ``"native"``."""
        return describe_scale(self.scale)

    @torch.no_grad()
    def _run(self, batch: np.ndarray) -> np.ndarray:
        logits = self.model(torch.from_numpy(batch).to(self.device)).float()
        return torch.softmax(logits, 1).cpu().numpy()

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """[C,H,W] float32 softmax at the image's own resolution (network at ``self.scale``)."""
        return scaled_probabilities(
            self._run, image, self.scale, mean=IMAGENET_MEAN, std=IMAGENET_STD, scales=self.scales, flip=self.flip
        )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.probabilities(image)[1]

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "cpu",
        scale: ScaleArg = "auto",
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
    ) -> ModelPredictor:
        """A training checkpoint's model, by default at the scale it was trained for."""
        model, trained = load_trained_model(path, map_location=device)
        return cls(model, device, scale=resolve_scale(scale, trained), scales=scales, flip=flip)


def load_predictor(
    path: str | Path,
    device: str = "cpu",
    scale: ScaleArg = "auto",
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> Predictor:
    """Checkpoint (``.pt`` / a directory with checkpoint.pt) or an export (.onnx, .ts, model.json dir).

    Whatever the kind, the network runs at ``scale`` (``"auto"``: the trained scale recorded in the
    checkpoint or ``model.json``) and returns H x W probabilities; the result has an ``inference_scale``.
    """
    path = Path(path)
    if not path.exists() and not str(path).startswith("models:/"):
        raise FileNotFoundError(f"{path}: model not found (expected a checkpoint .pt, .onnx, .ts or export dir)")
    options: dict[str, Any] = {"scale": scale, "scales": scales, "flip": flip}
    if path.is_dir() and (path / "checkpoint.pt").is_file():
        return ModelPredictor.from_checkpoint(path, device, **options)
    if path.suffix in {".pt", ".pth", ".ckpt"} and not _is_export_checkpoint(path):
        return ModelPredictor.from_checkpoint(path, device, **options)
    from hairseg_core.inference import load_predictor as load_exported

    return load_exported(str(path), **options)


def _is_export_checkpoint(path: Path) -> bool:
    """``model.pt`` written by ``export_all`` (weights + model config, read with its metadata)."""
    from hairseg_core.export import CHECKPOINT_FORMAT

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not ours to judge here: the training-checkpoint loader reports it clearly
        return False
    return isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT


def evaluate_predictor(
    predictor: Predictor,
    dataset: Sequence[dict[str, Any]],
    max_images: int | None = None,
    progress: bool = False,
    desc: str = "evaluating",
    per_image: PerImageCounts | None = None,
) -> dict[str, float]:
    """Acc, Acc_class, mIoU, fwIoU, boundary F, n_images and ms/image over a raw dataset.

    ``per_image``, when given, also receives each image's confusion and boundary counts (the
    paired bootstrap of the promotion decision resamples them); the returned scores are the same.
    """
    metrics = SegmentationMetrics(num_classes=2)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    if n == 0:
        raise ValueError("evaluation dataset is empty")
    elapsed = 0.0
    for i in tqdm(range(n), desc=desc, disable=not progress, leave=False):
        sample = dataset[i]
        image, mask = np.asarray(sample["image"]), np.asarray(sample["mask"])
        start = time.perf_counter()
        prob = np.asarray(predictor(image))
        elapsed += time.perf_counter() - start
        if prob.shape != mask.shape:
            raise ValueError(
                f"{sample.get('name', i)}: predictor returned {prob.shape}, expected the mask's {mask.shape}"
            )
        pred, target = (prob >= 0.5).astype(np.int64), mask.astype(np.int64)
        if per_image is None:
            metrics.update(pred, target)
        else:
            per_image.record(metrics, pred, target, name=str(sample.get("name", i)))
    scores = {k: float(v) for k, v in metrics.compute().items()}
    scores["n_images"] = n
    scores["ms_per_image"] = 1000.0 * elapsed / n
    return scores
