"""Verified, resumable, retrying file download with the standard library only.

Shared by the dataset downloader (:mod:`hairseg_core.data.download`) and the pretrained-weights fetcher
(:mod:`hairseg_core.models.fetch`), so both get the same guarantees:

* bytes go to a ``.part`` file that is renamed onto the destination only once complete and verified, so an
  interrupted or corrupt download never leaves a file that looks finished. With ``resume=True`` (datasets)
  the part file is ``<file>.part`` and a later call continues it with an HTTP Range request; with
  ``resume=False`` (weights, which several trials on one node may fetch at once) every call writes its own
  uniquely named part file and removes it on failure, so concurrent fetches never interleave bytes;
* a known digest is verified: full sha256 / md5, and/or a *sha256 prefix* such as the 8 hex characters
  torchvision puts in its file names (``mobilenet_v2-b0353104.pth``). A mismatch deletes the download;
* transient failures (connection refused/reset, timeouts, HTTP 408/429/5xx, a body shorter than its
  Content-Length) are retried with exponential backoff; permanent ones (HTTP 404 and other 4xx, unknown
  host, checksum mismatch) fail at once, because retrying them only delays the error;
* ``timeout`` bounds every socket operation. Attempts that get no answer at all (connection refused,
  unreachable host, no response) share a budget of one ``timeout``, and the backoff is capped at
  ``timeout / attempts``, so a server that is down fails within about one ``timeout`` rather than
  ``attempts`` of them, while a transfer cut off mid-way is still retried (and resumed).

``file://`` URLs are copied with the same part-file and verification rules, so a mirror on shared storage
behaves like one served over HTTP.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hairseg_core.progress import progress_bar

CHUNK = 1 << 16
TIMEOUT_S = 60.0
USER_AGENT = "hairseg-downloader/1.0"
#: HTTP statuses worth another attempt: request timeout, rate limiting and server-side trouble.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
#: Statuses meaning "this file is not on that server", which callers may answer by trying another name.
NOT_FOUND_STATUSES = frozenset({404, 410})
# torch.hub's convention: "<name>-<first hex digits of sha256>.<ext>"; torch requires at least 8 of them.
_HASH_PREFIX_RE = re.compile(r"[0-9a-f]{8,64}")


class DownloadError(RuntimeError):
    """A file could not be fetched or failed verification; the message names the URL and why."""

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url


class DownloadNotFoundError(DownloadError):
    """The server (or mirror folder) does not have the file: HTTP 404/410 or a missing ``file://`` path."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not match the expected digest; the download has been deleted."""


class _Transient(Exception):
    """Internal: one attempt failed in a way another attempt may fix.

    ``answered`` says whether the server sent anything (a status line or body bytes). Attempts that got no
    answer at all (refused, unreachable, timed out) share one ``timeout`` budget; an answering server
    (503, a body cut off after minutes of transfer) gets every attempt.
    """

    def __init__(self, message: str, answered: bool) -> None:
        super().__init__(message)
        self.answered = answered


@dataclass(frozen=True)
class RetryPolicy:
    """How often to try and how long to wait: ``backoff_s * 2**n`` seconds after failed attempt ``n``."""

    attempts: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def delay(self, failed_attempt: int, timeout: float) -> float:
        """Seconds to sleep after the 0-based ``failed_attempt``; capped so all sleeps fit in ``timeout``."""
        cap = min(self.max_backoff_s, timeout / max(self.attempts, 1))
        return min(self.backoff_s * (2**failed_attempt), cap)


def hash_prefix(file_name: str) -> str | None:
    """The sha256 prefix torch.hub/torchvision encode in a file name, or None when it carries none.

    ``resnet50-11ad3fa6.pth`` → ``11ad3fa6``: the lowercase hex run (8 to 64 characters) after the last
    ``-`` of the name without its extensions. ``xception65.ra3_in1k.safetensors`` → None.
    """
    _, dash, tail = Path(file_name).name.rpartition("-")
    if not dash:
        return None
    match = _HASH_PREFIX_RE.fullmatch(tail.split(".", 1)[0])
    return match.group(0) if match else None


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks so large checkpoints do not fill memory."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def digest_problem(
    path: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    md5: str | None = None,
    sha256_prefix: str | None = None,
) -> str | None:
    """Why ``path`` fails verification (a human-readable sentence), or None when every given digest matches."""
    actual_sha256 = file_digest(path, "sha256") if (sha256 or sha256_prefix) else None
    if sha256 and actual_sha256 != sha256.lower():
        return f"expected sha256 {sha256.lower()}, got {actual_sha256}"
    if sha256_prefix and not (actual_sha256 or "").startswith(sha256_prefix.lower()):
        return (
            f"expected a sha256 starting with {sha256_prefix.lower()} (the hash in the file name), got {actual_sha256}"
        )
    if md5:
        actual_md5 = file_digest(path, "md5")
        if actual_md5 != md5.lower():
            return f"expected md5 {md5.lower()}, got {actual_md5}"
    return None


