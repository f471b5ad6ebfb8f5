"""A sweep's state beside Tune's: its manifest, where it is stored, and which sweep ``--resume`` continues.

The manifest (``hairseg_sweep.json`` in the sweep's Tune folder) records the search space and MLflow
experiment a sweep started with, and whether its trials and final stage ended; it lives on the same
storage as Tune's state (local, s3://, gs://), so it survives a lost head node.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.fs
from ray import tune

from hairseg_core.config import SearchSpace, load_search_space, search_space_from_dict


def new_sweep_name(experiment: str) -> str:
    return f"{experiment}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


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
        except CorruptManifest:
            continue  # named when that sweep itself is resumed; never the newest unfinished one

        if manifest is None and experiment is None:
            continue  # not a hairseg sweep
        if manifest is not None and sweep_done(manifest):
            continue  # every trial ended and the final stage ran: nothing to resume
        if tune.Tuner.can_restore(sweep_dir(storage_path, info.base_name)):
            return info.base_name
    return None


def save_sweep_manifest(
    storage_path: str, name: str, experiment: str, space: SearchSpace, space_file: str | None
) -> None:
    """Record what a sweep runs beside Tune's state (same storage: survives a lost head node)."""
    payload = {
        "experiment": experiment,
        "space_file": space_file,
        "space": space.model_dump(mode="json"),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "finalize_pending": True,  # until the final stage completes or is skipped
    }
    _write_manifest(storage_path, name, payload)


def _manifest_location(storage_path: str, name: str) -> tuple[Any, str]:
    """(pyarrow filesystem, sweep folder) for local paths, s3:// and gs:// alike."""
    return pyarrow.fs.FileSystem.from_uri(sweep_dir(storage_path, name))


def _read_manifest(storage_path: str, name: str) -> dict[str, Any] | None:
    fs, folder = _manifest_location(storage_path, name)
    path = f"{folder}/{SWEEP_MANIFEST}"
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        raw = stream.read()
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptManifest(
            f"{path}: corrupt sweep manifest ({type(exc).__name__}: {exc}); {len(raw)} bytes"
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("space"), dict) or "experiment" not in payload:
        raise CorruptManifest(f"{path}: corrupt sweep manifest (not the object a sweep writes: no space/experiment)")
    return payload


def _write_manifest(storage_path: str, name: str, payload: dict[str, Any]) -> None:
    fs, folder = _manifest_location(storage_path, name)
    fs.create_dir(folder, recursive=True)
    with fs.open_output_stream(f"{folder}/{SWEEP_MANIFEST}") as stream:
        stream.write(json.dumps(payload, indent=2).encode())


def load_sweep_manifest(storage_path: str, name: str) -> dict[str, Any] | None:
    """The manifest ``save_sweep_manifest`` wrote, or None (sweeps started before manifests existed)."""
    payload = _read_manifest(storage_path, name)
    if payload is not None:
        source = f"{sweep_dir(storage_path, name)}/{SWEEP_MANIFEST}"
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


class CorruptManifest(ResumeError):
    """A sweep's ``hairseg_sweep.json`` cannot be read (truncated, not JSON, not a manifest); names the file."""


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
    manifest = load_sweep_manifest(storage, name)
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
