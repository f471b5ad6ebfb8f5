"""What a sweep tells its user when Tune returns: the trial table, errors, the Pareto front, the pick.

Printed to the console (the sweep's command-line output, which tests read) and, for the front, logged
to the sweep's MLflow parent run as well.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from ray import tune

from hairseg_core.config import SearchSpace
from hairseg_core.search.pareto import Selection, describe_rule, format_front, log_front
from hairseg_core.search.results import FRONT_EXTRA_METRICS, BestTrial, latency_machines, sweep_front
from hairseg_core.search.state import resume_command
from hairseg_core.text_table import format_table
from hairseg_core.track.runs import Tracker
from hairseg_core.track.tags import TAG_LATENCY_MACHINES, TAG_LATENCY_METHOD
from hairseg_core.track.view import ui_command


def resume_hint(name: str, storage: str, address: str | None = None, tracking_uri: str | None = None) -> str:
    """The exact command that continues an interrupted sweep (the flags it was started with)."""
    command = resume_command(name, storage, address, tracking_uri)
    return f"interrupted: finished trials are kept; resume with\n  {command}"


def print_errors(rows: list[dict[str, Any]]) -> None:
    failed = [r for r in rows if r.get("error")]
    if failed:
        print(f"\n{len(failed)} trial(s) errored (after their retries); error.txt in each trial folder has the trace:")
        for row in failed:
            print(f"  trial {row['trial_id']}: {row['error']}")


def report_front(results: tune.ResultGrid, space: SearchSpace, tracker: Tracker, parent: str) -> Selection | None:
    """Print the Pareto front and log it to the parent run; return the trial ``select:`` picks, or None.

    None (after printing why, naming the rule and the closest trial) when no trial satisfies the rule:
    the trials stay recorded, only the export has nothing to take.
    """
    front = sweep_front(results, space)
    machines = latency_machines(results)
    rows = log_front(
        tracker,
        parent,
        front.points,
        space.objectives,
        front.front,
        space.select,
        front.selection,
        front.error,
        extra=FRONT_EXTRA_METRICS,
    )
    if machines:
        tracker.set_tags(parent, {TAG_LATENCY_MACHINES: json.dumps(machines)})
    if len(space.objectives) > 1:  # one objective: the front is just the best trial(s), logged only
        print()
        print(format_front(rows, space.objectives, describe_rule(space.select, space.objectives)))
    if front.latency_note:
        print(front.latency_note)
        tracker.set_tags(parent, {TAG_LATENCY_METHOD: front.latency_note})
    elif machines:
        settings = space.finalize
        size = settings.export_size or "base_size"
        print(
            f"latency: median of {settings.latency_repeats} CPU passes at {size} px, batch 1, on {'; '.join(machines)}"
        )
    if front.selection is None:
        print(
            f"\nerror: {front.error}\n  The trials are complete and recorded (MLflow parent run {parent}); nothing was "
            "exported. Any trial's checkpoint can be finalized alone: python pipelines/finalize.py --checkpoint PATH",
            file=sys.stderr,
        )
    return front.selection


def print_summary(
    rows: list[dict[str, Any]],
    best: BestTrial,
    metric: str,
    elapsed: float,
    tracking_uri: str,
    experiment: str,
    view: str | None = None,
) -> None:
    shown = [{k: v for k, v in r.items() if k != "error"} for r in rows]
    print()
    print(format_table(shown, title=f"trials, best {metric} first"))
    print_errors(rows)
    print(f"\npicked trial {best.trial_id} (select: below): {metric} = {best.metrics.get(metric):.4f}")
    for key, value in sorted(best.config.items()):
        print(f"  {key}: {value}")
    print(f"checkpoint: {best.checkpoint_path}")
    print(f"sweep time: {elapsed / 60:.1f} min")
    print(f"MLflow: experiment {experiment!r}; open the UI with\n  {ui_command(tracking_uri)}")
    if view:
        print(f"this sweep's trials side by side (table; add &compareRunsMode=CHART for the charts):\n  {view}")
