"""Decoded samples of one split, wherever they live, and the augmenting view a trial trains through.

A trial reads raw samples (uint8 RGB image, uint8 {0,1} mask, name) by index. Where those bytes live is
the input path's business (:mod:`hairseg_core.data.input_path`): in the process's memory
(:class:`~hairseg_core.data.memory.MaterializedSplit`), in Ray's object store, or in a node-local
memory-mapped cache (:class:`~hairseg_core.data.node_cache.MappedSplit`). Everything downstream
(the Trainer, precise BN, validation per source) sees only :class:`RawSplit`, so the path a sweep
takes cannot change what a trial learns: the same index gives the same pixels.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch.utils.data import Dataset


@runtime_checkable
class RawSplit(Protocol):
    """Random access to the decoded, transform-free samples of one split."""

    names: Sequence[str]
    #: how the samples are held: "memory", "object store", "stream" (node cache) or "files" (decoded per read)
    input_path: str

    def __len__(self) -> int: ...

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 H×W×3 RGB image, uint8 H×W {0,1} mask) of sample ``index``."""
        ...


class ConcatSplit:
    """Several sources' splits as one (pooled training data, validation with per-source ranges).

    Names get their source's name as a prefix (``celeb1k/00012``) so pooled samples stay traceable.
    """

    def __init__(self, parts: Sequence[tuple[str, RawSplit]]) -> None:
        if not parts:
            raise ValueError("ConcatSplit needs at least one part")
        self.parts = list(parts)
        self._starts: list[int] = []
        total = 0
        for _, split in self.parts:
            self._starts.append(total)
            total += len(split)
        self._len = total
        self.names = [f"{name}/{n}" for name, split in self.parts for n in split.names]
        self.input_path = "+".join(sorted({split.input_path for _, split in self.parts}))

    def __len__(self) -> int:
        return self._len

    def locate(self, index: int) -> tuple[RawSplit, int]:
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for {self._len} samples")
        part = bisect.bisect_right(self._starts, index) - 1
        return self.parts[part][1], index - self._starts[part]

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        split, local = self.locate(index)
        return split.sample(local)

    @property
    def nbytes(self) -> int:
        return sum(int(getattr(split, "nbytes", 0)) for _, split in self.parts)


def pool(parts: Sequence[tuple[str, RawSplit]]) -> RawSplit:
    """One split from several sources' splits; a single source is returned as it is (names unprefixed)."""
    if len(parts) == 1:
        return parts[0][1]
    return ConcatSplit(parts)


class LazySplit:
    """A raw dataset (``dataset[i]`` -> ``{"image", "mask", "name"}``) decoded on every access, nothing kept.

    For reads that happen once or twice (the final stage's test split): memory stays flat at any size.
    """

    input_path = "files"

    def __init__(self, dataset: Any, limit: int | None = None) -> None:
        self.dataset = dataset
        self._len = len(dataset) if limit is None else min(len(dataset), limit)
        all_names = getattr(dataset, "names", None)
        self.names = list(all_names[: self._len]) if all_names is not None else [str(i) for i in range(self._len)]

    def __len__(self) -> int:
        return self._len

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for {self._len} samples")
        item = self.dataset[index]
        return item["image"], item["mask"]

    def items(self) -> Sequence[dict[str, Any]]:
        """The samples as the evaluation helpers take them: a sequence of ``{"image", "mask", "name"}``."""
        return _SampleDicts(self)


class _SampleDicts(Sequence):
    """``split[i]`` as ``{"image", "mask", "name"}``, decoded when indexed (a lazy list)."""

    def __init__(self, split: RawSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]  # type: ignore[return-value]
        if index < 0:
            index += len(self)
        image, mask = self.split.sample(index)
        return {"image": image, "mask": mask, "name": self.split.names[index]}


def sample_dicts(split: RawSplit) -> Sequence[dict[str, Any]]:
    """Any split as a lazy sequence of ``{"image", "mask", "name"}`` dicts."""
    return _SampleDicts(split)


class TransformedDataset(Dataset):
    """A :class:`RawSplit` seen through an albumentations-style transform (a torch ``Dataset``)."""

    def __init__(self, split: RawSplit, transform: Callable[..., dict[str, Any]] | None) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.split.sample(index)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {"image": image, "mask": mask, "name": self.split.names[index]}
