"""Fetch ImageNet backbone weights on first use, verified, into the torch hub cache, or refuse when offline.

``pretrained: imagenet`` behaves like torchvision: a file that is not cached yet is downloaded once into
``torch.hub.get_dir()/checkpoints`` (where torchvision itself would put it, so both share one cache) and
every later use finds it there without touching the network. Unlike a bare torchvision download, the file
is checked against the sha256 prefix in its name (and the full sha256 where :data:`PRETRAINED_SOURCES`
records one) and read back as a state dict before it is kept, so a truncated or substituted file fails
here, naming the backbone, instead of as a shape error inside a trial.

Two environment variables adapt this to clusters:

* ``$HAIRSEG_WEIGHTS_MIRROR`` (or ``mirror=``): fetch ``<mirror>/<file name>`` instead of the original URL.
  The mirror may be ``http(s)://`` (your own server or a bucket's HTTP endpoint), ``file://`` or a plain
  directory; every accepted file name of the backbone is tried (those with a recorded full sha256 first),
  so a mirror holding an older torchvision recipe (``mobilenet_v2-b0353104.pth``) serves as well as one
  holding the newest.
* ``$HAIRSEG_OFFLINE=1`` (or ``offline=True``): never download. A missing file raises
  :class:`WeightsNotFoundError` at once with the file name, destination, URL and alternatives, instead of
  waiting on connection timeouts on a machine without internet.

This module imports neither Ray nor MLflow: the CLI and the sweep driver's preflight both use it.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from hairseg_core.models.backbones import PRETRAINED_SOURCES
from hairseg_core.models.weights import (
    WEIGHTS_DIR_ENV,
    PretrainedSource,
    WeightsNotFoundError,
    find_imagenet_weights,
    read_state_dict,
    search_dirs,
)
from hairseg_core.verified_download import DownloadError, DownloadNotFoundError, RetryPolicy, download_file, hash_prefix

log = logging.getLogger(__name__)

OFFLINE_ENV = "HAIRSEG_OFFLINE"
MIRROR_ENV = "HAIRSEG_WEIGHTS_MIRROR"
_TRUE = frozenset({"1", "true", "yes"})
_MIRROR_SCHEMES = ("http", "https", "file")

__all__ = [
    "MIRROR_ENV",
    "OFFLINE_ENV",
    "WeightsFetchError",
    "cached_imagenet_weights",
    "checkpoints_dir",
    "ensure_imagenet_weights",
    "is_offline",
    "resolve_space_weights",
    "weights_mirror",
]


class WeightsFetchError(WeightsNotFoundError):
    """Downloading a backbone's ImageNet weights failed (network, HTTP status, hash or unreadable file).

    A :class:`WeightsNotFoundError` subclass, so code that already handles "no weights file" handles this.
    """


def is_offline(offline: bool | None = None) -> bool:
    """The explicit ``offline`` flag, else whether ``$HAIRSEG_OFFLINE`` is 1/true/yes."""
    if offline is not None:
        return offline
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE


def weights_mirror(mirror: str | os.PathLike[str] | None = None) -> str | None:
    """The explicit ``mirror``, else ``$HAIRSEG_WEIGHTS_MIRROR`` (empty means none)."""
    if mirror is not None:
        return os.fspath(mirror) or None
    return os.environ.get(MIRROR_ENV, "").strip() or None


def checkpoints_dir() -> Path:
    """Where fetched files go: torchvision's own cache, ``torch.hub.get_dir()/checkpoints`` (honours $TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _source(backbone: str) -> PretrainedSource:
    try:
        return PRETRAINED_SOURCES[backbone]
    except KeyError:
        raise ValueError(
            f"no ImageNet weights known for backbone {backbone!r}; expected one of {', '.join(PRETRAINED_SOURCES)}"
        ) from None


