"""A per-node, pre-resized, memory-mapped copy of one split: the streaming input path's store.

Why a cache and not a reader of the original files: a CelebAMask-HQ photo is a 1024² JPEG whose mask
is 512²; decoding and resizing it costs ~10 ms, every epoch, in every trial. Decoding it once per node
into a flat uint8 file and memory-mapping that file gives every trial on the node the raw pixels at
memcpy speed, while the bytes live in the kernel's page cache: shared by every process that maps them,
dropped under memory pressure and read back from disk on demand. Used memory (MemTotal − MemAvailable)
therefore does not grow with the data set; only disk does (``nbytes`` of the split, checked before a
build starts). ``benchmarks/README.md`` ("Input pipeline") compares this with Ray Data streaming.

Layout of one split (``<cache_dir>/<key>/``): ``images.u8`` and ``masks.u8`` (samples back to back,
H×W×3 and H×W), ``index.npy`` (int64 rows: image offset, mask offset, height, width), ``names.json`` and
``meta.json``. A build writes into a temporary folder and renames it into place, under a file lock, so
concurrent trials on a node build once and nobody ever reads half a cache.

Pre-resizing: an image whose short side exceeds twice the largest short side any trial can ask for
(``store_short_side``, from base size, random scale crop and eval size) is stored at that twice
(INTER_AREA for the photo, nearest for the mask). Smaller images are stored untouched, so data that is
already near the training resolution (celeb1k, Figaro, CelebAMask-HQ after its 512² mask resize) gives
trials exactly the pixels the in-memory path gives them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hairseg_core.data.errors import DataError
from hairseg_core.progress import progress_bar

logger = logging.getLogger(__name__)

#: Bumped whenever the bytes a cache holds would differ for the same inputs (layout, resize rule).
CACHE_FORMAT = "hairseg-node-cache-v1"

#: Stored images are at most this multiple of the largest short side a trial asks for.
STORE_SLACK = 2


@dataclass(frozen=True)
class CacheKey:
    """Identifies one cached split: the source's files (names, sizes, mtimes), how they are read, the resize rule.

    ``content_digest`` leaves mtimes out: two nodes whose copies hold the same files (names and sizes) agree
    on it even when their copies were written at different times, so a trial can check that its node reads
    what the driver checked.
    """

    key: str
    content_digest: str
    count: int


def _stat_digest(samples: list[Any], root: Path) -> tuple[str, str]:
    local, content = hashlib.sha256(), hashlib.sha256()
    for ref in samples:
        for path in (ref.image, ref.mask):
            if path is None:
                local.update(b"-\n")
                content.update(b"-\n")
                continue
            try:
                stat = Path(path).stat()
            except OSError as exc:
                raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
            try:
                rel = Path(path).resolve().relative_to(root).as_posix()
            except ValueError:
                rel = Path(path).name
            content.update(f"{ref.name}\0{rel}\0{stat.st_size}\n".encode())
            local.update(f"{ref.name}\0{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return local.hexdigest(), content.hexdigest()


def cache_key(dataset: Any, description: str, store_short_side: int | None) -> CacheKey:
    """The key of ``dataset``'s cache: a stat of every file (no decoding), the reader and the resize rule."""
    samples = list(dataset.samples)
    paths = [str(Path(p).resolve().parent) for ref in samples for p in (ref.image, ref.mask) if p is not None]
    root = Path(os.path.commonpath(paths)) if paths else Path(".")
    local, content = _stat_digest(samples, root)
    head = hashlib.sha256(f"{CACHE_FORMAT}\0{description}\0{store_short_side}\0{local}".encode()).hexdigest()
    readable = "".join(c if c.isalnum() or c in "-_" else "_" for c in description)[:60]
    return CacheKey(f"{readable}-{head[:20]}", content, len(samples))


def stored_size(height: int, width: int, store_short_side: int | None) -> tuple[int, int]:
    """The (H, W) a sample is stored at: unchanged unless its short side exceeds ``STORE_SLACK`` × the need."""
    if store_short_side is None:
        return height, width
    limit = STORE_SLACK * store_short_side
    short = min(height, width)
    if short <= limit:
        return height, width
    scale = limit / short
    return max(1, round(height * scale)), max(1, round(width * scale))


