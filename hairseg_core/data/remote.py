"""Data roots in object storage (``s3://``, ``gs://``, any URI pyarrow's filesystems read): staged to local disk.

A data source may name ``data_root: s3://bucket/datasets/celebamask_hq``. Every dataset layout reads local
files (globbing folders, pairing masks), so each node first mirrors the prefix into its data cache
(``<cache_dir>/remote/<name>-<hash>/``), copying only files that are new or changed in size, under a file lock
(one copier per node), each file written to a temporary name and renamed. The node cache is then built from
that copy as from any local folder. pyarrow's filesystems are the ones Ray Tune uses for ``--storage``, so
credentials come the same way (instance profile, ``AWS_*`` / ``GOOGLE_APPLICATION_CREDENTIALS``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import uuid
from pathlib import Path

from hairseg_core.data.errors import DataError


def is_uri(root: str | os.PathLike[str] | None) -> bool:
    """Whether ``root`` names object storage (``scheme://...``) rather than a local folder."""
    return isinstance(root, str) and "://" in root


def staged_folder(uri: str, cache_dir: Path) -> Path:
    """Where ``uri`` is mirrored under ``cache_dir`` (stable per URI)."""
    tail = uri.rstrip("/").rsplit("/", 1)[-1] or "root"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in tail)[:40]
    return cache_dir / "remote" / f"{safe}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"


def stage_root(uri: str, cache_dir: Path, chunk: int = 8 << 20) -> Path:
    """Mirror every file under ``uri`` into this node's cache and return the local folder.

    Raises :class:`DataError` naming the URI when it cannot be opened, listed or holds no files.
    """
    from pyarrow import fs as pafs  # deferred: only data in object storage needs it

    try:
        filesystem, base = pafs.FileSystem.from_uri(uri)
        infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True))
    except Exception as exc:  # pyarrow raises OSError / ArrowInvalid / ArrowException by scheme
        raise DataError(f"{uri}: cannot list the data root ({type(exc).__name__}: {exc})") from exc
    files = [info for info in infos if info.type == pafs.FileType.File]
    if not files:
        raise DataError(f"{uri}: no files under this data root (empty prefix, or a typo?)")
    local = staged_folder(uri, cache_dir)
    local.mkdir(parents=True, exist_ok=True)
    prefix = base.rstrip("/") + "/"
    with open(local.with_suffix(".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            wanted = set()
            for info in files:
                relative = info.path[len(prefix) :] if info.path.startswith(prefix) else Path(info.path).name
                dest = local / relative
                wanted.add(dest)
                if dest.is_file() and dest.stat().st_size == info.size:
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
                try:
                    with filesystem.open_input_stream(info.path) as source, open(tmp, "wb") as out:
                        while block := source.read(chunk):
                            out.write(block)
                    os.replace(tmp, dest)
                except Exception as exc:
                    with contextlib.suppress(OSError):
                        tmp.unlink()
                    raise DataError(f"{uri}: cannot copy {info.path} to {dest} ({exc})") from exc
            wanted = {
                local / (i.path[len(prefix) :] if i.path.startswith(prefix) else Path(i.path).name) for i in files
            }
            for path in [p for p in local.rglob("*") if p.is_file()]:
                if path not in wanted:  # deleted from the bucket: not part of the data set any more
                    path.unlink()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return local
