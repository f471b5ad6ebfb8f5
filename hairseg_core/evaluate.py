"""Evaluate any hair-probability predictor on any dataset, at each image's own resolution.

A predictor is any callable ``image (uint8 HxWx3 RGB) -> hair probability (float HxW)``: an
eager checkpoint, a TorchScript or ONNX export, or one of those followed by CRF / matting.
Metrics are computed on the full-resolution mask, so a model that only looks good after a
resize cannot hide it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hairseg_core.metrics import SegmentationMetrics
from hairseg_core.train import IMAGENET_MEAN, IMAGENET_STD, model_from_checkpoint

Predictor = Callable[[np.ndarray], np.ndarray]


def normalize(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 RGB → ImageNet-normalised [1,3,H,W] float tensor."""
    arr = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]


class ModelPredictor:
    """An eager DeepLabv3+ as a predictor; keeps the softmax so post-processing can use both classes."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @torch.no_grad()
    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """[2,H,W] float32 softmax at the image's own resolution."""
        logits = self.model(normalize(image).to(self.device)).float()
        return torch.softmax(logits, 1)[0].cpu().numpy()

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.probabilities(image)[1]

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> ModelPredictor:
        return cls(model_from_checkpoint(path, map_location=device), device)


def load_predictor(path: str | Path, device: str = "cpu") -> Predictor:
    """Checkpoint (``.pt`` / a directory with checkpoint.pt) or an export (.onnx, .ts, model.json dir)."""
    path = Path(path)
    if not path.exists() and not str(path).startswith("models:/"):
        raise FileNotFoundError(f"{path}: model not found (expected a checkpoint .pt, .onnx, .ts or export dir)")
    if path.is_dir() and (path / "checkpoint.pt").is_file():
        return ModelPredictor.from_checkpoint(path, device)
    if path.suffix in {".pt", ".pth", ".ckpt"} and not _is_export_checkpoint(path):
        return ModelPredictor.from_checkpoint(path, device)
    from hairseg_core.inference import load_predictor as load_exported

    return load_exported(str(path))


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
) -> dict[str, float]:
    """Acc, Acc_class, mIoU, fwIoU, boundary F, n_images and ms/image over a raw dataset."""
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
        metrics.update((prob >= 0.5).astype(np.int64), mask.astype(np.int64))
    scores = {k: float(v) for k, v in metrics.compute().items()}
    scores["n_images"] = n
    scores["ms_per_image"] = 1000.0 * elapsed / n
    return scores