def _shrink(image: np.ndarray, mask: np.ndarray, store_short_side: int | None) -> tuple[np.ndarray, np.ndarray]:
    height, width = stored_size(image.shape[0], image.shape[1], store_short_side)
    if (height, width) == image.shape[:2]:
        return image, mask
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return image, mask


class MappedSplit:
    """A cached split, memory-mapped on first access in each process (a :class:`RawSplit`).

    Pickles as its folder path only: a DataLoader worker or a Ray trial maps the files itself, so
    passing one through Ray's object store costs bytes, not the data.
    """

    input_path = "stream"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        try:
            self.meta = json.loads((self.directory / "meta.json").read_text())
            self.names = json.loads((self.directory / "names.json").read_text())
        except (OSError, ValueError) as exc:
            raise DataError(
                f"{self.directory}: not a complete node cache ({exc}); delete the folder to rebuild"
            ) from exc
        self._index: np.ndarray | None = None
        self._images: np.ndarray | None = None
        self._masks: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "meta": self.meta, "names": self.names}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.directory = Path(state["directory"])
        self.meta, self.names = state["meta"], state["names"]
        self._index = self._images = self._masks = None

    def _open(self) -> None:
        self._index = np.load(self.directory / "index.npy")
        # Empty files cannot be mapped; a split of empty masks only cannot exist (images have pixels).
        self._images = np.memmap(self.directory / "images.u8", dtype=np.uint8, mode="r")
        self._masks = np.memmap(self.directory / "masks.u8", dtype=np.uint8, mode="r")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def nbytes(self) -> int:
        return int(self.meta["nbytes"])

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._index is None:
            self._open()
        assert self._index is not None and self._images is not None and self._masks is not None
        image_at, mask_at, height, width = (int(v) for v in self._index[index])
        image = self._images[image_at : image_at + height * width * 3].reshape(height, width, 3)
        mask = self._masks[mask_at : mask_at + height * width].reshape(height, width)
        return np.asarray(image), np.asarray(mask)

    def __repr__(self) -> str:
        return f"MappedSplit({str(self.directory)!r}, n={len(self)})"


def _touch(folder: Path) -> None:
    """Mark a cache as used now (``hairseg data cache --prune-days`` removes the long unused)."""
    with contextlib.suppress(OSError):
        (folder / "last_used").touch()


