"""The accuracy x latency trade-off of a sweep: its Pareto front, and the trial a rule picks from it.

A trial is a point: one value per objective (``hairseg_core.search.results.trial_points`` builds them from Tune's
results: the metrics of the trial's best epoch, with its measured latency). A point *dominates* another
when it is no worse on every objective and strictly better on at least one; the front is the points no
other point dominates. Two trials with identical values do not dominate each other, so both stay on the
front; the definition needs no special case for ties or for any number of objectives.

The final stage exports one model, so a rule from the search space (``select:``) picks it:

* ``best``: the best by the first objective; ties go to the next objectives in order.
* ``fastest_within``: the lowest ``latency_ms`` among trials whose ``metric`` is within ``max_drop``
  of the best trial's (e.g. 0.01 mIoU); ties go to the better ``metric``, then the other objectives.
* ``best_under``: among trials whose ``metric`` (to minimise, e.g. ``latency_ms``) is at most
  ``limit``, the best by the first other objective; ties go to the remaining ones.

Every rule breaks ties lexicographically over all objectives, so the trial it picks is always on the
front (a trial that dominated it would have won the tie-break). A rule no trial satisfies raises
:class:`SelectionError` naming the closest trial. Everything here is pure except :func:`pareto_figure`
(matplotlib) and :func:`log_front` (MLflow, through ``hairseg_core.track.runs.Tracker``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hairseg_core.text_table import format_table
from hairseg_core.track.tags import TAG_PARETO_FRONT, TAG_SELECT_REASON, TAG_SELECT_RULE


class ObjectiveLike(Protocol):
    """``hairseg_core.config.Objective`` or anything else with a metric name and a direction."""

    metric: str
    mode: str  # "max" | "min"


class RuleLike(Protocol):
    """``hairseg_core.config.SelectSpec``."""

    rule: str
    metric: str | None
    max_drop: float | None
    limit: float | None


@dataclass(frozen=True)
class TrialPoint:
    """One trial in objective space: ``values`` holds at least every objective's metric.

    ``epoch`` is the epoch the accuracy values come from (its checkpoint is what would be exported);
    ``info`` carries what a table should show beside the values (sampled settings).
    """

    trial_id: str
    values: Mapping[str, float]
    epoch: int | None = None
    info: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Selection:
    """The trial a rule picked, and why, in words a person can check against the front table."""

    point: TrialPoint
    rule: str
    reason: str

    @property
    def trial_id(self) -> str:
        return self.point.trial_id


class SelectionError(ValueError):
    """No trial satisfies the rule; the message names the rule and the closest trial."""


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def _cost(value: float, mode: str) -> float:
    """The value as something to minimise, so that one ordering serves both directions."""
    return -value if mode == "max" else value


def comparable(point: TrialPoint, objectives: Sequence[ObjectiveLike]) -> bool:
    """Whether ``point`` has a finite value for every objective (a crashed trial may lack some)."""
    for objective in objectives:
        value = point.values.get(objective.metric)
        if value is None or not math.isfinite(float(value)):
            return False
    return True


def dominates(a: Mapping[str, float], b: Mapping[str, float], objectives: Sequence[ObjectiveLike]) -> bool:
    """``a`` is no worse than ``b`` on every objective and strictly better on at least one."""
    strictly = False
    for objective in objectives:
        va, vb = float(a[objective.metric]), float(b[objective.metric])
        if _better(vb, va, objective.mode):
            return False
        strictly = strictly or _better(va, vb, objective.mode)
    return strictly


def pareto_front(points: Sequence[TrialPoint], objectives: Sequence[ObjectiveLike]) -> list[TrialPoint]:
    """The points no other point dominates, in their input order (duplicates all stay).

    Points lacking an objective's value are left out: they cannot be compared. Quadratic in the number
    of trials, which a sweep's few hundred at most make instant.
    """
    if not objectives:
        raise ValueError("pareto_front needs at least one objective")
    usable = [p for p in points if comparable(p, objectives)]
    return [p for p in usable if not any(dominates(q.values, p.values, objectives) for q in usable if q is not p)]


def _lexicographic(point: TrialPoint, order: Sequence[ObjectiveLike]) -> tuple[Any, ...]:
    return (*(_cost(float(point.values[o.metric]), o.mode) for o in order), point.trial_id)


def _ordered(first: Sequence[ObjectiveLike], objectives: Sequence[ObjectiveLike]) -> list[ObjectiveLike]:
    """``first``, then the remaining objectives in their listed order: a rule's tie-break order."""
    names = {o.metric for o in first}
    return [*first, *(o for o in objectives if o.metric not in names)]


