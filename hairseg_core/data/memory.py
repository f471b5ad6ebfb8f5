"""Datasets held in memory, so a sweep decodes its images once per node, not once per trial.

Ray Tune's ``tune.with_parameters`` puts one object in the object store; every trial on a
node then reads the same copy. ``MaterializedSplit`` is that object: the decoded raw
samples of one split (uint8 RGB image, uint8 0/1 mask, name), picklable and transform-free.
``TransformedDataset`` applies a trial's own augmentation on top.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch.utils.data import Dataset
from tqdm.auto import tqdm


@dataclass
class MaterializedSplit:
    """Decoded samples of one split, in the order of the source dataset."""

    images: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.images) + sum(m.nbytes for m in self.masks)

    @classmethod
    def from_dataset(cls, dataset: Sequence[dict[str, Any]], desc: str | None = None) -> MaterializedSplit:
        """Decode every sample of a raw (transform-free) dataset."""
        split = cls()
        for i in tqdm(range(len(dataset)), desc=desc, disable=desc is None, leave=False):
            sample = dataset[i]
            split.images.append(np.ascontiguousarray(sample["image"]))
            split.masks.append(np.ascontiguousarray(sample["mask"]))
            split.names.append(str(sample.get("name", i)))
        return split


class TransformedDataset(Dataset):
    """A ``MaterializedSplit`` seen through an albumentations-style transform."""

    def __init__(self, split: MaterializedSplit, transform: Callable[..., dict[str, Any]] | None) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.split.images[index], self.split.masks[index]
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {"image": image, "mask": mask, "name": self.split.names[index]}
