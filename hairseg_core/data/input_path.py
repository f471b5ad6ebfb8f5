"""How a run's training and validation data reach its trials: in memory, or streamed from a node cache.

Two paths, chosen by the decoded size against a memory budget (``data:`` in a search space):

* **memory** — the decoded data fits the budget: it is decoded once, put into Ray's object store once,
  and every trial on every node reads the same copy (zero-copy). Worker nodes need neither the files
  nor disk. Used memory per node grows with the data set, which the budget bounds.
* **stream** — larger data: every node keeps a pre-resized, memory-mapped copy of each split on local
  disk (:mod:`hairseg_core.data.node_cache`), built once per node by the first trial that needs it
  (the driver builds its own node's copy before Ray starts, which also checks every file). Trials read
  samples from it as they train; the bytes sit in the kernel's page cache, shared and reclaimable, so
  used memory does not grow with the data set.

The memory path keeps every image at its own resolution, exactly as decoded. The streaming path's cache
also does, except for images more than twice as large (short side) as any trial reads, which it stores at
twice that size (INTER_AREA): a 4000×3000 photo would otherwise cost 36 MB of disk and a large resize per
epoch. Where nothing is that large (celeb1k, Figaro-1k, CelebAMask-HQ at its 512² mask size for
``base_size`` ≥ 256) both paths give a trial bit-identical pixels for the same index, and what it learns is
identical; ``benchmarks/README.md`` ("Input pipeline") measures the rest and the alternatives tried.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from hairseg_core.data.datasets import build_dataset
from hairseg_core.data.errors import DataError
from hairseg_core.data.node_cache import MappedSplit, build_or_open, estimate_stored_bytes
from hairseg_core.data.remote import is_uri, stage_root
from hairseg_core.data.synthetic import default_cache_root
from hairseg_core.track.tags import (
    TAG_DATA_CACHE_DIR,
    TAG_DATA_DECODED_GIB,
    TAG_DATA_INPUT,
    TAG_DATA_INPUT_REQUESTED,
    TAG_DATA_MEMORY_BUDGET_GIB,
    TAG_DATA_STORE_SHORT_SIDE,
)

InputMode = Literal["memory", "stream"]


def data_cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where node caches live: ``explicit`` (``data.cache_dir``), ``$HAIRSEG_DATA_CACHE``, or ``<cache>/data``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("HAIRSEG_DATA_CACHE")
    return Path(env).expanduser() if env else default_cache_root() / "data"


def source_dataset(source: Any, split: str, transform: Any = None, cache_dir: str | None = None) -> Any:
    """``split`` of one data source (a ``DataSource``), raw samples at their own resolution.

    A root in object storage (``s3://...``) is first mirrored to this node's disk
    (:func:`hairseg_core.data.remote.stage_root`, under ``cache_dir``'s data cache).
    """
    root = source.data_root
    if is_uri(root):
        root = str(stage_root(root, data_cache_dir(cache_dir)))
    return build_dataset(source.dataset, split, root=root, transform=transform, **source.dataset_options)


def needed_short_side(configs: Iterable[Any]) -> int:
    """The largest short side any of these training configurations resizes an image to.

    Training resizes the short side to ``base_size`` (random scale crop: up to twice that); validation and
    precise BN resize to the eval size. The node cache keeps at least this much resolution (and up to
    ``STORE_SLACK`` times more), so it never takes detail a trial could use.
    """
    from hairseg_core.scaling import effective_eval_size  # numpy/OpenCV only

    sides = []
    for cfg in configs:
        sides.append((2 if cfg.rsc else 1) * int(cfg.base_size))
        sides.append(effective_eval_size(cfg))
    if not sides:
        raise ValueError("needed_short_side: no configurations")
    return max(sides)


def space_short_side(space: Any) -> int:
    """:func:`needed_short_side` over every trial a search space can make (its searched sizes at their largest).

    One cache serves the whole sweep: it keeps enough resolution for the largest ``base_size`` (doubled
    when any trial may use random scale crop) and the largest eval size any trial validates at.
    """
    base = space.trial_config({})

    def values(name: str) -> list[Any]:
        spec = space.params.get(name)
        return [getattr(base, name)] if spec is None else list(spec.values())

    rsc = any(bool(v) for v in values("rsc"))
    sizes = [(2 if rsc else 1) * int(max(values("base_size")))]
    evals = values("eval_size")
    sizes += [int(v) for v in evals if v is not None]
    if any(v is None for v in evals):  # validation falls back to the crop size
        sizes += [int(v) for v in values("crop_size")]
    return max(sizes)


def split_description(source: Any, split: str) -> str:
    options = ",".join(f"{k}={v}" for k, v in sorted(source.dataset_options.items()))
    return f"{source.name}-{split}-{source.dataset}" + (f"[{options}]" if options else "")


@dataclass
class StreamedSplit:
    """One source's split on the streaming path: what to cache and what the driver saw, not the data.

    Small enough to pickle through Ray (the mapping is not pickled: another node maps its own copy).
    :meth:`open` (called once per trial before its loaders start) maps this node's cache, building it
    first when this node has none, and checks the node's files are the ones the driver checked.
    ``cache_dir`` None means each node's default (:func:`data_cache_dir`, resolved on that node).
    """

    input_path: ClassVar[str] = "stream"

    source: Any
    split: str
    cache_dir: str | None
    store_short_side: int | None
    content_digest: str
    names: list[str]
    nbytes: int = 0
    _mapped: MappedSplit | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.names)

    def open(self, workers: int = 1, progress: bool = False) -> MappedSplit:
        if self._mapped is None:
            self._mapped = build_or_open(
                source_dataset(self.source, self.split, cache_dir=self.cache_dir),
                split_description(self.source, self.split),
                data_cache_dir(self.cache_dir),
                self.store_short_side,
                workers=workers,
                progress=progress,
                expect_digest=self.content_digest,
            )
        return self._mapped

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.open().sample(index)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mapped": None}


@dataclass
class InputPlan:
    """The input path a sweep chose, and why (printed, and logged on the MLflow parent run)."""

    mode: InputMode
    decoded_bytes: int
    budget_bytes: int
    cache_dir: str
    store_short_side: int | None
    requested: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        size = f"{self.decoded_bytes / 2**30:.2f} GiB decoded"
        budget = f"memory budget {self.budget_bytes / 2**30:.2f} GiB"
        if self.requested != "auto":
            return f"data.input={self.requested} ({size}; {budget})"
        relation = "<=" if self.decoded_bytes <= self.budget_bytes else ">"
        return f"{size} {relation} {budget}"

    def describe(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        if self.mode == "memory":
            where = "in memory: decoded once, one copy per node in Ray's object store"
        else:
            where = f"streamed from a memory-mapped node cache under {self.cache_dir} (page cache, bounded memory)"
        return f"data ({counts}): {where}; {self.reason}"

    def tags(self) -> dict[str, Any]:
        return {
            TAG_DATA_INPUT: self.mode,
            TAG_DATA_INPUT_REQUESTED: self.requested,
            TAG_DATA_DECODED_GIB: round(self.decoded_bytes / 2**30, 3),
            TAG_DATA_MEMORY_BUDGET_GIB: round(self.budget_bytes / 2**30, 3),
            TAG_DATA_CACHE_DIR: self.cache_dir,
            TAG_DATA_STORE_SHORT_SIDE: self.store_short_side,
        }


def choose_mode(requested: str, decoded_bytes: int, budget_bytes: int) -> InputMode:
    if requested in ("memory", "stream"):
        return requested  # type: ignore[return-value]
    if requested != "auto":
        raise ValueError(f"data.input must be auto, memory or stream, got {requested!r}")
    return "memory" if decoded_bytes <= budget_bytes else "stream"


def cache_sources(
    cfg: Any,
    cache_dir: str | None,
    store_short_side: int | None,
    *,
    workers: int = 1,
    progress: bool = False,
) -> dict[str, list[tuple[str, StreamedSplit]]]:
    """Build (or find) this node's cache of every train / val split of ``cfg``'s sources.

    Decodes every file once (a corrupt image raises :class:`DataError` naming it); returns the splits,
    already mapped on this node, as ``{"train": [(source name, split)], "val": [...]}``. ``cache_dir``
    is ``data.cache_dir`` (None: each node's default).
    """
    out: dict[str, list[tuple[str, StreamedSplit]]] = {"train": [], "val": []}
    for role in ("train", "val"):
        for source in cfg.data_sources:
            if not getattr(source, role):
                continue
            dataset = source_dataset(source, role, cache_dir=cache_dir)
            if len(dataset) == 0:
                raise DataError(f"{source.name}: split {role!r} of {source.data_root} is empty")
            mapped = build_or_open(
                dataset,
                split_description(source, role),
                data_cache_dir(cache_dir),
                store_short_side,
                workers=workers,
                progress=progress,
            )
            streamed = StreamedSplit(
                source=source,
                split=role,
                cache_dir=cache_dir,
                store_short_side=store_short_side,
                content_digest=mapped.meta["content_digest"],
                names=list(mapped.names),
                nbytes=mapped.nbytes,
                _mapped=mapped,
            )
            out[role].append((source.name, streamed))
    return out


def estimate_decoded_bytes(cfg: Any, store_short_side: int | None = None) -> int:
    """Decoded train + val bytes of ``cfg``'s data from a few decoded samples per split (no full decode)."""
    total = 0
    for role in ("train", "val"):
        for source in cfg.data_sources:
            if getattr(source, role):
                total += estimate_stored_bytes(source_dataset(source, role), store_short_side)
    return total


def val_parts(parts: Sequence[tuple[str, Any]]) -> dict[str, tuple[int, int]]:
    """Each validation source's ``[start, stop)`` range in the pooled split (none for a single source)."""
    if len(parts) < 2:
        return {}
    ranges, start = {}, 0
    for name, split in parts:
        ranges[name] = (start, start + len(split))
        start += len(split)
    return ranges
