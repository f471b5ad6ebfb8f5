"""ImageNet statistics and the one normaliser built from them: what every network of this package is fed.

The pretrained backbones were trained on ImageNet pixels normalised as ``(pixel / 255 - mean) / std``, and
every model this package trains or exports keeps that input convention. Training (albumentations'
``Normalize`` in ``hairseg_core.data.transforms``), the loss's image-space terms, the model artifact
(``model.json``, the export parity check) and the inference back-ends all read the constants here, so the
rule is written once. A leaf: numpy only, no other ``hairseg_core`` module, so data and artifact alike can
import it without an import circle.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: ImageNet statistics (RGB, on pixel / 255): every pretrained backbone expects inputs normalised by them.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class Normalizer:
    """``(pixel / 255 - mean) / std`` per RGB channel, computed as one multiply-add (``pixel * scale + bias``).

    The single normaliser of the package: the export parity check, the letterbox preprocessing of the
    webcam app and the short-side evaluation path all go through it, so a model is always fed what it
    was trained on (training uses albumentations' ``Normalize`` with the same constants).
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        std_arr = np.asarray(std, np.float32)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.scale = (1.0 / (255.0 * std_arr)).astype(np.float32)
        self.bias = (-np.asarray(mean, np.float32) / std_arr).astype(np.float32)

    def hwc(self, image_rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB → HxWx3 float32 normalised (no layout change)."""
        return image_rgb.astype(np.float32) * self.scale + self.bias

    def batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Equal-sized HxWx3 uint8 RGB images → an NCHW float32 batch."""
        batch = np.stack([self.hwc(img) for img in images])
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


#: The normaliser of every model this package writes.
IMAGENET = Normalizer()
