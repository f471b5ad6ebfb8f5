"""Fetch and unpack the public hair datasets (LFW Part Labels, Figaro-1k); say how to get CelebAMask-HQ.

The HTTP side is the shared :mod:`hairseg_core.verified_download` (standard-library ``urllib`` only, so
this works wherever Python does). The files are licensed for non-commercial research;
downloading is an explicit user action and nothing in the library calls it implicitly.

Robustness rules:

* bytes go to ``<file>.part`` and are renamed only once complete (and verified), so an
  interrupted download never leaves a file that looks finished; a later call resumes the
  ``.part`` with an HTTP Range request when the server supports it, else starts over;
  connection errors, 5xx answers and short bodies are retried a few times with backoff;
* a known checksum (sha256, or md5 where only that is published) is verified and a
  mismatch deletes the download and raises :class:`DownloadError` naming the URL;
* every file has an ordered list of sources (a mirror first where the original host is gone, the
  original last in case it returns); a source that fails (unknown host, 404, checksum mismatch, a
  server that stays down) hands over to the next, and the error names every source tried;
* archives (.tgz/.tar.gz/.tar/.zip) are unpacked into ``dest`` with path-traversal
  protection, and a ``<archive>.extracted`` marker makes re-runs skip finished work.

CelebAMask-HQ has no download recipe: its authors share it through Google Drive and Baidu Pan
behind a non-commercial agreement, which no script should click through, and its licence forbids
mirrors. :data:`MANUAL_DOWNLOADS` says what to fetch by hand and where to unpack it;
``hairseg data prepare celebamask_hq`` (:mod:`hairseg_core.data.prepare`) then checks it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import urllib.parse
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hairseg_core import verified_download as _http
from hairseg_core.data.errors import DownloadError
from hairseg_core.verified_download import download_file, file_digest

__all__ = [
    "MANUAL_DOWNLOADS",
    "SOURCES",
    "DownloadError",
    "RemoteFile",
    "download_dataset",
    "extract_archive",
    "fetch",
    "file_digest",
]

log = logging.getLogger(__name__)

TIMEOUT_S = 60.0
USER_AGENT = "hairseg-dataset-downloader/1.0"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset; archives are unpacked into the destination after download.

    ``url`` is tried first, then each of ``mirrors`` in order. ``name`` is the file name on disk, needed
    when a URL does not end in it (figshare serves ``/files/<id>``); by default the last part of ``url``.
    """

    url: str
    sha256: str | None = None
    md5: str | None = None
    mirrors: tuple[str, ...] = ()
    name: str | None = None

    @property
    def filename(self) -> str:
        if self.name:
            return self.name
        name = urllib.parse.unquote(Path(urllib.parse.urlparse(self.url).path).name)
        if not name:
            raise DownloadError(f"cannot derive a file name from URL {self.url!r}")
        return name

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url, *self.mirrors)


_LFW = "http://vis-www.cs.umass.edu/lfw"
# The Internet Archive's copy of the original host (which no longer resolves): `id_` asks for the
# archived bytes as they were served, without the Wayback page around them; a partial timestamp redirects
# to the capture nearest to it. That every file below was captured could not be checked from the project's
# offline machines: a missing capture answers 404 and the next source is tried.
_LFW_ARCHIVED = f"https://web.archive.org/web/2019id_/{_LFW}"
SOURCES: dict[str, tuple[RemoteFile, ...]] = {
    # LFW Part Labels (vis-www.cs.umass.edu/lfw/part_labels/). lfw-funneled.tgz: scikit-learn's figshare copy
    # (sklearn.datasets.fetch_lfw_people downloads it from there) with the sha256 scikit-learn verifies; the
    # md5 torchvision publishes for the original, 1b42dfed7d15c9b2dd63d5e5840c86ad, is not checked because it
    # was never documented for the copy. parts_lfw_funneled_gt_images.tgz: the md5 that several public loaders
    # verify (e.g. Keras get_file(file_hash=...)); the split lists have no published digest.
    "lfw_parts": (
        RemoteFile(
            "https://ndownloader.figshare.com/files/5976015",
            sha256="b47c8422c8cded889dc5a13418c4bc2abbda121092b3533a83306f90d900100a",
            mirrors=(f"{_LFW_ARCHIVED}/lfw-funneled.tgz", f"{_LFW}/lfw-funneled.tgz"),
            name="lfw-funneled.tgz",
        ),
        RemoteFile(
            f"{_LFW_ARCHIVED}/part_labels/parts_lfw_funneled_gt_images.tgz",
            md5="3e7e26e801c3081d651c8c2ef3c45cfc",
            mirrors=(f"{_LFW}/part_labels/parts_lfw_funneled_gt_images.tgz",),
        ),
        *(
            RemoteFile(f"{_LFW_ARCHIVED}/part_labels/{name}", mirrors=(f"{_LFW}/part_labels/{name}",))
            for name in ("parts_train.txt", "parts_validation.txt", "parts_test.txt")
        ),
    ),
    # Figaro-1k as published by its authors (Svanera et al., 2016); unpacks to Figaro1k/.
    "figaro1k": (
        RemoteFile("http://projects.i-ctm.eu/sites/default/files/AltroMateriale/207_Michele%20Svanera/Figaro1k.zip"),
    ),
}