def cached_imagenet_weights(backbone: str, weights_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The local file :func:`find_imagenet_weights` would use for ``backbone``, or None (never downloads)."""
    try:
        return find_imagenet_weights(backbone, _source(backbone), weights_dir)
    except WeightsNotFoundError:
        return None


def _mirror_base(mirror: str) -> str:
    """``mirror`` as a URL prefix: http(s):// and file:// as given, a plain directory as its file:// URI."""
    if "://" in mirror:
        scheme = urllib.parse.urlparse(mirror).scheme.lower()
        if scheme not in _MIRROR_SCHEMES:
            raise ValueError(
                f"weights mirror {mirror!r}: unsupported scheme {scheme!r}; use http(s)://, file:// or a directory "
                "(for a bucket, give its HTTP(S) endpoint)"
            )
        return mirror.rstrip("/")
    return Path(mirror).expanduser().resolve().as_uri()


def _candidates(source: PretrainedSource, mirror: str | None) -> list[tuple[str, str]]:
    """(file name, URL) pairs to try in order: the original URL for the preferred file, or each name on the mirror.

    On a mirror, names whose full sha256 is recorded go first (they are verified byte for byte, not just by
    the 8-digit prefix in the name), then the others in preference order; a 404 moves on to the next.
    """
    if mirror is None:
        return [(source.file_names[0], source.url)]
    base = _mirror_base(mirror)
    names = sorted(source.file_names, key=lambda name: name not in source.sha256)  # stable: keeps the order
    return [(name, f"{base}/{urllib.parse.quote(name)}") for name in names]


def _where(backbone: str, source: PretrainedSource, mirror: str | None) -> str:
    """The shared tail of every error: what to fetch, from where, to where, and the way out."""
    name = source.file_names[0]
    dest = checkpoints_dir() / name
    also = f" (also accepted: {', '.join(source.file_names[1:])})" if len(source.file_names) > 1 else ""
    try:
        via_mirror = f" or {_candidates(source, mirror)[0][1]}" if mirror else ""
    except ValueError:  # an unusable mirror is reported by the caller; point at the original URL only
        via_mirror = ""
    notes = f" ({source.notes})" if source.notes else ""
    return (
        f"Expected file {name!r}{also} at {dest} (the torch hub cache) or in ${WEIGHTS_DIR_ENV}. "
        f"Fetch it by hand from {source.url}{via_mirror}{notes} and save it there, or run "
        f"`hairseg weights fetch {backbone}` on a machine that can reach it (--mirror URL for your own server), "
        "or train from random initialisation with pretrained: none."
    )


def ensure_imagenet_weights(
    backbone: str,
    *,
    mirror: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
    progress: bool = True,
    timeout: float = 30.0,
    retries: int = 3,
    weights_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Local ImageNet weights file for ``backbone``, downloading and verifying it first if it is not cached.

    Args:
        backbone: a key of :data:`PRETRAINED_SOURCES`.
        mirror: base URL or directory holding the files under their torchvision/timm names; default
            ``$HAIRSEG_WEIGHTS_MIRROR``, else the original URL.
        offline: never download; default ``$HAIRSEG_OFFLINE``.
        progress: show a download progress bar.
        timeout: seconds each socket operation may take; an unreachable server fails within it.
        retries: attempts per URL for transient failures (connection errors, 5xx, cut-off bodies); 1 = no retry.
        weights_dir: an extra directory searched first (as in :func:`find_imagenet_weights`); downloads
            still go to the torch hub cache.

    Raises:
        WeightsNotFoundError: offline and not cached (nothing was requested from any server).
        WeightsFetchError: the download failed or the file failed its hash or is not a state dict;
            nothing is left at the destination.
    """
    source = _source(backbone)
    try:
        return find_imagenet_weights(backbone, source, weights_dir)
    except WeightsNotFoundError:
        pass
    mirror_url = weights_mirror(mirror)
    searched = "; ".join(
        [str(d) for d in search_dirs(weights_dir)]
        + ([f"Hugging Face hub cache entry {source.hf_hub_id}"] if source.hf_hub_id else [])
    )
    if is_offline(offline):
        raise WeightsNotFoundError(
            f"ImageNet weights for backbone {backbone!r} are not cached and offline mode is on "
            f"(${OFFLINE_ENV} or offline=True), so nothing was downloaded (searched: {searched}). "
            + _where(backbone, source, mirror_url)
        )

    def failure(reason: str) -> WeightsFetchError:
        return WeightsFetchError(
            f"could not fetch ImageNet weights for backbone {backbone!r}: {reason} (searched locally: {searched}). "
            + _where(backbone, source, mirror_url)
        )

    try:
        candidates = _candidates(source, mirror_url)
    except ValueError as exc:
        raise failure(str(exc)) from exc
    return _download_first(backbone, source, candidates, failure, progress=progress, timeout=timeout, retries=retries)


def _download_first(
    backbone: str,
    source: PretrainedSource,
    candidates: list[tuple[str, str]],
    failure: Callable[[str], WeightsFetchError],
    *,
    progress: bool,
    timeout: float,
    retries: int,
) -> Path:
    """Download the first candidate (file name, URL) the server holds into the torch hub cache, verified.

    A 404 moves on to the next accepted name (a mirror may hold another recipe); any other failure, a hash
    mismatch or a file that is not a state dict raises ``failure(reason)`` and leaves nothing behind.
    """
    policy = RetryPolicy(attempts=max(int(retries), 1))
    missing: list[str] = []
    for name, url in candidates:
        dest = checkpoints_dir() / name
        log.info("fetching ImageNet weights for %s: %s -> %s", backbone, url, dest)
        try:
            download_file(
                url,
                dest,
                sha256=source.sha256.get(name),
                sha256_prefix=hash_prefix(name),
                progress=progress,
                timeout=timeout,
                retry=policy,
                resume=False,  # unique part files: concurrent trials on one node may fetch the same file
                user_agent="hairseg-weights-fetch/1.0",
            )
        except DownloadNotFoundError as exc:
            missing.append(str(exc))  # try the next accepted name (a mirror may hold another recipe)
            continue
        except (DownloadError, OSError) as exc:
            raise failure(f"{exc} (destination {dest})") from exc
        try:
            read_state_dict(dest)
        except Exception as exc:  # any reader error (torch, safetensors, ours) means the file is unusable
            dest.unlink(missing_ok=True)
            why = " ".join(str(exc).split())  # reader messages may span lines; keep the error one paragraph
            raise failure(f"{url} downloaded but is not a loadable state dict ({why}); it was deleted") from exc
        return dest
    raise failure("; ".join(missing) + f" (destination {checkpoints_dir() / candidates[0][0]})")


def resolve_space_weights(backbones: Iterable[str], **kwargs: Any) -> dict[str, Path]:
    """:func:`ensure_imagenet_weights` for each distinct backbone, in first-seen order; kwargs pass through."""
    return {backbone: ensure_imagenet_weights(backbone, **kwargs) for backbone in dict.fromkeys(backbones)}
