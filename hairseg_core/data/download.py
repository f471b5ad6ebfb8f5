"""Fetch and unpack the public hair datasets (LFW Part Labels, Figaro-1k).

The HTTP side is the shared :mod:`hairseg_core.download` (standard-library ``urllib`` only, so
this works wherever Python does). The files are licensed for non-commercial research;
downloading is an explicit user action and nothing in the library calls it implicitly.

Robustness rules:

* bytes go to ``<file>.part`` and are renamed only once complete (and verified), so an
  interrupted download never leaves a file that looks finished; a later call resumes the
  ``.part`` with an HTTP Range request when the server supports it, else starts over;
  connection errors, 5xx answers and short bodies are retried a few times with backoff;
* a known checksum (sha256, or md5 where only that is published) is verified and a
  mismatch deletes the download and raises :class:`DownloadError` naming the URL;
* archives (.tgz/.tar.gz/.tar/.zip) are unpacked into ``dest`` with path-traversal
  protection, and a ``<archive>.extracted`` marker makes re-runs skip finished work.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import urllib.parse
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hairseg_core import download as _http
from hairseg_core.data.errors import DownloadError
from hairseg_core.download import download_file, file_digest

__all__ = ["SOURCES", "DownloadError", "RemoteFile", "download_dataset", "extract_archive", "fetch", "file_digest"]

TIMEOUT_S = 60.0
USER_AGENT = "hairseg-dataset-downloader/1.0"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset; archives are unpacked into the destination after download."""

    url: str
    sha256: str | None = None
    md5: str | None = None

    @property
    def filename(self) -> str:
        name = urllib.parse.unquote(Path(urllib.parse.urlparse(self.url).path).name)
        if not name:
            raise DownloadError(f"cannot derive a file name from URL {self.url!r}")
        return name


_LFW = "http://vis-www.cs.umass.edu/lfw"
SOURCES: dict[str, tuple[RemoteFile, ...]] = {
    # Official LFW Part Labels distribution (vis-www.cs.umass.edu/lfw/part_labels/). The md5 of
    # lfw-funneled.tgz is the one torchvision's LFW loader verifies; the others are unpublished.
    "lfw_parts": (
        RemoteFile(f"{_LFW}/lfw-funneled.tgz", md5="1b42dfed7d15c9b2dd63d5e5840c86ad"),
        RemoteFile(f"{_LFW}/part_labels/parts_lfw_funneled_gt_images.tgz"),
        RemoteFile(f"{_LFW}/part_labels/parts_train.txt"),
        RemoteFile(f"{_LFW}/part_labels/parts_validation.txt"),
        RemoteFile(f"{_LFW}/part_labels/parts_test.txt"),
    ),
    # Figaro-1k as published by its authors (Svanera et al., 2016); unpacks to Figaro1k/.
    "figaro1k": (
        RemoteFile("http://projects.i-ctm.eu/sites/default/files/AltroMateriale/207_Michele%20Svanera/Figaro1k.zip"),
    ),
}


def download_dataset(
    name: str,
    dest: str | os.PathLike[str],
    url: str | Sequence[str] | None = None,
    sha256: str | Sequence[str | None] | None = None,
    progress: bool = True,
) -> Path:
    """Download and unpack dataset ``name`` into ``dest``; returns ``dest``.

    ``url`` replaces the default file list (a mirror, or a local copy served over HTTP);
    ``sha256`` gives the expected digest(s), one per URL. After this, build the dataset with
    ``build_dataset(name, split, root=dest)`` (Figaro-1k unpacks into ``dest/Figaro1k``,
    which the loader finds by itself).
    """
    if name not in SOURCES:
        raise DownloadError(f"no download recipe for dataset {name!r}; expected one of: {', '.join(sorted(SOURCES))}")
    files = _resolve_files(name, url, sha256)
    target = Path(dest).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    for remote in files:
        path = fetch(remote, target / remote.filename, progress=progress)
        if _is_archive(path):
            extract_archive(path, target)
    return target


def _resolve_files(
    name: str, url: str | Sequence[str] | None, sha256: str | Sequence[str | None] | None
) -> tuple[RemoteFile, ...]:
    if url is None:
        if sha256 is not None:
            defaults = SOURCES[name]
            digests = [sha256] if isinstance(sha256, str) else list(sha256)
            if len(digests) != len(defaults):
                raise DownloadError(f"{name}: got {len(digests)} sha256 values for {len(defaults)} default files")
            return tuple(RemoteFile(f.url, d, f.md5) for f, d in zip(defaults, digests, strict=True))
        return SOURCES[name]
    urls = [url] if isinstance(url, str) else list(url)
    digests = [sha256] * len(urls) if sha256 is None or isinstance(sha256, str) else list(sha256)
    if len(digests) != len(urls):
        raise DownloadError(f"{name}: got {len(digests)} sha256 values for {len(urls)} URLs")
    return tuple(RemoteFile(u, d) for u, d in zip(urls, digests, strict=True))


def fetch(remote: RemoteFile, path: Path, progress: bool = True) -> Path:
    """Download ``remote`` to ``path`` (via ``path.part``) unless a verified copy is already there.

    The HTTP work (part file, resume, retries, checksum) is :func:`hairseg_core.download.download_file`;
    its errors are re-raised as the data layer's :class:`DownloadError` so callers keep one type to catch.
    """
    try:
        return download_file(
            remote.url,
            path,
            sha256=remote.sha256,
            md5=remote.md5,
            progress=progress,
            timeout=TIMEOUT_S,
            user_agent=USER_AGENT,
        )
    except _http.DownloadError as exc:
        raise DownloadError(str(exc)) from exc


def _is_archive(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".tgz", ".tar.gz", ".tar", ".zip"))


def extract_archive(archive: Path, dest: Path) -> None:
    """Unpack a .tgz/.tar.gz/.tar/.zip into ``dest`` once (marker ``<archive>.extracted``)."""
    marker = archive.with_name(archive.name + ".extracted")
    if marker.is_file():
        return
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    _check_inside(dest, member, archive)
                zf.extractall(dest)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(dest, filter="data")  # rejects absolute paths, '..', device files
    except (tarfile.TarError, zipfile.BadZipFile, shutil.ReadError, EOFError) as exc:
        raise DownloadError(f"cannot unpack {archive}: {exc}") from exc
    marker.write_text("ok\n", encoding="utf-8")


def _check_inside(dest: Path, member: str, archive: Path) -> None:
    root = dest.resolve()
    target = (root / member).resolve()
    if target != root and root not in target.parents:
        raise DownloadError(f"{archive}: member {member!r} would be written outside {dest}")
