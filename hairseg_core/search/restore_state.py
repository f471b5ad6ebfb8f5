"""Make Tune's saved searcher state agree with its saved trial list before ``Tuner.restore``.

Tune writes a sweep's trial list (``experiment_state-*.json``) and its search generator's state
(``search_gen_state-*.json``: how many trials it has created, which ones the concurrency limiter
holds) into a staging folder, and a background thread copies that folder to the storage path. The
driver rewrites the files while an earlier copy may still be running, so a driver killed at the
wrong moment can leave storage with a trial list from one save and a searcher count from the next.
Restored as they are, a count *above* the list loses trials for good (Tune thinks it created them,
they are nowhere, and the resumed sweep ends short: seen once in CI as "3 of 4 trials"), and a
limiter holding an id that is not in the list keeps one concurrency slot busy forever (a sweep with
``max_concurrent_trials: 1`` would hang). The trial list is the record Tune restores trials from, so
the searcher state is brought in line with it: the count becomes the number of listed trials (the
missing ones are suggested again) and the limiter keeps only listed trials.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from dataclasses import dataclass

import pyarrow.fs
import ray.cloudpickle as cloudpickle

logger = logging.getLogger(__name__)

EXPERIMENT_STATE = "experiment_state-*.json"
SEARCH_GEN_STATE = "search_gen_state-*.json"
_LIMITER_KEY = "name:ConcurrencyLimiter"


@dataclass(frozen=True)
class StateRepair:
    """What :func:`align_searcher_with_trials` changed (``changed`` False: the files agreed)."""

    trials_listed: int
    counter_before: int
    dropped_live: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return self.counter_before != self.trials_listed or bool(self.dropped_live)

    def describe(self) -> str:
        parts = []
        if self.counter_before != self.trials_listed:
            parts.append(
                f"its searcher had counted {self.counter_before} trials but its trial list holds {self.trials_listed}"
            )
        if self.dropped_live:
            parts.append(f"its concurrency limiter held unlisted trials {', '.join(self.dropped_live)}")
        return (
            "Tune's saved sweep state was caught between two saves (the driver died while it was copied to "
            f"storage): {'; '.join(parts)}. The searcher now follows the trial list"
            + (
                f": {self.counter_before - self.trials_listed} unlisted trial(s) will be suggested again."
                if self.counter_before > self.trials_listed
                else "."
            )
        )


def _newest(fs: pyarrow.fs.FileSystem, folder: str, pattern: str) -> str | None:
    """The newest file matching ``pattern`` (Tune names them by session time, so the largest name)."""
    infos = fs.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    names = sorted(i.base_name for i in infos if i.type == pyarrow.fs.FileType.File)
    matching = fnmatch.filter(names, pattern)
    return f"{folder}/{matching[-1]}" if matching else None


def _read(fs: pyarrow.fs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


def _trial_id(entry: object) -> str:
    """A trial's id from one ``trial_data`` entry: ``[trial JSON, run metadata JSON]`` in Ray 2.x."""
    if isinstance(entry, (list, tuple)):
        entry = entry[0]
    if isinstance(entry, str):
        entry = json.loads(entry)
    return str(entry["trial_id"])  # type: ignore[index]


def _listed_trial_ids(raw: bytes) -> list[str]:
    return [_trial_id(t) for t in json.loads(raw)["trial_data"]]


def align_searcher_with_trials(sweep_folder: str) -> StateRepair | None:
    """Bring the newest searcher state in ``sweep_folder`` (a path or URI) in line with the newest trial list.

    Returns None where there is nothing to compare (no state of either kind yet), else what was found and
    changed. The file is rewritten in place only when it disagrees with the trial list.
    """
    fs, folder = pyarrow.fs.FileSystem.from_uri(sweep_folder)
    experiment_file = _newest(fs, folder, EXPERIMENT_STATE)
    search_file = _newest(fs, folder, SEARCH_GEN_STATE)
    if experiment_file is None or search_file is None:
        return None
    listed = _listed_trial_ids(_read(fs, experiment_file))
    search_state = cloudpickle.loads(_read(fs, search_file))
    counter = int(search_state["counter"])
    limiter = search_state.get(_LIMITER_KEY) or {}
    live = set(limiter.get("live_trials") or ())
    dropped = tuple(sorted(live - set(listed)))
    repair = StateRepair(trials_listed=len(listed), counter_before=counter, dropped_live=dropped)
    if not repair.changed:
        return repair
    search_state["counter"] = len(listed)
    if counter > len(listed):
        search_state["finished"] = False  # the lost trials are still to come
    if dropped:
        limiter["live_trials"] = live - set(dropped)
        limiter["num_unfinished_live_trials"] = len(limiter["live_trials"])
    payload = cloudpickle.dumps(search_state)
    # Local disk: a temporary file renamed over the old one (a reader sees one or the other); an object store's
    # PUT is whole or nothing by itself.
    target = f"{search_file}.hairseg-tmp" if isinstance(fs, pyarrow.fs.LocalFileSystem) else search_file
    with fs.open_output_stream(target) as stream:
        stream.write(payload)
    if target != search_file:
        fs.move(target, search_file)
    logger.warning(repair.describe())
    return repair
