"""Which CelebAMask-HQ image is train, val or test: CelebA's official partition, a split file, or a seeded split.

Published CelebAMask-HQ numbers use CelebA's own partition, carried over to the 30 000 HQ images
(24 183 train / 2 993 val / 2 824 test): CelebAMask-HQ ships ``CelebA-HQ-to-CelebA-mapping.txt``
(``idx orig_idx orig_file``: HQ image ``idx`` is CelebA's ``orig_file``), and CelebA's
``Eval/list_eval_partition.txt`` says per CelebA file whether it is train (0), val (1) or test (2).
The authors' own ``face_parsing/Data_preprocessing/g_partition.py`` does the same with the partition's
boundaries, because CelebA's partition is contiguous: files ``000001``–``162770`` train, ``162771``–
``182637`` val, ``182638``–``202599`` test. So the mapping file alone, which is inside the CelebAMask-HQ
download, gives the official split; ``list_eval_partition.txt``, when present, is used instead of the
boundaries (we key on ``orig_file``, the 1-based CelebA name, which is exact; ``g_partition.py`` compares
the 0-based ``orig_idx`` with 1-based boundaries, so it can put the first val and the first test file
one split early).

Without the mapping file a seeded 80/10/10 split over the image indices is the fallback: reproducible,
but not comparable with published results, which is why the dataset builder announces it.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from hairseg_core.data.errors import DataError

MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
PARTITION_FILE = "list_eval_partition.txt"
#: Last CelebA file number of the train and of the val partition (list_eval_partition.txt is contiguous).
CELEBA_LAST_TRAIN, CELEBA_LAST_VAL = 162770, 182637
SPLIT_FILE_HEADER = "# hairseg split file"
SplitScheme = Literal["auto", "official", "seeded"]
SPLIT_SCHEMES: tuple[str, ...] = ("auto", "official", "seeded")

_SPLIT_ALIASES = {
    "train": "train",
    "0": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "1": "val",
    "test": "test",
    "2": "test",
}


@dataclass(frozen=True)
class SplitPlan:
    """A train/val/test assignment of image stems and how it was made.

    ``method`` is ``split_file``, ``official_partition`` (mapping + list_eval_partition.txt),
    ``official_ranges`` (mapping + CelebA's partition ranges) or ``seeded``; ``description`` is the
    sentence a user reads in the dataset's name, the prepare report and the split file's header.
    """

    assignment: dict[str, str]
    method: str
    description: str

    @property
    def official(self) -> bool:
        return self.method.startswith("official")

    def counts(self) -> dict[str, int]:
        counted = Counter(self.assignment.values())
        return {split: counted.get(split, 0) for split in ("train", "val", "test")}


def _read_lines(path: Path, what: str) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text file ({exc.reason}); expected the {what}") from exc


def read_split_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """``<image index or file name> <split>`` per line (``#`` comments); split is train/val/test or CelebA's 0/1/2."""
    path = Path(path)
    assignment: dict[str, str] = {}
    for lineno, line in enumerate(_read_lines(path, "split file"), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2 or fields[1].lower() not in _SPLIT_ALIASES:
            raise DataError(f"{path}:{lineno}: expected '<image> <train|val|test|0|1|2>', got {line.strip()!r}")
        assignment[Path(fields[0]).stem] = _SPLIT_ALIASES[fields[1].lower()]
    return assignment


def _celeba_number(name: str, path: Path, lineno: int) -> int:
    stem = Path(name).stem
    if not stem.isdigit():
        raise DataError(f"{path}:{lineno}: expected a CelebA file name such as 000001.jpg, got {name!r}")
    return int(stem)


def read_hq_mapping(path: str | os.PathLike[str]) -> dict[int, int]:
    """``CelebA-HQ-to-CelebA-mapping.txt`` → {HQ index: CelebA file number} (the header line is skipped)."""
    path = Path(path)
    mapping: dict[int, int] = {}
    for lineno, line in enumerate(_read_lines(path, "CelebA-HQ to CelebA mapping"), start=1):
        fields = line.split()
        if not fields or not fields[0].isdigit():
            continue  # the header "idx orig_idx orig_file", blank lines
        if len(fields) != 3:
            raise DataError(f"{path}:{lineno}: expected '<idx> <orig_idx> <orig_file>', got {line.strip()!r}")
        mapping[int(fields[0])] = _celeba_number(fields[2], path, lineno)
    if not mapping:
        raise DataError(f"{path}: lists no images; expected lines '<idx> <orig_idx> <orig_file>' after a header")
    return mapping


def read_celeba_partition(path: str | os.PathLike[str]) -> dict[int, str]:
    """CelebA's ``list_eval_partition.txt`` (``000001.jpg 0``) → {CelebA file number: train|val|test}."""
    path = Path(path)
    partition: dict[int, str] = {}
    for lineno, line in enumerate(_read_lines(path, "CelebA partition file"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(f"{path}:{lineno}: expected '<CelebA file> <0|1|2>', got {line.strip()!r}")
        partition[_celeba_number(fields[0], path, lineno)] = _SPLIT_ALIASES[fields[1]]
    if not partition:
        raise DataError(f"{path}: lists no images; expected lines '000001.jpg 0'")
    return partition


def _by_ranges(number: int) -> str:
    return "train" if number <= CELEBA_LAST_TRAIN else "val" if number <= CELEBA_LAST_VAL else "test"


def official_assignment(stems: Iterable[str], mapping_path: Path, partition_path: Path | None) -> dict[str, str]:
    """CelebA's split for each HQ image stem, through the mapping (and the partition file when given)."""
    mapping = read_hq_mapping(mapping_path)
    partition = read_celeba_partition(partition_path) if partition_path is not None else None
    assignment: dict[str, str] = {}
    for stem in sorted(stems, key=int):
        number = mapping.get(int(stem))
        if number is None:
            raise DataError(f"{mapping_path}: has no line for image {stem}.jpg; expected one line per CelebA-HQ image")
        if partition is None:
            assignment[stem] = _by_ranges(number)
        elif number in partition:
            assignment[stem] = partition[number]
        else:
            raise DataError(
                f"{partition_path}: has no line for CelebA file {number:06d}.jpg (image {stem}.jpg via {MAPPING_FILE})"
            )
    return assignment


def split_three_ways(names: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """Seeded random train/val/test assignment with sizes floor(f·n) for val/test, rest train."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"split_fractions must be three non-negative numbers summing to 1, got {fractions}")
    ordered = sorted(names)
    order = np.random.default_rng(seed).permutation(len(ordered))
    n_val = int(len(ordered) * fractions[1])
    n_test = int(len(ordered) * fractions[2])
    assignment = {}
    for rank, i in enumerate(order):
        assignment[ordered[i]] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return assignment


def plan_split(
    base: Path,
    stems: Iterable[str],
    *,
    split_file: str | os.PathLike[str] | None = None,
    split_scheme: str = "auto",
    partition_file: str | os.PathLike[str] | None = None,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
) -> SplitPlan:
    """Decide the split of the HQ images ``stems`` under ``base``.

    ``split_file`` wins. Otherwise ``split_scheme``: ``auto`` takes the official split when
    ``base/CelebA-HQ-to-CelebA-mapping.txt`` exists and the seeded one otherwise; ``official`` requires the
    mapping; ``seeded`` ignores it. ``partition_file`` (default ``base/list_eval_partition.txt`` when present)
    replaces CelebA's partition ranges by the partition list itself.
    """
    stems = list(stems)
    if split_scheme not in SPLIT_SCHEMES:
        raise DataError(f"split_scheme {split_scheme!r} is not one of {', '.join(SPLIT_SCHEMES)}")
    if split_file is not None:
        if split_scheme != "auto":
            raise DataError(f"give either split_file ({split_file}) or split_scheme={split_scheme!r}, not both")
        path = Path(split_file).expanduser()
        assignment = read_split_file(path)
        unknown = sorted(set(assignment) - set(stems), key=lambda s: (len(s), s))
        if unknown:
            raise DataError(f"{path}: lists image {unknown[0]!r} that is not in {base}")
        return SplitPlan(assignment, "split_file", f"split file {path}")
    mapping = base / MAPPING_FILE
    partition = _partition_path(base, partition_file)
    if split_scheme == "official" or (split_scheme == "auto" and mapping.is_file()):
        if not mapping.is_file():
            raise DataError(
                f"{mapping}: missing; split_scheme 'official' needs the {MAPPING_FILE} that comes with the "
                "CelebAMask-HQ download (in its top folder, beside CelebA-HQ-img)"
            )
        assignment = official_assignment(stems, mapping, partition)
        if partition is not None:
            how = f"official CelebA split ({MAPPING_FILE} + {partition})"
            return SplitPlan(assignment, "official_partition", how)
        how = (
            f"official CelebA split ({MAPPING_FILE} + CelebA's partition ranges: files up to "
            f"{CELEBA_LAST_TRAIN:06d}.jpg train, up to {CELEBA_LAST_VAL:06d}.jpg val, the rest test)"
        )
        return SplitPlan(assignment, "official_ranges", how)
    fractions = tuple(float(f) for f in split_fractions)
    assignment = split_three_ways(stems, fractions, split_seed)
    shares = "/".join(f"{round(f * 100):g}" for f in fractions)
    why = "" if split_scheme == "seeded" else f" because there is no {MAPPING_FILE}"
    how = f"seeded {shares} split (split_seed={split_seed}), not CelebA's official partition{why}"
    return SplitPlan(assignment, "seeded", how)


def _partition_path(base: Path, partition_file: str | os.PathLike[str] | None) -> Path | None:
    if partition_file is not None:
        path = Path(partition_file).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: partition_file not found; expected CelebA's Eval/{PARTITION_FILE}")
        return path
    default = base / PARTITION_FILE
    return default if default.is_file() else None


def format_split_file(plan: SplitPlan, root: Path) -> str:
    """The text of a split file for ``plan``: a header saying how it was made, then ``<index> <split>`` lines."""
    counts = plan.counts()
    lines = [
        f"{SPLIT_FILE_HEADER} for CelebAMask-HQ at {root}, written by `hairseg data prepare celebamask_hq`",
        f"# split: {plan.description}",
        f"# images: {counts['train']} train / {counts['val']} val / {counts['test']} test",
    ]
    lines += [f"{stem} {split}" for stem, split in sorted(plan.assignment.items(), key=lambda kv: int(kv[0]))]
    return "\n".join(lines) + "\n"


def split_counts_text(counts: Mapping[str, int]) -> str:
    return f"{counts['train']} train / {counts['val']} val / {counts['test']} test"