def _objective(objectives: Sequence[ObjectiveLike], metric: str) -> ObjectiveLike:
    for objective in objectives:
        if objective.metric == metric:
            return objective
    raise SelectionError(f"{metric!r} is not an objective of this sweep ({[o.metric for o in objectives]})")


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"


def describe_rule(rule: RuleLike, objectives: Sequence[ObjectiveLike]) -> str:
    """The rule in words, e.g. ``fastest_within(val_miou, max_drop 0.01)``."""
    if rule.rule == "fastest_within":
        return f"fastest_within({rule.metric}, max_drop {rule.max_drop:g})"
    if rule.rule == "best_under":
        return f"best_under({rule.metric} <= {rule.limit:g})"
    return f"best({objectives[0].metric}, {objectives[0].mode})"


def select(points: Sequence[TrialPoint], objectives: Sequence[ObjectiveLike], rule: RuleLike) -> Selection:
    """The trial ``rule`` picks among ``points`` (see the module docstring); raises SelectionError."""
    if not objectives:
        raise ValueError("select needs at least one objective")
    usable = [p for p in points if comparable(p, objectives)]
    name = describe_rule(rule, objectives)
    if not usable:
        raise SelectionError(
            f"select {name}: no trial reported every objective ({', '.join(o.metric for o in objectives)})"
        )
    if rule.rule == "best":
        first = objectives[0]
        pick = min(usable, key=lambda p: _lexicographic(p, objectives))
        return Selection(
            pick,
            rule.rule,
            f"{name}: trial {pick.trial_id} has the {'highest' if first.mode == 'max' else 'lowest'} "
            f"{first.metric}, {_fmt(pick.values[first.metric])}",
        )
    if rule.rule == "fastest_within":
        assert rule.metric is not None and rule.max_drop is not None
        accuracy = _objective(objectives, rule.metric)
        latency = _objective(objectives, "latency_ms")
        top = min(usable, key=lambda p: _lexicographic(p, _ordered([accuracy], objectives)))
        best = float(top.values[accuracy.metric])
        # a tiny tolerance: 0.80 - 0.01 must admit 0.79 although binary fractions make the gap 0.0100000000000000x
        slack = rule.max_drop + 1e-9 * max(1.0, abs(best))
        if accuracy.mode == "max":
            within = [p for p in usable if float(p.values[accuracy.metric]) >= best - slack]
        else:
            within = [p for p in usable if float(p.values[accuracy.metric]) <= best + slack]
        pick = min(within, key=lambda p: _lexicographic(p, _ordered([latency, accuracy], objectives)))
        drop = abs(best - float(pick.values[accuracy.metric]))
        return Selection(
            pick,
            rule.rule,
            f"{name}: {len(within)} of {len(usable)} trials are within {rule.max_drop:g} {accuracy.metric} of the "
            f"best ({top.trial_id}: {_fmt(best)}); trial {pick.trial_id} is the fastest of them, latency_ms "
            f"{_fmt(pick.values['latency_ms'])} at {accuracy.metric} {_fmt(pick.values[accuracy.metric])} "
            f"({_fmt(drop)} from the best)",
        )
    if rule.rule == "best_under":
        assert rule.metric is not None and rule.limit is not None
        bounded = _objective(objectives, rule.metric)
        if bounded.mode != "min":
            raise SelectionError(
                f"select {name}: {bounded.metric} is maximised; best_under bounds a metric to minimise"
            )
        rest = [o for o in objectives if o.metric != bounded.metric]
        if not rest:
            raise SelectionError(f"select {name}: needs a second objective to rank the trials under the limit")
        under = [p for p in usable if float(p.values[bounded.metric]) <= rule.limit]
        if not under:
            closest = min(usable, key=lambda p: _lexicographic(p, _ordered([bounded], objectives)))
            raise SelectionError(
                f"select {name}: no trial has {bounded.metric} <= {rule.limit:g}; the closest is trial "
                f"{closest.trial_id} with {bounded.metric} {_fmt(closest.values[bounded.metric])} "
                f"({rest[0].metric} {_fmt(closest.values[rest[0].metric])}); raise select.limit or change the rule"
            )
        pick = min(under, key=lambda p: _lexicographic(p, [*rest, bounded]))
        return Selection(
            pick,
            rule.rule,
            f"{name}: {len(under)} of {len(usable)} trials have {bounded.metric} <= {rule.limit:g}; trial "
            f"{pick.trial_id} is the best of them by {rest[0].metric}, {_fmt(pick.values[rest[0].metric])} "
            f"({bounded.metric} {_fmt(pick.values[bounded.metric])})",
        )
    raise ValueError(f"unknown select rule {rule.rule!r}")


