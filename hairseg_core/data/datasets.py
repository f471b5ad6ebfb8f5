"""Hair segmentation datasets behind one registry.

Every dataset yields ``{"image", "mask", "name"}``. Without a transform ``image`` is uint8
H×W×3 **RGB** and ``mask`` uint8 H×W with 0 = background, 1 = hair (255 = ignore only ever
appears through padding in a transform); with a transform the transform's output is passed
through (the project's transforms give a float32 [3,H,W] tensor and an int64 [H,W] tensor).

Layouts (``root`` is the folder named in each):

* ``folder``        ``ROOT/<split>/images/<stem>.(jpg|jpeg|png)`` + ``ROOT/<split>/masks/<stem>.png``
                    (0/255, or 0/1). Without a ``val`` folder, ``val_fraction`` of train is held out.
* ``lfw_parts``     LFW Part Labels: ``lfw_funneled/<Person>/<Person>_NNNN.jpg``,
                    ``parts_lfw_funneled_gt_images/<Person>_NNNN.ppm`` (hair = red), and the official
                    ``parts_{train,validation,test}.txt`` (lines ``<Person> <N>``; 1500/500/927).
* ``celebamask_hq`` ``CelebA-HQ-img/<i>.jpg`` + ``CelebAMask-HQ-mask-anno/<i//2000>/<iiiii>_hair.png``
                    (the official download; its ``CelebA-HQ-to-CelebA-mapping.txt`` gives CelebA's split).
* ``figaro1k``      ``Original/{Training,Testing}/<stem>-org.jpg`` + ``GT/{Training,Testing}/<stem>-gt.pbm``.
* ``synthetic``     generated portraits in the folder layout (see :mod:`hairseg_core.data.synthetic`).

Pairing (missing masks, empty folders) is checked when a dataset is built, so a typo in a
path fails before a sweep starts; decoding is checked lazily in ``__getitem__`` so building
a 30,000-image dataset stays cheap. ``on_error="skip"`` instead decodes everything up front
and drops bad samples with a :class:`DataWarning`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from torch.utils.data import Dataset

from hairseg_core.builders import Registry
from hairseg_core.data.celeba_split import plan_split
from hairseg_core.data.errors import DataError, DataWarning

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
OnError = Literal["raise", "skip"]
Transform = Callable[..., dict[str, Any]]
MaskDecoder = Callable[[Path], np.ndarray]

DATASETS: Registry[Dataset] = Registry("dataset")

# Held-out validation splits are announced once per (root, fraction, seed) and process,
# not once per build_dataset call (a sweep builds the same split in every trial).
_ANNOUNCED_HOLDOUTS: set[tuple[str, float, int]] = set()


# --------------------------------------------------------------------------- file decoding


def _read_bytes(path: Path, what: str) -> np.ndarray:
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def read_image_rgb(path: Path) -> np.ndarray:
    """Decode an image file to uint8 H×W×3 RGB, ignoring EXIF orientation.

    Orientation is ignored on purpose: masks are stored on the raw pixel grid, and
    rotating only the photo would silently misalign it with its mask.
    """
    buf = _read_bytes(path, "image")
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if buf.size else None
    if image is None:
        raise DataError(f"{path}: not a readable image (expected a JPEG or PNG file)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_mask_raw(path: Path, flags: int) -> np.ndarray:
    buf = _read_bytes(path, "mask")
    mask = cv2.imdecode(buf, flags) if buf.size else None
    if mask is None:
        raise DataError(f"{path}: not a readable mask image")
    return mask


def decode_binary_mask(path: Path) -> np.ndarray:
    """Folder-layout mask: exact 0/255 (or 0/1) single-channel PNG → uint8 {0, 1}.

    Exact values are required because a JPEG-compressed or anti-aliased mask would be
    thresholded differently by every tool; failing loudly is cheaper than a wrong label.
    Identical RGB channels are accepted because some editors save grey masks as RGB.
    """
    raw = _read_mask_raw(path, cv2.IMREAD_UNCHANGED)
    if raw.dtype != np.uint8:
        raise DataError(f"{path}: mask has dtype {raw.dtype}; expected an 8-bit PNG with values 0 and 255")
    if raw.ndim == 3:
        colour = raw[..., :3]
        if not (np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])):
            raise DataError(f"{path}: mask has differing colour channels; expected a single-channel 0/255 PNG")
        raw = colour[..., 0]
    present = np.flatnonzero(np.bincount(raw.ravel(), minlength=256))
    if np.isin(present, (0, 255)).all():
        return (raw > 0).astype(np.uint8)
    if np.isin(present, (0, 1)).all():
        return raw.copy()
    shown = ", ".join(str(v) for v in present[:8]) + (", ..." if present.size > 8 else "")
    raise DataError(
        f"{path}: mask values {{{shown}}} are outside {{0, 255}}; expected a lossless PNG with "
        "0 = background and 255 = hair (0/1 is accepted too)"
    )


def decode_threshold_mask(path: Path) -> np.ndarray:
    """Grey-level annotation (Figaro PBM, CelebAMask-HQ PNG): > 127 is hair."""
    raw = _read_mask_raw(path, cv2.IMREAD_GRAYSCALE)
    return (raw > 127).astype(np.uint8)


def decode_lfw_parts_mask(path: Path) -> np.ndarray:
    """LFW Part Labels ground truth: hair is red, skin green, background blue.

    A pixel is hair when its red channel is bright (> 127) and the largest of the three.
    """
    raw = _read_mask_raw(path, cv2.IMREAD_UNCHANGED)
    if raw.ndim != 3 or raw.shape[2] < 3:
        raise DataError(f"{path}: expected an RGB part-label image (hair red, skin green, background blue)")
    blue, green, red = (raw[..., c].astype(np.int16) for c in range(3))  # OpenCV decodes as BGR
    return ((red > 127) & (red > green) & (red > blue)).astype(np.uint8)


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class SampleRef:
    """One image/mask pair on disk; ``mask`` is None when "no annotation file" means "no hair"."""

    name: str
    image: Path
    mask: Path | None


class SegmentationDataset(Dataset):
    """Image/mask pairs decoded on access; see the module docstring for the sample format.

    Args:
        samples: the pairs, in a stable order.
        decode_mask: turns a mask file into uint8 {0, 1} or raises :class:`DataError`.
        transform: called as ``transform(image=..., mask=...)``; must return a dict with both keys.
        on_error: ``"raise"`` (validate lazily) or ``"skip"`` (decode all now, drop bad samples).
        resize_image_to_mask: resize the image to the mask's size instead of requiring equal
            sizes (CelebAMask-HQ: 1024² photos, 512² masks).
        empty_mask_size: (H, W) of the all-background mask used when ``SampleRef.mask`` is None.
        source: short description used in messages.
    """

    def __init__(
        self,
        samples: Sequence[SampleRef],
        *,
        decode_mask: MaskDecoder,
        transform: Transform | None = None,
        on_error: OnError = "raise",
        resize_image_to_mask: bool = False,
        empty_mask_size: tuple[int, int] | None = None,
        source: str = "dataset",
    ) -> None:
        _check_on_error(on_error)
        self.samples: list[SampleRef] = list(samples)
        self.decode_mask = decode_mask
        self.transform = transform
        self.on_error = on_error
        self.resize_image_to_mask = resize_image_to_mask
        self.empty_mask_size = empty_mask_size
        self.source = source
        if not self.samples:
            raise DataError(f"{source}: no samples")
        if on_error == "skip":
            self._drop_undecodable()

    def _drop_undecodable(self) -> None:
        kept, problems = [], []
        for index, ref in enumerate(self.samples):
            try:
                self.load_raw(index)
            except DataError as exc:
                problems.append(str(exc))
            else:
                kept.append(ref)
        if problems:
            _warn_skipped(self.source, problems, len(self.samples))
        if not kept:
            raise DataError(f"{self.source}: every sample is unreadable; first problem: {problems[0]}")
        self.samples = kept

    @property
    def names(self) -> list[str]:
        return [ref.name for ref in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decode sample ``index`` to (RGB uint8 image, {0,1} uint8 mask) of equal H×W."""
        ref = self.samples[index]
        image = read_image_rgb(ref.image)
        if ref.mask is None:
            height, width = self.empty_mask_size or image.shape[:2]
            mask = np.zeros((height, width), np.uint8)
        else:
            mask = self.decode_mask(ref.mask)
        if image.shape[:2] != mask.shape[:2]:
            if not self.resize_image_to_mask:
                raise DataError(
                    f"{ref.mask}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but image {ref.image} is "
                    f"{image.shape[0]}x{image.shape[1]}; expected the same height and width"
                )
            shrinking = mask.shape[0] < image.shape[0]
            image = cv2.resize(
                image,
                (mask.shape[1], mask.shape[0]),
                interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
            )
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.load_raw(index)
        name = self.samples[index].name
        if self.transform is None:
            return {"image": image, "mask": mask, "name": name}
        out = self.transform(image=image, mask=mask)
        return {"image": out["image"], "mask": out["mask"], "name": name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, n={len(self)})"