def download_file(
    url: str,
    path: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    md5: str | None = None,
    sha256_prefix: str | None = None,
    progress: bool = True,
    timeout: float = TIMEOUT_S,
    retry: RetryPolicy | None = None,
    resume: bool = True,
    user_agent: str = USER_AGENT,
) -> Path:
    """Download ``url`` to ``path`` unless a copy that passes the given digests is already there.

    Raises :class:`DownloadNotFoundError` (404/410, missing local file), :class:`ChecksumError` (nothing is
    left behind) or :class:`DownloadError` (anything else, after the retries). See the module docstring for
    the part-file, retry and timeout rules.
    """
    path = Path(path)
    retry = retry or RetryPolicy()
    digests = {"sha256": sha256, "md5": md5, "sha256_prefix": sha256_prefix}
    if path.is_file():
        if digest_problem(path, **digests) is None:
            return path
        path.unlink()  # stale or corrupt leftover: fetch again
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part" if resume else f"{path.name}.{uuid.uuid4().hex[:12]}.part")
    try:
        _with_retries(url, part, progress=progress, timeout=timeout, retry=retry, user_agent=user_agent)
        problem = digest_problem(part, **digests)
        if problem is not None:
            part.unlink(missing_ok=True)
            raise ChecksumError(f"checksum mismatch for {url}: {problem}; the download was deleted", url)
        os.replace(part, path)
    except BaseException:
        if not resume:  # a uniquely named part file can never be resumed: do not leave it behind
            part.unlink(missing_ok=True)
        raise
    return path


def _with_retries(url: str, part: Path, *, progress: bool, timeout: float, retry: RetryPolicy, user_agent: str) -> None:
    attempts = max(retry.attempts, 1)
    silent_since: float | None = None  # when the current run of unanswered attempts began
    for attempt in range(attempts):
        started = time.monotonic()
        try:
            _stream(url, part, progress=progress, timeout=timeout, user_agent=user_agent)
            return
        except _Transient as exc:
            silent_since = None if exc.answered else (started if silent_since is None else silent_since)
            delay = retry.delay(attempt, timeout)
            # A server that does not answer at all must not cost attempts x timeout: give up once retrying
            # would run past one timeout of silence (a refused port still gets all its quick attempts).
            out_of_time = silent_since is not None and time.monotonic() - silent_since + delay >= timeout
            if attempt + 1 == attempts or out_of_time:
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                raise DownloadError(f"{exc}{tries}", url) from exc.__cause__
            time.sleep(delay)


def _stream(url: str, part: Path, *, progress: bool, timeout: float, user_agent: str) -> None:
    """One attempt: write the body of ``url`` to ``part``, resuming an existing partial file when possible."""
    if urllib.parse.urlparse(url).scheme == "file":
        _copy_local(url, part)
        return
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": user_agent}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # the partial file is already complete (or bogus): restart
            part.unlink(missing_ok=True)
            return _stream(url, part, progress=progress, timeout=timeout, user_agent=user_agent)
        message = f"download of {url} failed: HTTP {exc.code} {exc.reason}"
        if exc.code in RETRY_STATUSES:
            raise _Transient(message, answered=True) from exc
        if exc.code in NOT_FOUND_STATUSES:
            raise DownloadNotFoundError(message, url) from exc
        raise DownloadError(message, url) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        message = f"cannot download {url}: {reason}"
        if _permanent_connect_error(reason):
            raise DownloadError(message, url) from exc
        raise _Transient(message, answered=False) from exc
    with response:
        resumed = offset > 0 and response.status == 206
        if not resumed:
            offset = 0  # server ignored the Range header: start from scratch
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        desc = Path(urllib.parse.urlparse(url).path).name or url
        with (
            open(part, "ab" if resumed else "wb") as out,
            progress_bar(
                total=total, initial=offset, unit="B", unit_scale=True, desc=desc, disable=not progress
            ) as bar,
        ):
            while chunk := _read(response, url):
                out.write(chunk)  # a full disk raises OSError here: not retried, the caller sees it as is
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        size = part.stat().st_size
        raise _Transient(
            f"download of {url} is incomplete ({size} of {total} bytes); run again to resume", answered=True
        )


def _read(response: BinaryIO, url: str) -> bytes:
    try:
        return response.read(CHUNK)
    except (OSError, http.client.HTTPException) as exc:  # reset, timeout, IncompleteRead mid-body
        raise _Transient(f"download of {url} was interrupted: {exc}; run again to resume", answered=True) from exc


def _permanent_connect_error(reason: object) -> bool:
    """True for failures another attempt cannot fix: an unknown host name or a malformed URL."""
    if isinstance(reason, socket.gaierror):
        return reason.errno != socket.EAI_AGAIN  # "temporary failure in name resolution" is worth a retry
    if isinstance(reason, str):  # urllib reports e.g. "unknown url type" as a plain string
        return True
    return isinstance(reason, OSError) and reason.errno in (errno.EINVAL, errno.EAFNOSUPPORT)


def _copy_local(url: str, part: Path) -> None:
    """``file://`` source: copy it into the part file (no resume; a local copy is cheap to redo)."""
    source = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    if not source.is_file():
        raise DownloadNotFoundError(f"download of {url} failed: {source} does not exist", url)
    try:
        shutil.copyfile(source, part)
    except OSError as exc:
        raise DownloadError(f"cannot copy {url}: {exc}", url) from exc
