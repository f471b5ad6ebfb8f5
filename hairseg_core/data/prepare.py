"""Check a hand-downloaded CelebAMask-HQ and prepare it for a sweep (``hairseg data prepare celebamask_hq``).

CelebAMask-HQ cannot be fetched by a script (``MANUAL_DOWNLOADS`` in :mod:`hairseg_core.data.download`
says what to download and where to unpack it), so the recipe starts from the unzipped folder and does,
before any sweep spends GPU hours on it, what a sweep would otherwise find out one trial at a time:

* the layout: ``CelebA-HQ-img/<i>.jpg`` and ``CelebAMask-HQ-mask-anno/<i // 2000>/<iiiii>_hair.png``, the
  official one (``face_parsing/Data_preprocessing/g_mask.py`` in switchablenorms/CelebAMask-HQ reads the
  same paths); a hair mask in the wrong numbered folder, or one whose photo is missing, is a problem,
  because the loader would never see it;
* every photo and hair mask decodes with the readers training uses (a truncated JPEG from an interrupted
  unzip fails here, naming the file), and the masks have the annotation size (512×512);
* counts, index range, gaps, sizes on disk, and how many photos have no hair file (people with no
  visible hair: the loader gives them an all-background mask, on purpose);
* the split: CelebA's official partition through the download's ``CelebA-HQ-to-CelebA-mapping.txt``
  (:mod:`hairseg_core.data.celeba_split`), else a seeded one, saying which; written to a split file whose
  header says how it was made, so every node and every later run uses the same assignment.

The library raises :class:`DataError` for a layout it cannot read at all and returns every per-file
problem in :attr:`CelebAMaskCheck.problems`; the CLI prints them one per line and exits 2.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from hairseg_core.data.celeba_split import (
    MAPPING_FILE,
    SPLIT_FILE_HEADER,
    SplitPlan,
    format_split_file,
    plan_split,
    split_counts_text,
)
from hairseg_core.data.datasets import (
    CELEBA_IMAGE_DIR,
    CELEBA_MASK_DIR,
    CELEBA_MASK_SIZE,
    _require_root,
    celeba_images,
    decode_threshold_mask,
    read_image_rgb,
)
from hairseg_core.data.errors import DataError
from hairseg_core.progress import progress_bar

DEFAULT_SPLIT_FILE = "hairseg-split.txt"
#: The full data set: 30 000 photos, indices 0..29999, in 15 mask folders of 2 000.
FULL_SIZE = 30000
_HAIR_SUFFIX = "_hair.png"

T = TypeVar("T")


@dataclass
class CelebAMaskCheck:
    """What :func:`check_celebamask_hq` found; ``problems`` (one ``<file>: <what>; expected …`` each) empty = usable."""

    root: Path
    images: int
    first_index: int
    last_index: int
    gaps: list[int]
    hair_masks: int
    without_hair: int
    image_sizes: Counter[tuple[int, int]]
    mask_sizes: Counter[tuple[int, int]]
    image_bytes: int
    mask_bytes: int
    mask_size: int
    plan: SplitPlan
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_celebamask_hq(
    root: str | os.PathLike[str],
    *,
    split_scheme: str = "auto",
    partition_file: str | os.PathLike[str] | None = None,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    mask_size: int = CELEBA_MASK_SIZE[0],
    threads: int = 1,
    progress: bool = False,
) -> CelebAMaskCheck:
    """Verify a CelebAMask-HQ folder file by file and decide its split (nothing is written).

    Raises :class:`DataError` when the root or one of its two folders is missing, no photo is there, or the
    mapping / partition file is malformed; everything else is collected in ``problems``. ``threads`` decode
    in parallel (OpenCV releases the GIL), ``progress`` shows a bar on stderr.
    """
    base = _require_root(root, "celebamask_hq")
    images = celeba_images(base)
    indices = sorted(int(stem) for stem in images)
    plan = plan_split(  # before the slow part: a bad mapping or partition file fails in a second
        base,
        images,
        split_scheme=split_scheme,
        partition_file=partition_file,
        split_fractions=split_fractions,
        split_seed=split_seed,
    )
    problems: list[str] = []
    masks = _hair_masks(base, problems)
    for index, path in sorted(masks.items()):
        if str(index) not in images:
            problems.append(f"{path}: hair mask without its photo; expected {base / CELEBA_IMAGE_DIR / f'{index}.jpg'}")

    def image_shape(path: Path) -> tuple[int, int]:
        return read_image_rgb(path).shape[:2]

    def mask_shape(path: Path) -> tuple[int, int]:
        return decode_threshold_mask(path).shape[:2]

    jobs = [(image_shape, path) for _, path in sorted(images.items(), key=lambda kv: int(kv[0]))]
    jobs += [(mask_shape, path) for _, path in sorted(masks.items())]
    shapes = _run(jobs, threads, progress, problems)
    image_sizes: Counter[tuple[int, int]] = Counter(shapes[p] for p in images.values() if p in shapes)
    mask_sizes: Counter[tuple[int, int]] = Counter(shapes[p] for p in masks.values() if p in shapes)
    expected = (mask_size, mask_size)
    for path in sorted(masks.values()):
        shape = shapes.get(path)
        if shape is not None and shape != expected:
            problems.append(
                f"{path}: mask is {shape[0]}x{shape[1]}; expected {mask_size}x{mask_size}, the annotation size "
                "(--mask-size for a resized copy)"
            )
    present = set(indices)
    return CelebAMaskCheck(
        root=base,
        images=len(images),
        first_index=indices[0],
        last_index=indices[-1],
        gaps=[i for i in range(indices[0], indices[-1] + 1) if i not in present],
        hair_masks=len(masks),
        without_hair=sum(1 for i in indices if i not in masks),
        image_sizes=image_sizes,
        mask_sizes=mask_sizes,
        image_bytes=sum(_size(p) for p in images.values()),
        mask_bytes=sum(_size(p) for p in masks.values()),
        mask_size=mask_size,
        plan=plan,
        problems=sorted(problems),
    )


def _hair_masks(base: Path, problems: list[str]) -> dict[int, Path]:
    """``{index: path}`` of every ``<iiiii>_hair.png`` under the mask folder; misplaced files are problems."""
    found: dict[int, Path] = {}
    for folder in sorted(p for p in (base / CELEBA_MASK_DIR).iterdir() if p.is_dir()):
        for entry in os.scandir(folder):
            name = entry.name
            if not name.endswith(_HAIR_SUFFIX):
                continue  # the other 17 parts (skin, nose, ...) are not used
            digits = name[: -len(_HAIR_SUFFIX)]
            path = Path(entry.path)
            if not (digits.isdigit() and len(digits) == 5):
                problems.append(f"{path}: not a hair mask name; expected <iiiii>_hair.png with a 5-digit image index")
                continue
            index = int(digits)
            if folder.name != str(index // 2000):
                problems.append(
                    f"{path}: in folder {folder.name}/; expected {CELEBA_MASK_DIR}/{index // 2000}/ "
                    "(image index // 2000), where the loader looks for it"
                )
                continue
            found[index] = path
    return found


def _run(
    jobs: list[tuple[Callable[[Path], T], Path]], threads: int, progress: bool, problems: list[str]
) -> dict[Path, T]:
    """Apply each job's function to its path in ``threads`` threads; a :class:`DataError` becomes a problem."""

    def one(job: tuple[Callable[[Path], T], Path]) -> tuple[Path, T | None, str | None]:
        func, path = job
        try:
            return path, func(path), None
        except DataError as exc:
            return path, None, str(exc)

    results: dict[Path, T] = {}
    with ThreadPoolExecutor(max_workers=max(int(threads), 1)) as pool:
        outcomes = pool.map(one, jobs)
        for path, value, problem in progress_bar(
            outcomes, total=len(jobs), desc="decoding", unit="file", disable=not progress
        ):
            if problem is not None:
                problems.append(problem)
            else:
                results[path] = value  # type: ignore[assignment]
    return results


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _bytes(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _sizes(counted: Counter[tuple[int, int]]) -> str:
    shown = ", ".join(f"{h}x{w} ({n})" if len(counted) > 1 else f"{h}x{w}" for (h, w), n in counted.most_common(3))
    return shown + (f", {len(counted) - 3} more sizes" if len(counted) > 3 else "")


def _first(values: Iterable[int], count: int = 5) -> str:
    values = list(values)
    return ", ".join(str(v) for v in values[:count]) + (", ..." if len(values) > count else "")


def format_report(check: CelebAMaskCheck) -> list[str]:
    """The human-readable summary: counts, sizes, gaps, the split and how it was made."""
    full = "" if check.images == FULL_SIZE else f" (the full CelebAMask-HQ has {FULL_SIZE}, 0..{FULL_SIZE - 1})"
    image_sizes = _sizes(check.image_sizes) or "none decoded"
    mask_sizes = _sizes(check.mask_sizes) or "none decoded"
    lines = [
        f"CelebAMask-HQ at {check.root}: {'ok' if check.ok else f'{len(check.problems)} problem(s)'}",
        f"  photos       {check.images} in {CELEBA_IMAGE_DIR}/, indices {check.first_index}..{check.last_index}"
        f"{full}, {image_sizes}, {_bytes(check.image_bytes)}",
        f"  hair masks   {check.hair_masks} in {CELEBA_MASK_DIR}/<i//2000>/, {mask_sizes}, {_bytes(check.mask_bytes)}; "
        f"{check.without_hair} photos have no hair file (no visible hair: all-background masks)",
    ]
    if check.gaps:
        lines.append(f"  missing      {len(check.gaps)} indices between the first and last photo: {_first(check.gaps)}")
    lines.append(f"  split        {split_counts_text(check.plan.counts())}: {check.plan.description}")
    return lines


def write_split_file(check: CelebAMaskCheck, path: str | os.PathLike[str]) -> str:
    """Write ``check.plan`` to ``path`` (atomically); returns ``written`` or ``unchanged``.

    A file already at ``path`` that this recipe did not write (no :data:`SPLIT_FILE_HEADER` first line) is a
    user's own split and is never overwritten: :class:`DataError` says so.
    """
    path = Path(path).expanduser()
    text = format_split_file(check.plan, check.root)
    if path.is_file():
        old = path.read_text(encoding="utf-8", errors="replace")
        if old == text:
            return "unchanged"
        if not old.startswith(SPLIT_FILE_HEADER):
            raise DataError(
                f"{path}: exists and was not written by `hairseg data prepare`; it is left as it is. Remove it, "
                "or pass --split-file with another path (or use it as is: dataset_options.split_file)"
            )
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"cannot write split file {path}: {exc.strerror or exc}; pass --split-file with a writable path"
        ) from exc
    return "written"