# --------------------------------------------------------------------------- helpers


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _check_split(split: str, allowed: Iterable[str] = SPLITS) -> None:
    allowed = tuple(allowed)
    if split not in allowed:
        raise DataError(f"unknown split {split!r}; expected one of: {', '.join(allowed)}")


def _require_root(root: str | os.PathLike[str] | None, dataset: str) -> Path:
    if root is None:
        raise DataError(f"dataset {dataset!r} needs root= (the folder holding its files)")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: dataset root for {dataset!r} does not exist or is not a folder")
    return path


def _warn_skipped(source: str, problems: list[str], total: int) -> None:
    shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
    warnings.warn(f"{source}: skipped {len(problems)} of {total} samples: {shown}", DataWarning, stacklevel=3)


def _pair_or_fail(candidates: Iterable[SampleRef], on_error: OnError, source: str, expected: str) -> list[SampleRef]:
    """Keep candidates whose image and mask files exist; raise (or warn and drop) otherwise."""
    kept, problems = [], []
    for ref in candidates:
        if not ref.image.is_file():
            problems.append(f"missing image {ref.image}")
        elif ref.mask is not None and not ref.mask.is_file():
            problems.append(f"missing mask {ref.mask} for image {ref.image}")
        else:
            kept.append(ref)
    if problems:
        if on_error == "raise":
            more = f" ({len(problems) - 1} more missing)" if len(problems) > 1 else ""
            raise DataError(f"{source}: {problems[0]}{more}; expected {expected}")
        _warn_skipped(source, problems, len(problems) + len(kept))
    if not kept:
        raise DataError(f"{source}: no usable samples; expected {expected}")
    return kept


