"""The memory input path's Ray glue: a split put into Ray's object store in chunks, read zero-copy by trials.

Why chunks from the node cache rather than one ``ray.put`` of a decoded split: the driver never holds the
decoded data in its own heap. Each chunk is copied from the memory-mapped node cache (page cache, not
counted as used memory) straight into the object store, so the driver's peak is one chunk, not the data
set twice (heap + object store) as when a decoded list was handed to ``tune.with_parameters``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from hairseg_core.data.memory import MaterializedSplit
from hairseg_core.data.splits import RawSplit
from hairseg_core.train.trainer import TrialData

#: Samples per object: large enough that a 30-chunk split costs 30 object-store entries, small enough
#: (~64 MiB at 512²) that the driver's transient copy stays small.
CHUNK_SAMPLES = 64


class ObjectStoreSplit:
    """A split whose decoded samples live in Ray's object store; pickles as object references only.

    :meth:`open` fetches every chunk (zero-copy: the arrays are read-only views of the node's shared
    memory) in the process that trains, before its DataLoader workers fork.
    """

    input_path = "object store"

    def __init__(self, refs: list[Any], chunk: int, names: list[str], nbytes: int) -> None:
        self.refs = refs
        self.chunk = chunk
        self.names = names
        self._nbytes = nbytes
        self._chunks: list[MaterializedSplit] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"refs": self.refs, "chunk": self.chunk, "names": self.names, "_nbytes": self._nbytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._chunks = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def open(self, workers: int = 1, progress: bool = False) -> ObjectStoreSplit:
        if self._chunks is None:
            self._chunks = ray.get(self.refs)
        return self

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._chunks is None:
            self.open()
        assert self._chunks is not None
        return self._chunks[index // self.chunk].sample(index % self.chunk)


def put_split(split: RawSplit, chunk: int = CHUNK_SAMPLES) -> ObjectStoreSplit:
    """Copy ``split`` into the object store ``chunk`` samples at a time."""
    refs, nbytes = [], 0
    for start in range(0, len(split), chunk):
        part = MaterializedSplit()
        for i in range(start, min(start + chunk, len(split))):
            image, mask = split.sample(i)
            part.images.append(np.array(image, copy=True))
            part.masks.append(np.array(mask, copy=True))
            part.names.append(str(split.names[i]))
        nbytes += part.nbytes
        refs.append(ray.put(part))
        del part
    return ObjectStoreSplit(refs, chunk, [str(n) for n in split.names], nbytes)


def share_in_object_store(data: TrialData) -> TrialData:
    """The memory path: every split of ``data`` put into the object store (pooled splits as one each)."""
    return TrialData(train=put_split(data.train), val=put_split(data.val), val_parts=dict(data.val_parts))
