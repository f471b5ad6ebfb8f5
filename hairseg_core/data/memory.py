"""A split decoded into this process's memory: the small-data fast path.

Ray Tune's ``tune.with_parameters`` puts one object in the object store; every trial on a
node then reads the same copy (numpy arrays are read zero-copy from shared memory).
``MaterializedSplit`` is that object: the decoded raw samples of one split (uint8 RGB image,
uint8 0/1 mask, name), picklable and transform-free. It is a :class:`~hairseg_core.data.splits.RawSplit`;
:class:`~hairseg_core.data.splits.TransformedDataset` applies a trial's own augmentation on top.
Data larger than the sweep's memory budget takes the streaming path instead
(:mod:`hairseg_core.data.input_path`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from hairseg_core.data.splits import RawSplit
from hairseg_core.progress import progress_bar


@dataclass
class MaterializedSplit:
    """Decoded samples of one split, in the order of the source dataset."""

    input_path: ClassVar[str] = "memory"

    images: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[index], self.masks[index]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.images) + sum(m.nbytes for m in self.masks)

    @classmethod
    def from_dataset(cls, dataset: Sequence[dict[str, Any]], desc: str | None = None) -> MaterializedSplit:
        """Decode every sample of a raw (transform-free) dataset."""
        split = cls()
        for i in progress_bar(range(len(dataset)), desc=desc, disable=desc is None, leave=False):
            sample = dataset[i]
            split.images.append(np.ascontiguousarray(sample["image"]))
            split.masks.append(np.ascontiguousarray(sample["mask"]))
            split.names.append(str(sample.get("name", i)))
        return split

    @classmethod
    def from_split(cls, split: RawSplit) -> MaterializedSplit:
        """Copy every sample of another split (e.g. the node cache) into memory."""
        out = cls(names=[str(n) for n in split.names])
        for i in range(len(split)):
            image, mask = split.sample(i)
            out.images.append(np.array(image, copy=True))
            out.masks.append(np.array(mask, copy=True))
        return out
