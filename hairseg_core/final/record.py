"""Which steps of a final stage are done, so that a resumed or repeated final stage continues where it stopped.

The record (``hairseg_final.json``) lives in the sweep's folder beside its manifest (local, s3://, gs://),
keyed by the sha256 of the checkpoint being finalized, and is rewritten atomically after every step:

``table5`` (Table 5 and the per-source table) → ``decision`` (the promotion decision, with its bootstrap
interval) → ``export`` (``exports/<sweep>/``) → ``finalize_run`` (the MLflow run holding them) → ``logged``
(Table 5 and the exports on that run) → ``registration`` (the model version) → ``promotion`` (``@champion``)
→ ``finished`` (the run closed) → ``report`` → ``stamp`` (the sweep's manifest marked finalized).

The record makes repeats cheap; correctness does not rest on it alone: a model version is found by its tags
(``hairseg.sweep`` and ``hairseg.checkpoint_digest``) before one is registered, and carries its decision, so
a final stage whose record was lost (another machine, ``pipelines/finalize.py --checkpoint``) still registers
at most one version per (sweep, checkpoint) and moves ``@champion`` at most once.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FINAL_RECORD = "hairseg_final.json"
#: Test hook: ``HAIRSEG_FINAL_PAUSE_AFTER=<step>`` makes the final stage print a line and sleep after recording
#: that step, so a drill can SIGKILL the driver at exactly that point (``tests/test_kill_drill.py``).
PAUSE_ENV = "HAIRSEG_FINAL_PAUSE_AFTER"
#: Printed (flushed) when the hook pauses: ``final stage paused after <step>``.
PAUSE_LINE = "final stage paused after"


def checkpoint_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a checkpoint file: what "the same checkpoint" means for registration."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class FinalRecord:
    """The steps done for one checkpoint of one sweep; in memory only when ``uri`` is None."""

    def __init__(self, uri: str | None, digest: str) -> None:
        from hairseg_core.search.state import ManifestCorrupt, read_json  # deferred: Ray's tune module

        self.uri = uri
        self.digest = digest
        self._all: dict[str, Any] = {}
        if uri is not None:
            try:
                self._all = read_json(uri) or {}
            except ManifestCorrupt as exc:  # the registry lookups still keep the stage from repeating itself
                logger.warning("%s; the final stage starts its record afresh", exc)
        entry = self._all.setdefault(digest, {"steps": {}})
        self.steps: dict[str, Any] = entry.setdefault("steps", {})

    @classmethod
    def in_folder(cls, folder: str | None, digest: str) -> FinalRecord:
        return cls(f"{folder.rstrip('/')}/{FINAL_RECORD}" if folder else None, digest)

    def get(self, step: str) -> dict[str, Any] | None:
        return self.steps.get(step)

    def mark(self, step: str, **info: Any) -> None:
        """Record ``step`` as done (with what a later run needs from it), atomically."""
        from hairseg_core.search.state import write_json_atomic  # deferred: Ray's tune module

        self.steps[step] = {"at": _dt.datetime.now(_dt.timezone.utc).isoformat(), **info}
        if self.uri is not None:
            write_json_atomic(self.uri, self._all)
        pause_point(step)


def pause_point(step: str) -> None:
    """The drills' kill point: sleep (for ever, until killed) after ``step`` when ``$HAIRSEG_FINAL_PAUSE_AFTER``
    names it. Unset in normal use: does nothing."""
    if os.environ.get(PAUSE_ENV) == step:
        print(f"{PAUSE_LINE} {step}", flush=True)
        sys.stdout.flush()
        while True:
            time.sleep(1)