def holdout_names(names: Iterable[str], fraction: float, seed: int) -> set[str]:
    """Deterministically pick ``round(fraction·n)`` names (at least 1, never all) to hold out.

    Depends only on the sorted names and the seed, so every process of a sweep (and every
    re-run) agrees on which images are validation and which are training.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    ordered = sorted(set(names))
    if fraction == 0.0 or len(ordered) < 2:
        return set()
    count = min(max(round(len(ordered) * fraction), 1), len(ordered) - 1)
    order = np.random.default_rng(seed).permutation(len(ordered))
    return {ordered[i] for i in order[:count]}


def _announce_holdout(source: Path, held: int, total: int, fraction: float, seed: int) -> None:
    key = (str(source.resolve()), fraction, seed)
    if key in _ANNOUNCED_HOLDOUTS:
        return
    _ANNOUNCED_HOLDOUTS.add(key)
    warnings.warn(
        f"{source}: no separate validation split; holding out {held} of {total} training images as "
        f"'val' (val_fraction={fraction}, split_seed={seed}) and excluding them from 'train'",
        DataWarning,
        stacklevel=4,
    )


def _select_holdout(
    refs: list[SampleRef], split: str, source: Path, val_fraction: float, split_seed: int
) -> list[SampleRef]:
    held = holdout_names((r.name for r in refs), val_fraction, split_seed)
    if split == "val" and not held:
        raise DataError(
            f"{source}: no validation split on disk and val_fraction={val_fraction} holds out nothing "
            f"from {len(refs)} training images; use val_fraction > 0 and at least 2 training images"
        )
    if held:
        _announce_holdout(source, len(held), len(refs), val_fraction, split_seed)
    return [r for r in refs if (r.name in held) == (split == "val")]


# --------------------------------------------------------------------------- folder


def _list_images(image_dir: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(image_dir.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        if path.stem in found:
            raise DataError(
                f"{path}: two images share the stem {path.stem!r} (also {found[path.stem].name}); "
                "expected one image per mask"
            )
        found[path.stem] = path
    if not found:
        raise DataError(f"{image_dir}: no images found; expected <stem>.jpg, .jpeg or .png files")
    return found


def _folder_candidates(split_dir: Path) -> list[SampleRef]:
    image_dir, mask_dir = split_dir / "images", split_dir / "masks"
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: missing folder; expected <root>/<split>/images and <root>/<split>/masks")
    return [SampleRef(stem, path, mask_dir / f"{stem}.png") for stem, path in _list_images(image_dir).items()]


def build_folder_dataset(
    split: str,
    root: str | os.PathLike[str] | None,
    transform: Transform | None = None,
    on_error: OnError = "raise",
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> SegmentationDataset:
    """``ROOT/<split>/{images,masks}``; a missing ``val`` split is held out of ``train``.

    Any existing sub-folder may be named as the split (e.g. ``"test_hard"``), not only
    train/val/test, so ad-hoc evaluation sets need no renaming.
    """
    _check_on_error(on_error)
    base = _require_root(root, "folder")
    split_dir = base / split
    if split not in SPLITS and (Path(split).name != split or not split_dir.is_dir()):
        _check_split(split)  # raises, listing the standard splits
    holdout = split in ("train", "val") and not (base / "val").is_dir() and (base / "train").is_dir()
    if holdout and (split == "val" or val_fraction > 0):
        candidates = _select_holdout(_folder_candidates(base / "train"), split, base, val_fraction, split_seed)
    elif split_dir.is_dir():
        candidates = _folder_candidates(split_dir)
    else:
        present = sorted(p.name for p in base.iterdir() if p.is_dir())
        raise DataError(
            f"{split_dir}: split folder missing (found: {', '.join(present) or 'nothing'}); "
            "expected <root>/<split>/images and <root>/<split>/masks"
        )
    source = f"folder dataset {base} [{split}]"
    refs = _pair_or_fail(candidates, on_error, source, "masks/<stem>.png beside images/<stem>.jpg")
    return SegmentationDataset(
        refs, decode_mask=decode_binary_mask, transform=transform, on_error=on_error, source=source
    )


# --------------------------------------------------------------------------- LFW Part Labels

LFW_SPLIT_FILES = {"train": "parts_train.txt", "val": "parts_validation.txt", "test": "parts_test.txt"}
LFW_IMAGE_DIR = "lfw_funneled"
LFW_MASK_DIR = "parts_lfw_funneled_gt_images"


def _parse_lfw_split(path: Path) -> list[str]:
    """``<Person_Name> <N>`` per line → stems ``<Person_Name>_NNNN`` (LFW zero-pads to 4 digits)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read LFW split file {path}: {exc.strerror or exc}") from exc
    stems = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit():
            raise DataError(f"{path}:{lineno}: expected '<Person_Name> <image number>', got {line.strip()!r}")
        stems.append(f"{fields[0]}_{int(fields[1]):04d}")
    if not stems:
        raise DataError(f"{path}: split file lists no images")
    return stems