# ----------------------------------------------------------------------------- reporting
def front_rows(
    points: Sequence[TrialPoint],
    objectives: Sequence[ObjectiveLike],
    front: Sequence[TrialPoint],
    selection: Selection | None = None,
    extra: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One row per trial for the printed table and the json artifact: front first, by the first objective.

    Columns: trial, epoch, each objective, ``extra`` metrics where present, on_front, picked, then the
    trial's ``info`` (sampled settings). Trials that lack an objective come last, marked not comparable.
    """
    on_front = {id(p) for p in front}
    first = objectives[0]

    def order(p: TrialPoint) -> tuple[Any, ...]:
        if not comparable(p, objectives):
            return (2, math.inf, p.trial_id)
        return (0 if id(p) in on_front else 1, _cost(float(p.values[first.metric]), first.mode), p.trial_id)

    rows = []
    for p in sorted(points, key=order):
        row: dict[str, Any] = {"trial_id": p.trial_id, "epoch": p.epoch}
        for metric in [*(o.metric for o in objectives), *(m for m in extra if m not in {o.metric for o in objectives})]:
            if metric in p.values and math.isfinite(float(p.values[metric])):
                row[metric] = float(p.values[metric])
        row["on_front"] = id(p) in on_front
        row["picked"] = selection is not None and p is selection.point
        if not comparable(p, objectives):
            row["note"] = "not comparable: lacks an objective"
        row.update({k: v for k, v in p.info.items() if k not in row})
        rows.append(row)
    return rows


def format_front(rows: Sequence[Mapping[str, Any]], objectives: Sequence[ObjectiveLike], rule: str = "") -> str:
    """The front table for a terminal: every trial, front ones first and starred, the pick marked."""
    shown = []
    for row in rows:
        out = {"front": "*" if row.get("on_front") else "", "pick": "<==" if row.get("picked") else ""}
        out.update({k: v for k, v in row.items() if k not in {"on_front", "picked"}})
        shown.append(out)
    on_front = sum(1 for r in rows if r.get("on_front"))
    goals = ", ".join(f"{o.metric} {o.mode}" for o in objectives)
    title = f"Pareto front ({goals}): {on_front} of {len(rows)} trials non-dominated" + (f"; {rule}" if rule else "")
    return format_table(shown, title=title)


def pareto_figure(
    points: Sequence[TrialPoint],
    objectives: Sequence[ObjectiveLike],
    front: Sequence[TrialPoint],
    selection: Selection | None = None,
    title: str = "",
) -> Any:
    """All trials as dots, the front highlighted (and joined for two objectives), the pick starred.

    One panel per pair of objectives (a single panel for two; for one objective, the values by trial),
    each with the better direction labelled, so a reader can see what the front trades.
    """
    import matplotlib  # deferred: matplotlib only when drawing the front

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after choosing the Agg backend

    usable = [p for p in points if comparable(p, objectives)]
    on_front = {id(p) for p in front}
    pairs = list(itertools.combinations(range(len(objectives)), 2)) or [(None, 0)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(6.5 * len(pairs), 5), squeeze=False)

    def label(o: ObjectiveLike) -> str:
        return f"{o.metric} ({'higher' if o.mode == 'max' else 'lower'} is better)"

    for ax, (ix, iy) in zip(axes[0], pairs, strict=True):
        oy = objectives[iy]

        def xy(ps: Sequence[TrialPoint], ix: int | None = ix, oy: ObjectiveLike = oy) -> tuple[list, list]:
            xs = [usable.index(p) if ix is None else float(p.values[objectives[ix].metric]) for p in ps]
            return xs, [float(p.values[oy.metric]) for p in ps]

        others = [p for p in usable if id(p) not in on_front]
        ax.scatter(*xy(others), s=28, c="#9aa5b1", label=f"dominated ({len(others)})", zorder=2)
        best_points = [p for p in usable if id(p) in on_front]
        if best_points:
            xs, ys = xy(best_points)
            ax.scatter(xs, ys, s=52, c="#d1495b", label=f"Pareto front ({len(best_points)})", zorder=3)
            if ix is not None and len(objectives) == 2:
                line = sorted(zip(xs, ys, strict=True))
                ax.plot([x for x, _ in line], [y for _, y in line], c="#d1495b", lw=1.2, zorder=2)
        if selection is not None and comparable(selection.point, objectives):
            sx, sy = xy([selection.point])
            ax.scatter(sx, sy, s=260, marker="*", c="#edae49", edgecolors="black", zorder=4, label="picked")
            ax.annotate(selection.trial_id, (sx[0], sy[0]), textcoords="offset points", xytext=(8, 6), fontsize=8)
        ax.set_xlabel("trial" if ix is None else label(objectives[ix]))
        ax.set_ylabel(label(oy))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def log_front(
    tracker: Any,
    run_id: str,
    points: Sequence[TrialPoint],
    objectives: Sequence[ObjectiveLike],
    front: Sequence[TrialPoint],
    rule: RuleLike,
    selection: Selection | None,
    error: str | None = None,
    extra: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The front onto the sweep's parent run; returns the table rows.

    ``pareto/front.json``: objectives (names) and modes, the rule, ``front`` (the rows of the
    non-dominated trials), ``trials`` (every row), the picked trial id and the reason (or the error);
    ``pareto/trials.json`` (+ ``.csv``): the same rows as an MLflow table; ``pareto/front.png``.
    """
    import matplotlib.pyplot as plt  # deferred: matplotlib only when drawing the front

    rows = front_rows(points, objectives, front, selection, extra)
    if rows:
        tracker.log_table(run_id, rows, "pareto/trials.json")
    summary = {
        "objectives": [o.metric for o in objectives],
        "modes": {o.metric: o.mode for o in objectives},
        "rule": {"rule": rule.rule, "metric": rule.metric, "max_drop": rule.max_drop, "limit": rule.limit},
        "front": [r for r in rows if r["on_front"]],
        "trials": rows,
        "picked": selection.trial_id if selection else None,
        "reason": selection.reason if selection else error,
    }
    tracker.log_dict(run_id, summary, "pareto/front.json")
    # the rule and the outcome only: the reason (a sentence) is in front.json and on the run's tags
    outcome = f"picked trial {selection.trial_id}" if selection else "no trial satisfies it"
    fig = pareto_figure(points, objectives, front, selection, title=f"{describe_rule(rule, objectives)}: {outcome}")
    tracker.log_figure(run_id, fig, "pareto/front.png")
    plt.close(fig)
    tags = {TAG_PARETO_FRONT: ",".join(p.trial_id for p in front)[:4000], TAG_SELECT_RULE: rule.rule}
    if selection is not None:
        tags[TAG_SELECT_REASON] = selection.reason[:4000]
    tracker.set_tags(run_id, tags)
    return rows