def list_caches(cache_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every complete cache under ``cache_dir``: its folder, what it holds, its size and when it was last used."""
    out = []
    root = Path(cache_dir).expanduser()
    for meta_file in sorted(root.glob("*/meta.json")) if root.is_dir() else []:
        folder = meta_file.parent
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            continue
        used = folder / "last_used"
        last = (used if used.exists() else meta_file).stat().st_mtime
        out.append({"folder": str(folder), **meta, "last_used": last})
    return out


def prune_caches(cache_dir: str | os.PathLike[str], unused_for_s: float) -> list[dict[str, Any]]:
    """Delete caches unused for ``unused_for_s`` seconds (and builds abandoned by killed processes); return them.

    A cache that a process is building or mapping right now is recent (used on open), so it is kept.
    """
    now = time.time()
    removed = [c for c in list_caches(cache_dir) if now - c["last_used"] > unused_for_s]
    for cache in removed:
        shutil.rmtree(cache["folder"], ignore_errors=True)
        with contextlib.suppress(OSError):
            Path(cache["folder"] + ".lock").unlink()
    root = Path(cache_dir).expanduser()
    for tmp in root.glob(".*.tmp-*") if root.is_dir() else []:
        if now - tmp.stat().st_mtime > max(unused_for_s, 86400):
            shutil.rmtree(tmp, ignore_errors=True)
    return removed


@contextlib.contextmanager
def _locked(path: Path, wait_message: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``: one builder per cache folder per node (released if the holder dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("%s", wait_message)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_disk(folder: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed * 1.05 + (256 << 20):
        raise DataError(
            f"{folder}: {free / 2**30:.1f} GiB free, but the node cache of {what} needs about "
            f"{needed / 2**30:.1f} GiB; free disk there or point data.cache_dir at a larger node-local disk"
        )


def estimate_stored_bytes(dataset: Any, store_short_side: int | None, probe: int = 8) -> int:
    """Stored bytes of the split from its first few samples (cheap: a few decodes)."""
    count = len(dataset)
    indices = np.linspace(0, count - 1, num=min(probe, count)).round().astype(int)
    per = []
    for i in sorted(set(indices.tolist())):
        image, _ = dataset.load_raw(i)
        height, width = stored_size(image.shape[0], image.shape[1], store_short_side)
        per.append(height * width * 4)
    return int(np.mean(per) * count)


def _decode(dataset: Any, index: int, store_short_side: int | None) -> tuple[np.ndarray, np.ndarray]:
    image, mask = dataset.load_raw(index)
    image, mask = _shrink(image, mask, store_short_side)
    return np.ascontiguousarray(image, dtype=np.uint8), np.ascontiguousarray(mask, dtype=np.uint8)


def _write(dataset: Any, target: Path, store_short_side: int | None, workers: int, desc: str | None) -> int:
    """Decode every sample in order with ``workers`` threads (OpenCV releases the GIL) and append it."""
    count = len(dataset)
    index = np.zeros((count, 4), dtype=np.int64)
    image_at = mask_at = 0
    window = max(1, 4 * workers)  # samples in flight: bounded memory whatever the split's size
    with (
        open(target / "images.u8", "wb") as images,
        open(target / "masks.u8", "wb") as masks,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hairseg-cache") as pool,
        progress_bar(total=count, desc=desc, disable=desc is None, leave=False, unit="img") as bar,
    ):
        pending: list[Any] = []
        next_index = 0
        for i in range(count):
            while next_index < count and len(pending) < window:
                pending.append(pool.submit(_decode, dataset, next_index, store_short_side))
                next_index += 1
            image, mask = pending.pop(0).result()
            height, width = mask.shape
            images.write(memoryview(image).cast("B"))
            masks.write(memoryview(mask).cast("B"))
            index[i] = (image_at, mask_at, height, width)
            image_at += image.nbytes
            mask_at += mask.nbytes
            bar.update(1)
    np.save(target / "index.npy", index)
    return image_at + mask_at


def build_or_open(
    dataset: Any,
    description: str,
    cache_dir: str | os.PathLike[str],
    store_short_side: int | None,
    *,
    workers: int = 1,
    progress: bool = False,
    expect_digest: str | None = None,
) -> MappedSplit:
    """The node cache of ``dataset`` (a :class:`~hairseg_core.data.datasets.SegmentationDataset`), built if missing.

    ``expect_digest``: the ``content_digest`` the driver saw; a node whose files differ raises
    :class:`DataError` naming both, instead of training on other data than the sweep checked.
    A corrupt file raises :class:`DataError` naming it (the dataset's decoder does), and nothing is left.
    """
    cache_dir = Path(cache_dir).expanduser()
    key = cache_key(dataset, description, store_short_side)
    if expect_digest is not None and key.content_digest != expect_digest:
        raise DataError(
            f"{description}: the files on this node ({key.count} samples under {dataset.source}) differ from "
            "those the sweep checked before it started (names or sizes); sync the same data set to every node"
        )
    folder = cache_dir / key.key
    if (folder / "meta.json").is_file():
        _touch(folder)
        return MappedSplit(folder)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{cache_dir}: cannot create the node cache folder ({exc.strerror or exc})") from exc
    with _locked(cache_dir / f"{key.key}.lock", f"waiting for another process building {folder}"):
        if (folder / "meta.json").is_file():  # built while this process waited for the lock
            return MappedSplit(folder)
        _check_disk(cache_dir, estimate_stored_bytes(dataset, store_short_side), description)
        tmp = cache_dir / f".{key.key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        started = time.perf_counter()
        try:
            nbytes = _write(
                dataset, tmp, store_short_side, max(1, workers), f"caching {description}" if progress else None
            )
            (tmp / "names.json").write_text(json.dumps([ref.name for ref in dataset.samples]))
            meta = {
                "format": CACHE_FORMAT,
                "description": description,
                "source": str(dataset.source),
                "count": len(dataset),
                "store_short_side": store_short_side,
                "nbytes": nbytes,
                "content_digest": key.content_digest,
                "build_seconds": round(time.perf_counter() - started, 2),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            os.replace(tmp, folder)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno == errno.ENOSPC:
                raise DataError(
                    f"{cache_dir}: disk full while caching {description}; free disk or move data.cache_dir"
                ) from exc
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    logger.info(
        "node cache %s: %d samples, %.2f GiB, built in %.1f s",
        folder,
        len(dataset),
        nbytes / 2**30,
        meta["build_seconds"],
    )
    return MappedSplit(folder)
