"""A sweep's state beside Tune's: its manifest, where it is stored, and which sweep ``--resume`` continues.

The manifest (``hairseg_sweep.json`` in the sweep's Tune folder) records the search space and MLflow
experiment a sweep started with, and whether its trials and final stage ended; it lives on the same
storage as Tune's state (local, s3://, gs://), so it survives a lost head node.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.fs
from ray import tune

from hairseg_core.config import SearchSpace, load_search_space, search_space_from_dict

logger = logging.getLogger(__name__)


def new_sweep_name(experiment: str) -> str:
    """``<experiment>-<YYYYmmdd-HHMMSS>-<6 hex>``: the random suffix keeps two sweeps started in the same
    second (two people, one space) apart; the name is also the MLflow parent run's and the Tune folder's."""
    return f"{experiment}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


#: Written into a sweep's Tune folder when it starts, so ``--resume`` needs only the run name:
#: the search space (fixed settings included) and the MLflow experiment come back from it.
SWEEP_MANIFEST = "hairseg_sweep.json"


def latest_sweep(storage_path: str, experiment: str | None = None) -> str | None:
    """The newest restorable, unfinished sweep under ``storage_path`` (local, s3://, gs://).

    With ``experiment``, only that experiment's sweeps (``<experiment>-<timestamp>``) count;
    without, any folder that holds a hairseg sweep manifest.
    """
    fs, root = pyarrow.fs.FileSystem.from_uri(storage_path)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return None
    folders = [i for i in infos if i.type == pyarrow.fs.FileType.Directory]
    if experiment is not None:
        folders = [i for i in folders if i.base_name.startswith(experiment + "-")]
    # newest first: by modification time where the filesystem has it, then by the timestamped name
    folders.sort(key=lambda i: (i.mtime_ns or 0, i.base_name), reverse=True)
    for info in folders:
        try:
            manifest = _read_manifest(storage_path, info.base_name)
        except ManifestCorrupt as exc:
            logger.warning("skipping sweep %s: %s", info.base_name, exc)
            continue
        if manifest is None and experiment is None:
            continue  # not a hairseg sweep
        if manifest is not None and sweep_done(manifest):
            continue  # every trial ended and the final stage ran: nothing to resume
        if tune.Tuner.can_restore(sweep_dir(storage_path, info.base_name)):
            return info.base_name
    return None


def save_sweep_manifest(
    storage_path: str,
    name: str,
    experiment: str,
    space: SearchSpace,
    space_file: str | None,
    parent_run_id: str | None = None,
) -> None:
    """Record what a sweep runs beside Tune's state (same storage: survives a lost head node).

    ``parent_run_id`` is the MLflow run this sweep created: ``--resume`` reopens that run (never another
    run that happens to carry the name), and the sweep retires only trial runs linked to it.
    """
    payload = {
        "experiment": experiment,
        "parent_run_id": parent_run_id,
        "space_file": space_file,
        "space": space.model_dump(mode="json"),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "finalize_pending": True,  # until the final stage completes or is skipped
    }
    _write_manifest(storage_path, name, payload)


def _manifest_location(storage_path: str, name: str) -> tuple[Any, str]:
    """(pyarrow filesystem, sweep folder) for local paths, s3:// and gs:// alike."""
    return pyarrow.fs.FileSystem.from_uri(sweep_dir(storage_path, name))


class ManifestCorrupt(ValueError):
    """A sweep's manifest (or another JSON record in its folder) cannot be read: truncated, not JSON."""


def read_json(uri: str) -> dict[str, Any] | None:
    """A JSON object stored at ``uri`` (local path, s3://, gs://), None when absent; ``ManifestCorrupt``
    (one line naming the file) when it is not a JSON object."""
    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        raw = stream.read()
    try:
        payload = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestCorrupt(f"{uri} is corrupt ({len(raw)} bytes, not JSON: {exc})") from None
    if not isinstance(payload, dict):
        raise ManifestCorrupt(f"{uri} is corrupt (a JSON {type(payload).__name__}, not an object)")
    return payload


def write_json_atomic(uri: str, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` so that a reader sees the old file or the new one, never a torn one.

    Local files: written to a temporary name in the same folder, flushed, then ``os.replace``d (atomic on
    POSIX). Object stores (s3://, gs://): a PUT is atomic by itself (an object appears whole or not at all).
    """
    data = json.dumps(dict(payload), indent=2).encode()
    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    folder = path.rsplit("/", 1)[0]
    fs.create_dir(folder, recursive=True)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        tmp = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def manifest_uri(storage_path: str, name: str) -> str:
    return f"{sweep_dir(storage_path, name)}/{SWEEP_MANIFEST}"


def _read_manifest(storage_path: str, name: str) -> dict[str, Any] | None:
    return read_json(manifest_uri(storage_path, name))


def _write_manifest(storage_path: str, name: str, payload: dict[str, Any]) -> None:
    write_json_atomic(manifest_uri(storage_path, name), payload)


def load_sweep_manifest(storage_path: str, name: str) -> dict[str, Any] | None:
    """The manifest ``save_sweep_manifest`` wrote, or None (sweeps started before manifests existed)."""
    payload = _read_manifest(storage_path, name)
    if payload is not None:
        source = manifest_uri(storage_path, name)
        if not isinstance(payload.get("space"), dict) or not isinstance(payload.get("experiment"), str):
            raise ManifestCorrupt(f"{source} is corrupt (no 'space' or 'experiment')")
        payload["space"] = search_space_from_dict(payload["space"], source=source)
    return payload


def mark_sweep_finished(storage_path: str, name: str) -> None:
    """Every trial ran to its end: ``--resume`` has no trial left to run (maybe the final stage)."""
    _stamp_manifest(storage_path, name, "finished")


def mark_sweep_finalized(storage_path: str, name: str, skipped: bool = False) -> None:
    """The final stage completed (or was skipped with ``--no-finalize``): nothing is left to resume."""
    _stamp_manifest(storage_path, name, "finalize_skipped" if skipped else "finalized")


def sweep_done(manifest: Mapping[str, Any]) -> bool:
    """Whether ``--resume`` has nothing to do: every trial ended and the final stage ran or was skipped.

    Manifests from before the final stage was recorded count as done once their trials ended.
    """
    if not manifest.get("finished"):
        return False
    recorded = {"finalized", "finalize_skipped", "finalize_pending"} & set(manifest)
    return not recorded or bool({"finalized", "finalize_skipped"} & recorded)


def _stamp_manifest(storage_path: str, name: str, key: str) -> None:
    payload = _read_manifest(storage_path, name)
    if payload is not None:
        payload[key] = _dt.datetime.now(_dt.timezone.utc).isoformat()
        _write_manifest(storage_path, name, payload)


def default_storage_path() -> str:
    return str((Path.cwd() / "ray_results").resolve())


def normalize_storage_path(storage: str | None) -> str:
    """``--storage`` as Tune and pyarrow need it: URIs unchanged, local paths absolute."""
    if not storage:
        return default_storage_path()
    if "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())


def sweep_dir(storage_path: str, name: str) -> str:
    """The Tune folder of sweep ``name`` under ``storage_path`` (a path or a URI)."""
    return storage_path.rstrip("/") + "/" + name


class ResumeError(Exception):
    """``--resume`` cannot find the sweep, or was given settings that contradict it."""


def sweep_names(storage_path: str, limit: int = 10) -> list[str]:
    """Folders under ``storage_path`` holding a sweep (a manifest or Tune's state), newest first (a look-up)."""
    fs, root = pyarrow.fs.FileSystem.from_uri(storage_path)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return []
    folders = sorted(
        (i for i in infos if i.type == pyarrow.fs.FileType.Directory), key=lambda i: i.mtime_ns or 0, reverse=True
    )
    names = []
    for info in folders:
        folder = f"{root.rstrip('/')}/{info.base_name}"
        inside = fs.get_file_info([f"{folder}/{SWEEP_MANIFEST}", f"{folder}/tuner.pkl"])
        if any(i.type == pyarrow.fs.FileType.File for i in inside):
            names.append(info.base_name)
    return names[:limit]


class SweepFinished(Exception):
    """``--resume`` named a sweep whose trials all ended: not an error, nothing to do."""


def resume_target(
    storage: str,
    default_space: str,
    overrides: Mapping[str, Any],
    space_file: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    changes_settings: bool = False,
) -> tuple[SearchSpace, str, str]:
    """(search space, MLflow experiment, Tune run name) of the sweep ``--resume`` continues.

    The space and experiment come from the manifest the sweep wrote when it started, so
    ``--resume --run-name NAME`` is enough; a ``space_file`` that differs from it is refused,
    because restored trials would silently train with other fixed settings. ``changes_settings``
    (``--set`` was given) is refused for the same reason. ``overrides`` (the sample counts) apply
    to ``space_file`` or, for a sweep without a manifest, to ``default_space``.
    """
    if changes_settings:
        raise ResumeError("--set would change the settings of a sweep being resumed; it keeps the ones it started with")
    given = load_search_space(space_file, dict(overrides)) if space_file else None
    wanted = experiment or (f"hairseg-{given.name}" if given else None)
    name = run_name or latest_sweep(storage, wanted)
    if name is None:
        which = f"of experiment {wanted!r} " if wanted else ""
        raise ResumeError(f"no unfinished restorable sweep {which}under {storage} (pass --run-name and --storage)")
    try:
        manifest = load_sweep_manifest(storage, name)
    except ManifestCorrupt as exc:
        raise ResumeError(f"sweep {name}: {exc}") from None
    if manifest is None and run_name and not tune.Tuner.can_restore(sweep_dir(storage, name)):
        # A typo must not start Ray and an empty "resumed" sweep; say what there is instead.
        known = sweep_names(storage)
        listing = f"sweeps there: {', '.join(known)}" if known else "no sweep is stored there"
        raise ResumeError(f"--run-name {run_name}: no such sweep under {storage} ({listing})")
    if manifest is None:  # a sweep without a manifest: trust the command line
        space = given or load_search_space(default_space, dict(overrides))
        return space, experiment or f"hairseg-{space.name}", name
    if sweep_done(manifest):
        raise SweepFinished(
            f"sweep {name} already finished ({manifest['finished']}): every trial ran to its end, nothing to "
            f"resume. Redo its final stage with: python pipelines/finalize.py --experiment {manifest['experiment']}"
        )
    stored: SearchSpace = manifest["space"]
    if given is not None:
        ignore = {"num_samples", "max_concurrent_trials"}
        old, new = stored.model_dump(exclude=ignore), given.model_dump(exclude=ignore)
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if changed:
            raise ResumeError(
                f"{space_file} differs from the search space sweep {name} started with "
                f"({manifest.get('space_file')}) in: {', '.join(changed)}. Resume without --space "
                "(the stored one is used) or start a new sweep."
            )
    if experiment and experiment != manifest["experiment"]:
        raise ResumeError(f"sweep {name} logs to MLflow experiment {manifest['experiment']!r}, not {experiment!r}")
    return stored, manifest["experiment"], name


def resume_command(name: str, storage: str, address: str | None = None, tracking_uri: str | None = None) -> str:
    """The exact command that continues sweep ``name`` (the flags it was started with)."""
    address_flag = f" --address {address}" if address else ""
    tracking = f" --tracking-uri {tracking_uri}" if tracking_uri else ""
    return f"python pipelines/sweep.py --resume --run-name {name} --storage {storage}{address_flag}{tracking}"


def sweep_in_storage(storage_path: str, name: str, ignore_lease: bool = False) -> str | None:
    """What in ``storage_path`` says sweep ``name`` exists (its manifest, Tune's state, a driver's lease), or None.

    A folder holding none of these (a driver that stopped before Tune started and released its lease)
    does not make the name taken.
    """
    folder = sweep_dir(storage_path, name)
    fs, path = pyarrow.fs.FileSystem.from_uri(folder)
    for file, what in ((SWEEP_MANIFEST, "its manifest"), (SWEEP_LEASE, "a driver's lease")):
        if file == SWEEP_LEASE and ignore_lease:
            continue
        if fs.get_file_info(f"{path}/{file}").type == pyarrow.fs.FileType.File:
            return f"{what} {folder}/{file}"
    if tune.Tuner.can_restore(folder):
        return f"Tune's state in {folder}"
    return None


# ----------------------------------------------------------------------------- the driver's lease
#: Held in a sweep's folder by the one driver running it: hostname, pid, start time, heartbeat.
SWEEP_LEASE = "hairseg_lease.json"
#: A lease whose heartbeat is older than this many seconds is stale (its holder is gone) and taken over.
LEASE_STALE_ENV = "HAIRSEG_LEASE_STALE_S"
DEFAULT_LEASE_STALE_S = 600.0


class LeaseHeld(RuntimeError):
    """Another live driver holds the sweep's lease: a second driver on one sweep would corrupt both."""


def lease_stale_after() -> float:
    raw = os.environ.get(LEASE_STALE_ENV)
    try:
        return DEFAULT_LEASE_STALE_S if raw is None else max(1.0, float(raw))
    except ValueError:
        raise ValueError(f"{LEASE_STALE_ENV}={raw!r}: expected a number of seconds") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _now() -> float:
    return time.time()


def lease_staleness(holder: Mapping[str, Any], stale_after: float | None = None) -> str | None:
    """Why ``holder``'s lease may be taken over (its pid is dead on this host, or no heartbeat), or None."""
    stale_after = lease_stale_after() if stale_after is None else stale_after
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if not _pid_alive(holder["pid"]):
            return f"its driver (pid {holder['pid']} on this host) is gone"
    age = _now() - float(holder.get("heartbeat", 0) or 0)
    if age > stale_after:
        return f"its last heartbeat was {age:.0f} s ago (stale after {stale_after:.0f} s, {LEASE_STALE_ENV})"
    return None


def describe_holder(holder: Mapping[str, Any]) -> str:
    age = _now() - float(holder.get("heartbeat", 0) or 0)
    return (
        f"host {holder.get('host')} pid {holder.get('pid')}, started {holder.get('started')}, "
        f"last heartbeat {age:.0f} s ago"
    )


class Lease:
    """This driver's hold on a sweep (``hairseg_lease.json`` in its folder), kept fresh by a heartbeat thread."""

    def __init__(self, uri: str, holder: dict[str, Any], interval: float) -> None:
        self.uri = uri
        self.holder = holder
        self.interval = interval
        self.created_dirs: list[Path] = []  # deepest first; set by ``acquire_lease``
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="hairseg-lease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                current = read_json(self.uri)
                if current is None or current.get("token") != self.holder["token"]:
                    self.lost = f"the lease {self.uri} was taken over ({describe_holder(current or {})})"
                    logger.error("%s: another driver may be running this sweep", self.lost)
                    return
                self.holder["heartbeat"] = _now()
                write_json_atomic(self.uri, self.holder)
            except (OSError, ManifestCorrupt) as exc:  # storage blip: try again at the next beat
                logger.warning("lease heartbeat on %s failed: %s", self.uri, exc)

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still this driver's."""
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            current = read_json(self.uri)
            if current is not None and current.get("token") == self.holder["token"]:
                fs, path = pyarrow.fs.FileSystem.from_uri(self.uri)
                fs.delete_file(path)
                if isinstance(fs, pyarrow.fs.LocalFileSystem):
                    # A driver that stopped before Tune started leaves no trace: the sweep's folder, and the
                    # storage folder when this lease created it, go again if nothing else was written there.
                    for folder in [Path(path).parent, *self.created_dirs]:
                        if folder.is_dir() and not any(folder.iterdir()):
                            folder.rmdir()
        except (OSError, ManifestCorrupt) as exc:
            logger.warning("could not release the lease %s: %s", self.uri, exc)


def _take_local_lease(path: str, holder: Mapping[str, Any], name: str, uri: str, stale: bool) -> None:
    """Create the lease file whole and only if absent (``os.link`` of a written temporary file fails when the
    name exists); a stale one is first renamed aside, which only one of two drivers taking it over can do."""
    folder = path.rsplit("/", 1)[0]
    os.makedirs(folder, exist_ok=True)
    if stale:
        try:
            os.replace(path, f"{path}.broken-{holder['token']}")
        except FileNotFoundError:
            raise LeaseHeld(f"sweep {name}: another driver took over its stale lease at the same moment") from None
    tmp = f"{path}.tmp-{holder['token']}"
    with open(tmp, "wb") as out:
        out.write(json.dumps(dict(holder), indent=2).encode())
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise LeaseHeld(f"sweep {name} is being started by another driver right now (lease {uri})") from None
    finally:
        os.unlink(tmp)
    if stale:
        for old in Path(folder).glob(f"{SWEEP_LEASE}.broken-*"):
            old.unlink(missing_ok=True)


def acquire_lease(storage_path: str, name: str, break_lease: bool = False, interval: float | None = None) -> Lease:
    """Take sweep ``name``'s lease, or raise ``LeaseHeld`` naming the live driver that has it.

    A lease is taken over without asking when it is stale (``lease_staleness``) or ``break_lease`` is set
    (``--break-lease``: the holder is known to be gone, e.g. on another host that was shut down). On a
    local or shared filesystem the lease is created with ``O_EXCL``, so of two drivers starting at once
    exactly one wins; on an object store the check is write-then-read-back, which narrows the race to
    the store's write latency.
    """
    uri = f"{sweep_dir(storage_path, name)}/{SWEEP_LEASE}"
    stale_after = lease_stale_after()
    holder = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "heartbeat": _now(),
        "token": secrets.token_hex(8),
    }
    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    try:
        current = read_json(uri)
    except ManifestCorrupt:
        current = {}  # a lease nobody can read holds nothing (it is written whole, so it is not in progress)
    if current is not None:
        why = "--break-lease was given" if break_lease else lease_staleness(current, stale_after)
        if why is None:
            raise LeaseHeld(
                f"sweep {name} is being run by another driver ({describe_holder(current)}; lease {uri}). "
                "Wait for it to end; if that driver is gone for good, add --break-lease."
            )
        logger.warning("taking over the lease of sweep %s from %s: %s", name, describe_holder(current), why)
    created: list[Path] = []  # folders this lease makes (the storage root too): removed again if left empty
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        folder = Path(path).parent
        while not folder.exists():
            created.append(folder)
            folder = folder.parent
        _take_local_lease(path, holder, name, uri, stale=current is not None)
    else:
        write_json_atomic(uri, holder)
    time.sleep(0.05)
    check = read_json(uri)
    if check is None or check.get("token") != holder["token"]:
        other = describe_holder(check or {})
        raise LeaseHeld(f"sweep {name}: another driver took its lease at the same moment ({other})")
    lease = Lease(uri, holder, interval if interval is not None else min(30.0, stale_after / 4))
    lease.created_dirs = created
    return lease
