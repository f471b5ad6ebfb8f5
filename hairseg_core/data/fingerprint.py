"""What data a run trained on, as MLflow's UI shows it: a name, a source folder and a digest per data source.

The digest is the sha256 of every sample file's path (relative to the source folder) and size, sorted, over
the splits the run reads. Reading names and sizes costs one ``stat`` per file instead of hashing gigabytes
of images, and still changes when a file is added, removed, renamed or replaced by one of another size,
which is what "was this trained on the same data?" needs; two runs with equal digests read the same list.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hairseg_core.config import DataSource, TrainConfig
from hairseg_core.data.input_path import source_dataset


@dataclass(frozen=True)
class DataFingerprint:
    """One data source of a run: its folder, the digest of its file list and how many images each split has."""

    name: str
    dataset: str
    root: str
    digest: str
    counts: dict[str, int] = field(default_factory=dict)


def _files(samples: Iterable[object]) -> list[Path]:
    out = []
    for ref in samples:
        out.append(Path(ref.image))  # type: ignore[attr-defined]
        mask = getattr(ref, "mask", None)
        if mask is not None:
            out.append(Path(mask))
    return out


def fingerprint_source(source: DataSource, splits: Sequence[str] = ("train", "val")) -> DataFingerprint:
    """List the sample files of ``splits`` of one source (no decoding) and digest their names and sizes."""
    files: list[Path] = []
    counts: dict[str, int] = {}
    for split in splits:
        dataset = source_dataset(source, split)
        samples = getattr(dataset, "samples", [])
        counts[split] = len(samples)
        files += _files(samples)
    if files:
        root = Path(os.path.commonpath([str(f.resolve().parent) for f in files]))
    else:
        root = Path(source.data_root or ".").resolve()
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: str(p.resolve())):
        resolved = path.resolve()
        digest.update(f"{resolved.relative_to(root).as_posix()}\0{resolved.stat().st_size}\n".encode())
    return DataFingerprint(source.name, source.dataset, str(root), digest.hexdigest(), counts)


def fingerprint_config(cfg: TrainConfig, splits: Sequence[str] = ("train", "val")) -> list[DataFingerprint]:
    """A fingerprint per data source of a training configuration (the splits a trial reads)."""
    return [fingerprint_source(source, splits) for source in cfg.data_sources]