def build_lfw_parts_dataset(
    split: str,
    root: str | os.PathLike[str] | None,
    transform: Transform | None = None,
    on_error: OnError = "raise",
) -> SegmentationDataset:
    """LFW Part Labels with its official train/validation/test lists (1500/500/927 images)."""
    _check_split(split)
    _check_on_error(on_error)
    base = _require_root(root, "lfw_parts")
    split_file = base / LFW_SPLIT_FILES[split]
    if not split_file.is_file():
        raise DataError(f"{split_file}: missing LFW Part Labels split file for split {split!r}")
    for folder in (base / LFW_IMAGE_DIR, base / LFW_MASK_DIR):
        if not folder.is_dir():
            raise DataError(f"{folder}: missing folder of the LFW Part Labels layout")
    candidates = [
        SampleRef(
            stem,
            base / LFW_IMAGE_DIR / stem[:-5] / f"{stem}.jpg",
            base / LFW_MASK_DIR / f"{stem}.ppm",
        )
        for stem in _parse_lfw_split(split_file)
    ]
    source = f"lfw_parts {base} [{split}]"
    refs = _pair_or_fail(
        candidates, on_error, source, f"{LFW_IMAGE_DIR}/<Person>/<Person>_NNNN.jpg and {LFW_MASK_DIR}/<Person>_NNNN.ppm"
    )
    return SegmentationDataset(
        refs, decode_mask=decode_lfw_parts_mask, transform=transform, on_error=on_error, source=source
    )


# --------------------------------------------------------------------------- CelebAMask-HQ

CELEBA_IMAGE_DIR = "CelebA-HQ-img"
CELEBA_MASK_DIR = "CelebAMask-HQ-mask-anno"
CELEBA_MASK_SIZE = (512, 512)
# A sweep builds the same split in every trial: the seeded fallback is announced once per process.
_ANNOUNCED_CELEBA_SPLITS: set[tuple[str, str]] = set()