def check_split_file(check: CelebAMaskCheck, path: str | os.PathLike[str]) -> str:
    """An existing split file against the photos found: its counts, or :class:`DataError` naming the bad line."""
    path = Path(path).expanduser()
    plan = plan_split(check.root, check.plan.assignment, split_file=path)
    same = plan.assignment == check.plan.assignment
    return f"{split_counts_text(plan.counts())}{'' if same else f' (differs from the {check.plan.method} split)'}"


def usage_lines(check: CelebAMaskCheck, split_file: Path | None) -> list[str]:
    """The exact ``--set`` line and YAML that point a sweep at this folder (absolute paths: trials run elsewhere)."""
    root = check.root.resolve()
    options: dict[str, str | int] = {}
    if split_file is not None:
        options["split_file"] = str(split_file.resolve())
    if check.mask_size != CELEBA_MASK_SIZE[0]:
        options["mask_size"] = check.mask_size
    flow = "{" + ", ".join(f"{k}: {v}" for k, v in options.items()) + "}"
    sets = " ".join(f"fixed.dataset_options.{k}={v}" for k, v in options.items())
    lines = [
        "Use it in a sweep (search_spaces/paper.yaml reads /data/CelebAMask-HQ; override the path like this):",
        f"  python pipelines/sweep.py --space search_spaces/paper.yaml --set dataset=celebamask_hq data_root={root}"
        + (f" {sets}" if sets else ""),
        "or in a search space, under fixed:",
        "  dataset: celebamask_hq",
        f"  data_root: {root}",
    ]
    if options:
        lines.append(f"  dataset_options: {flow}")
    source = f"{{name: celebamask_hq, dataset: celebamask_hq, data_root: {root}"
    source += f", dataset_options: {flow}" if options else ""
    lines += [
        "or as one source of several (fixed.sources):",
        f"  - {source}, train: true, val: true, test: true}}",
    ]
    if split_file is None and check.plan.method == "seeded":
        lines.append(f"(without a split file or {MAPPING_FILE} the loader uses the same seeded split)")
    return lines