#: Datasets that cannot be fetched by a script: what to download by hand, and what to run next.
MANUAL_DOWNLOADS: dict[str, str] = {
    "celebamask_hq": (
        "CelebAMask-HQ cannot be downloaded by a script: its authors share it, for non-commercial research "
        "only, through the Google Drive (https://drive.google.com/open?id=1badu11NqxGf6qM3PTTooQDJvQbejgbTv) "
        "and Baidu Pan (https://pan.baidu.com/s/1wN1E-B1bJ7mE1mrn9loj5g) links on "
        "https://github.com/switchablenorms/CelebAMask-HQ, and its licence forbids mirrors. Download "
        "CelebAMask-HQ.zip from one of them and unzip it into {dest}: that gives {dest}/CelebAMask-HQ/ holding "
        "CelebA-HQ-img/, CelebAMask-HQ-mask-anno/ and CelebA-HQ-to-CelebA-mapping.txt (the last gives CelebA's "
        "official train/val/test split; CelebA's Eval/list_eval_partition.txt from "
        "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, put beside it, is used too but is not needed). "
        "Then run: hairseg data prepare celebamask_hq --root {dest}/CelebAMask-HQ"
    ),
}


def download_dataset(
    name: str,
    dest: str | os.PathLike[str],
    url: str | Sequence[str] | None = None,
    sha256: str | Sequence[str | None] | None = None,
    progress: bool = True,
    mirror: str | os.PathLike[str] | None = None,
) -> Path:
    """Download and unpack dataset ``name`` into ``dest``; returns ``dest``.

    ``url`` replaces the default file list (a local copy served over HTTP, a single archive);
    ``sha256`` gives the expected digest(s), one per URL. ``mirror`` (an http(s):// or file:// base URL,
    or a folder) is tried first for every default file, as ``<mirror>/<file name>``, before the
    built-in sources. After this, build the dataset with ``build_dataset(name, split, root=dest)``
    (Figaro-1k unpacks into ``dest/Figaro1k``, which the loader finds by itself).
    """
    if name not in SOURCES:
        if name in MANUAL_DOWNLOADS:
            manual = MANUAL_DOWNLOADS[name].format(dest=Path(dest).expanduser())
            raise DownloadError(f"no download recipe for dataset {name!r}: {manual}")
        raise DownloadError(f"no download recipe for dataset {name!r}; expected one of: {', '.join(sorted(SOURCES))}")
    files = _resolve_files(name, url, sha256)
    if mirror is not None:
        if url is not None:
            raise DownloadError(f"{name}: give either url (the files themselves) or mirror (a base URL), not both")
        base = _mirror_base(mirror)
        files = tuple(
            RemoteFile(f"{base}/{urllib.parse.quote(f.filename)}", f.sha256, f.md5, f.urls, f.filename) for f in files
        )
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
            return tuple(RemoteFile(f.url, d, f.md5, f.mirrors, f.name) for f, d in zip(defaults, digests, strict=True))
        return SOURCES[name]
    urls = [url] if isinstance(url, str) else list(url)
    digests = [sha256] * len(urls) if sha256 is None or isinstance(sha256, str) else list(sha256)
    if len(digests) != len(urls):
        raise DownloadError(f"{name}: got {len(digests)} sha256 values for {len(urls)} URLs")
    return tuple(RemoteFile(u, d) for u, d in zip(urls, digests, strict=True))


def _mirror_base(mirror: str | os.PathLike[str]) -> str:
    """``mirror`` as a URL prefix: http(s):// and file:// as given, a plain folder as its file:// URI."""
    text = os.fspath(mirror)
    if "://" in text:
        scheme = urllib.parse.urlparse(text).scheme.lower()
        if scheme not in ("http", "https", "file"):
            raise DownloadError(f"mirror {text!r}: unsupported scheme {scheme!r}; use http(s)://, file:// or a folder")
        return text.rstrip("/")
    return Path(text).expanduser().resolve().as_uri()


def fetch(remote: RemoteFile, path: Path, progress: bool = True) -> Path:
    """Download ``remote`` to ``path`` (via ``path.part``) unless a verified copy is already there.

    Each of ``remote.urls`` is tried in turn until one gives a file that passes the digests; the HTTP work
    (part file, resume, retries, checksum) is :func:`hairseg_core.verified_download.download_file`. Its errors are
    re-raised as the data layer's :class:`DownloadError` (one type for callers to catch), naming every
    source tried when none worked.
    """
    failures: list[str] = []
    for index, url in enumerate(remote.urls):
        if index:
            # A part file from another source may hold other bytes (an error page, another revision):
            # never resume it from this one.
            path.with_name(path.name + ".part").unlink(missing_ok=True)
            log.warning("%s: %s; trying %s", remote.filename, failures[-1], url)
        try:
            return download_file(
                url,
                path,
                sha256=remote.sha256,
                md5=remote.md5,
                progress=progress,
                timeout=TIMEOUT_S,
                user_agent=USER_AGENT,
            )
        except _http.DownloadError as exc:
            if len(remote.urls) == 1:
                raise DownloadError(str(exc)) from exc
            failures.append(str(exc))
    tried = "; ".join(failures)
    raise DownloadError(f"{remote.filename}: every source failed: {tried}")


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