def celeba_mask_path(base: Path, index: int) -> Path:
    """``CelebAMask-HQ-mask-anno/<index // 2000>/<index:05d>_hair.png``."""
    return base / CELEBA_MASK_DIR / str(index // 2000) / f"{index:05d}_hair.png"


def celeba_images(base: Path) -> dict[str, Path]:
    """``{stem: path}`` of the ``CelebA-HQ-img/<index>.jpg`` files; raises when the layout's folders are missing."""
    image_dir = base / CELEBA_IMAGE_DIR
    for folder in (image_dir, base / CELEBA_MASK_DIR):
        if not folder.is_dir():
            hint = ""
            if (base / "CelebAMask-HQ" / folder.name).is_dir():
                hint = f" (it is in {base / 'CelebAMask-HQ'}: use that folder as the root)"
            raise DataError(
                f"{folder}: missing folder of the CelebAMask-HQ layout{hint}; expected {CELEBA_IMAGE_DIR}/<i>.jpg "
                f"and {CELEBA_MASK_DIR}/<i//2000>/<iiiii>_hair.png under the root"
            )
    images = {p.stem: p for p in image_dir.glob("*.jpg") if p.stem.isdigit()}
    if not images:
        raise DataError(f"{image_dir}: no <index>.jpg images found")
    return images


def build_celebamask_hq_dataset(
    split: str,
    root: str | os.PathLike[str] | None,
    transform: Transform | None = None,
    on_error: OnError = "raise",
    *,
    split_file: str | os.PathLike[str] | None = None,
    split_scheme: str = "auto",
    partition_file: str | os.PathLike[str] | None = None,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    mask_size: int = CELEBA_MASK_SIZE[0],
) -> SegmentationDataset:
    """CelebAMask-HQ hair masks; images are resized (area) to the 512×512 mask size.

    A photo without ``<iiiii>_hair.png`` is a person with no visible hair: CelebAMask-HQ only
    writes a part file when the part is present, so it gets an all-background mask rather
    than being dropped (dropping it would bias the set towards people with hair).
    The split (:func:`hairseg_core.data.celeba_split.plan_split`): ``split_file`` if given, else CelebA's
    official partition when the download's ``CelebA-HQ-to-CelebA-mapping.txt`` is in ``root``
    (``split_scheme="auto"``, the default; ``partition_file`` or ``root/list_eval_partition.txt`` refines it),
    else a seeded 80/10/10 split over image indices, announced with a :class:`DataWarning` because its
    numbers are not comparable with published ones. The dataset's name says which split it uses.
    ``mask_size`` is the side of the all-background mask used for photos without a hair file.
    """
    _check_split(split)
    _check_on_error(on_error)
    base = _require_root(root, "celebamask_hq")
    images = celeba_images(base)
    plan = plan_split(
        base,
        images,
        split_file=split_file,
        split_scheme=split_scheme,
        partition_file=partition_file,
        split_fractions=split_fractions,
        split_seed=split_seed,
    )
    if plan.method == "seeded" and split_scheme == "auto":
        key = (str(base.resolve()), plan.description)
        if key not in _ANNOUNCED_CELEBA_SPLITS:
            _ANNOUNCED_CELEBA_SPLITS.add(key)
            warnings.warn(f"celebamask_hq {base}: {plan.description}", DataWarning, stacklevel=2)
    refs = []
    for stem in sorted((s for s, part in plan.assignment.items() if part == split), key=int):
        mask = celeba_mask_path(base, int(stem))
        refs.append(SampleRef(stem, images[stem], mask if mask.is_file() else None))
    split_name = "seeded split" if plan.method == "seeded" else "official split" if plan.official else "split file"
    source = f"celebamask_hq {base} [{split}, {split_name}]"
    if not refs:
        raise DataError(f"{source}: the split ({plan.description}) puts no images in {split!r}")
    return SegmentationDataset(
        refs,
        decode_mask=decode_threshold_mask,
        transform=transform,
        on_error=on_error,
        resize_image_to_mask=True,
        empty_mask_size=(mask_size, mask_size),
        source=source,
    )


# --------------------------------------------------------------------------- Figaro-1k

_FIGARO_PARTS = {"train": "Training", "val": "Training", "test": "Testing"}


def _figaro_base(base: Path) -> Path:
    """Accept the extracted ``Figaro1k/`` folder itself or the folder the zip was extracted into."""
    for candidate in (base, base / "Figaro1k"):
        if (candidate / "Original").is_dir() and (candidate / "GT").is_dir():
            return candidate
    raise DataError(f"{base}: not a Figaro-1k folder; expected Original/ and GT/ in it (or in {base / 'Figaro1k'})")


def build_figaro1k_dataset(
    split: str,
    root: str | os.PathLike[str] | None,
    transform: Transform | None = None,
    on_error: OnError = "raise",
    *,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> SegmentationDataset:
    """Figaro-1k (840 train / 210 test); ``val`` is a seeded hold-out of Training."""
    _check_split(split)
    _check_on_error(on_error)
    base = _figaro_base(_require_root(root, "figaro1k"))
    part = _FIGARO_PARTS[split]
    image_dir, gt_dir = base / "Original" / part, base / "GT" / part
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: missing folder of the Figaro-1k layout")
    candidates = []
    for path in sorted(image_dir.glob("*-org.jpg")):
        if path.name.startswith("."):
            continue  # macOS resource forks shipped inside the zip
        stem = path.name[: -len("-org.jpg")]
        candidates.append(SampleRef(stem, path, gt_dir / f"{stem}-gt.pbm"))
    if not candidates:
        raise DataError(f"{image_dir}: no <stem>-org.jpg images found")
    if split in ("train", "val"):
        candidates = _select_holdout(candidates, split, base, val_fraction, split_seed)
    source = f"figaro1k {base} [{split}]"
    refs = _pair_or_fail(candidates, on_error, source, f"GT/{part}/<stem>-gt.pbm beside Original/{part}/<stem>-org.jpg")
    return SegmentationDataset(
        refs, decode_mask=decode_threshold_mask, transform=transform, on_error=on_error, source=source
    )


# --------------------------------------------------------------------------- synthetic


def build_synthetic_dataset(
    split: str,
    root: str | os.PathLike[str] | None = None,
    transform: Transform | None = None,
    on_error: OnError = "raise",
    *,
    size: int = 257,
    n_train: int = 240,
    n_val: int = 60,
    n_test: int = 60,
    seed: int = 0,
) -> SegmentationDataset:
    """The embedded default: generated portraits cached in the folder layout (``root`` = cache dir)."""
    from hairseg_core.data.synthetic import ensure_synthetic  # heavy drawing code only when used

    _check_split(split)
    folder = ensure_synthetic(root, size=size, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed)
    return build_folder_dataset(split, folder, transform, on_error)


DATASETS.register("folder")(build_folder_dataset)
DATASETS.register("lfw_parts")(build_lfw_parts_dataset)
DATASETS.register("celebamask_hq")(build_celebamask_hq_dataset)
DATASETS.register("figaro1k")(build_figaro1k_dataset)
DATASETS.register("synthetic")(build_synthetic_dataset)


def build_dataset(
    name: str,
    split: str,
    root: str | os.PathLike[str] | None = None,
    transform: Transform | None = None,
    on_error: OnError = "raise",
    **kwargs: Any,
) -> SegmentationDataset:
    """Build dataset ``name`` (see :data:`DATASETS`) for ``split`` in train/val/test.

    ``kwargs`` go to the dataset's builder (``val_fraction``, ``split_seed``, ``split_file``,
    synthetic ``size``/``n_train``/... ); an unknown keyword raises ``TypeError`` naming it.
    """
    builder = DATASETS.get(name)
    return builder(split, root, transform, on_error, **kwargs)


def dataset_summary(dataset: SegmentationDataset, max_samples: int | None = None) -> dict[str, Any]:
    """Count, image sizes and hair statistics of a dataset (decodes up to ``max_samples`` raw samples)."""
    count = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    fractions, sizes = [], set()
    for index in range(count):
        image, mask = dataset.load_raw(index)
        sizes.add(image.shape[:2])
        fractions.append(float(mask.mean()))
    values = np.asarray(fractions, dtype=np.float64)
    return {
        "source": dataset.source,
        "samples": len(dataset),
        "inspected": count,
        "distinct_sizes": len(sizes),
        "smallest_hw": min(sizes, key=lambda hw: hw[0] * hw[1]) if sizes else None,
        "largest_hw": max(sizes, key=lambda hw: hw[0] * hw[1]) if sizes else None,
        "hair_fraction_mean": float(values.mean()) if count else float("nan"),
        "hair_fraction_min": float(values.min()) if count else float("nan"),
        "hair_fraction_max": float(values.max()) if count else float("nan"),
        "empty_masks": int((values == 0).sum()),
    }
