"""Score any hair-probability predictor on any dataset; metrics at each image's own resolution.

A predictor is any callable ``image (uint8 HxWx3 RGB) -> hair probability (float HxW)``: an
eager checkpoint, a TorchScript or ONNX export (all loaded by ``hairseg_core.deploy.inference.load_predictor``,
or a network in memory via ``HairPredictor.from_model``), or one of those followed by CRF / matting.
Metrics are computed on the full-resolution mask, so a model that only looks good after a
resize cannot hide it.

This module only scores. *Where* the network runs is the predictor's business: at the scale the
model was trained for (short side = ``base_size``, see ``hairseg_core.scaling``), with its
probabilities resized back to H x W. A model trained on 193 px images run at 512 px sees hair
2.7x larger than it ever learnt and loses ~0.14 mIoU, which measured the input size rather than
the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hairseg_core.final.bootstrap import PerImageCounts
from hairseg_core.progress import progress_bar
from hairseg_core.train.metrics import SegmentationMetrics

Predictor = Callable[[np.ndarray], np.ndarray]


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
    for i in progress_bar(range(n), desc=desc, disable=not progress, leave=False):
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
