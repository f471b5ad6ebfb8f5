"""The Pareto front and the deployment rules (``hairseg_core.search.pareto``) on hand-made points.

Pure functions, no Ray: ties, duplicates, a single trial, everything dominated by one trial, three
objectives, mixed directions, missing values; and for random clouds the two properties that define
a front (nothing on it is dominated, everything off it is) and that every rule picks from it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import matplotlib
import pytest

from hairseg_core.search.pareto import (
    SelectionError,
    TrialPoint,
    dominates,
    format_front,
    front_rows,
    log_front,
    pareto_figure,
    pareto_front,
    select,
)

matplotlib.use("Agg")


@dataclass(frozen=True)
class Obj:
    metric: str
    mode: str


@dataclass(frozen=True)
class Rule:
    rule: str = "best"
    metric: str | None = None
    max_drop: float | None = None
    limit: float | None = None


ACC_LAT = [Obj("val_miou", "max"), Obj("latency_ms", "min")]


def pts(*rows: tuple[str, float, float]) -> list[TrialPoint]:
    """Points of the two objectives (val_miou, latency_ms)."""
    return [TrialPoint(t, {"val_miou": a, "latency_ms": lat}, epoch=1) for t, a, lat in rows]


def ids(points: list[TrialPoint]) -> list[str]:
    return [p.trial_id for p in points]


# ----------------------------------------------------------------------------- dominance and the front
def test_dominates_needs_no_worse_everywhere_and_better_somewhere() -> None:
    a, b = {"val_miou": 0.8, "latency_ms": 10.0}, {"val_miou": 0.7, "latency_ms": 10.0}
    assert dominates(a, b, ACC_LAT) and not dominates(b, a, ACC_LAT)
    assert not dominates(a, a, ACC_LAT), "equal points do not dominate each other"
    trade = {"val_miou": 0.9, "latency_ms": 20.0}
    assert not dominates(a, trade, ACC_LAT) and not dominates(trade, a, ACC_LAT)


def test_front_of_a_trade_off_keeps_each_step_and_drops_the_dominated() -> None:
    points = pts(("fast", 0.70, 5.0), ("mid", 0.80, 10.0), ("slow", 0.90, 30.0), ("bad", 0.75, 12.0))
    assert ids(pareto_front(points, ACC_LAT)) == ["fast", "mid", "slow"]


def test_front_with_ties_and_duplicates() -> None:
    # a and b are identical: neither dominates the other, both stay. c ties a on accuracy but is
    # slower: dominated. d ties a on latency but is less accurate: dominated.
    points = pts(("a", 0.8, 10.0), ("b", 0.8, 10.0), ("c", 0.8, 11.0), ("d", 0.7, 10.0), ("e", 0.9, 20.0))
    assert ids(pareto_front(points, ACC_LAT)) == ["a", "b", "e"]


def test_front_of_one_trial_and_all_dominated_by_one() -> None:
    assert ids(pareto_front(pts(("only", 0.5, 9.0)), ACC_LAT)) == ["only"]
    points = pts(("king", 0.9, 5.0), ("x", 0.8, 6.0), ("y", 0.9, 7.0), ("z", 0.1, 5.0))
    assert ids(pareto_front(points, ACC_LAT)) == ["king"]


def test_front_with_three_objectives_and_mixed_directions() -> None:
    objectives = [Obj("val_miou", "max"), Obj("latency_ms", "min"), Obj("val_loss", "min")]

    def p(t: str, acc: float, lat: float, loss: float) -> TrialPoint:
        return TrialPoint(t, {"val_miou": acc, "latency_ms": lat, "val_loss": loss})

    points = [
        p("a", 0.8, 10, 0.30),
        p("b", 0.8, 10, 0.20),  # dominates a through the third objective only
        p("c", 0.7, 5, 0.40),  # faster: on the front
        p("d", 0.6, 20, 0.10),  # lowest loss: on the front although worst on two objectives
        p("e", 0.6, 21, 0.10),  # d, but slower
    ]
    assert ids(pareto_front(points, objectives)) == ["b", "c", "d"]
    # two of the three objectives: a and b tie, so both are on that front
    assert ids(pareto_front(points, objectives[:2])) == ["a", "b", "c"]


def test_single_objective_front_is_the_best_trials() -> None:
    points = pts(("a", 0.8, 10.0), ("b", 0.9, 50.0), ("c", 0.9, 1.0))
    assert ids(pareto_front(points, ACC_LAT[:1])) == ["b", "c"]


def test_points_lacking_an_objective_are_left_out() -> None:
    points = [
        *pts(("a", 0.8, 10.0)),
        TrialPoint("crashed", {"val_miou": 0.99}),
        TrialPoint("nan", {"val_miou": float("nan"), "latency_ms": 1.0}),
    ]
    assert ids(pareto_front(points, ACC_LAT)) == ["a"]
    rows = front_rows(points, ACC_LAT, pareto_front(points, ACC_LAT))
    assert [r["trial_id"] for r in rows][-2:] == ["crashed", "nan"]
    assert rows[-1]["note"].startswith("not comparable") and "val_miou" not in rows[-1]


@pytest.mark.parametrize("n_objectives", [1, 2, 3, 4])
def test_front_properties_on_random_clouds(n_objectives: int) -> None:
    """Nothing on the front is dominated by any point; every point off it is dominated by one on it."""
    rng = random.Random(n_objectives)
    objectives = [Obj(f"m{i}", rng.choice(["max", "min"])) for i in range(n_objectives)]
    for _ in range(30):
        # coarse grid values make ties and duplicates frequent
        points = [
            TrialPoint(str(i), {o.metric: rng.randint(0, 5) / 5 for o in objectives}) for i in range(rng.randint(1, 25))
        ]
        front = pareto_front(points, objectives)
        assert front, "a non-empty set always has a non-dominated point"
        for p in front:
            assert not any(dominates(q.values, p.values, objectives) for q in points)
        on = {id(p) for p in front}
        for p in points:
            if id(p) not in on:
                assert any(dominates(q.values, p.values, objectives) for q in front)
        for rule in (Rule(), Rule("fastest_within", "m0", max_drop=0.2)):
            if rule.rule == "fastest_within":
                objectives_lat = [*objectives, Obj("latency_ms", "min")]
                cloud = [TrialPoint(p.trial_id, {**p.values, "latency_ms": rng.randint(1, 4)}) for p in points]
                chosen = select(cloud, objectives_lat, rule)
                assert chosen.point in pareto_front(cloud, objectives_lat)
            else:
                assert select(points, objectives, rule).point in front


# ----------------------------------------------------------------------------- the rules
def test_best_picks_the_first_objective_and_breaks_ties_by_the_next() -> None:
    points = pts(("slow", 0.9, 30.0), ("fast", 0.9, 10.0), ("low", 0.5, 1.0))
    chosen = select(points, ACC_LAT, Rule())
    assert chosen.trial_id == "fast" and chosen.rule == "best"
    assert "highest val_miou" in chosen.reason and "0.9000" in chosen.reason
    only = select(pts(("solo", 0.3, 3.0)), ACC_LAT, Rule())
    assert only.trial_id == "solo"


def test_best_on_a_minimised_first_objective() -> None:
    objectives = [Obj("val_loss", "min"), Obj("latency_ms", "min")]
    points = [TrialPoint("a", {"val_loss": 0.4, "latency_ms": 1}), TrialPoint("b", {"val_loss": 0.2, "latency_ms": 9})]
    assert select(points, objectives, Rule()).trial_id == "b"


def test_fastest_within_takes_the_fastest_close_enough_to_the_best() -> None:
    points = pts(("best", 0.80, 40.0), ("close", 0.795, 20.0), ("edge", 0.79, 15.0), ("far", 0.70, 2.0))
    chosen = select(points, ACC_LAT, Rule("fastest_within", "val_miou", max_drop=0.01))
    # 0.80 - 0.79 is 0.010000000000000009 in binary floating point: the edge must still count
    assert chosen.trial_id == "edge"
    assert "3 of 4 trials are within 0.01 val_miou" in chosen.reason and "best (best: 0.8000)" in chosen.reason
    assert select(points, ACC_LAT, Rule("fastest_within", "val_miou", max_drop=0.0)).trial_id == "best"
    assert select(points, ACC_LAT, Rule("fastest_within", "val_miou", max_drop=0.5)).trial_id == "far"


def test_fastest_within_ties_go_to_the_more_accurate_then_the_other_objectives() -> None:
    points = pts(("a", 0.80, 10.0), ("b", 0.81, 10.0), ("c", 0.82, 30.0))
    assert select(points, ACC_LAT, Rule("fastest_within", "val_miou", max_drop=0.05)).trial_id == "b"
    objectives = [*ACC_LAT, Obj("gmacs", "min")]
    same = [TrialPoint(t, {"val_miou": 0.8, "latency_ms": 10.0, "gmacs": g}) for t, g in (("x", 2.0), ("y", 1.0))]
    assert select(same, objectives, Rule("fastest_within", "val_miou", max_drop=0.0)).trial_id == "y"


def test_fastest_within_on_a_minimised_accuracy_metric() -> None:
    objectives = [Obj("val_loss", "min"), Obj("latency_ms", "min")]
    points = [
        TrialPoint("best", {"val_loss": 0.20, "latency_ms": 50}),
        TrialPoint("ok", {"val_loss": 0.25, "latency_ms": 10}),
        TrialPoint("worse", {"val_loss": 0.40, "latency_ms": 1}),
    ]
    assert select(points, objectives, Rule("fastest_within", "val_loss", max_drop=0.05)).trial_id == "ok"


def test_best_under_takes_the_most_accurate_within_the_limit() -> None:
    points = pts(("accurate", 0.90, 40.0), ("ok", 0.85, 15.0), ("quick", 0.80, 8.0), ("tie", 0.85, 14.0))
    chosen = select(points, ACC_LAT, Rule("best_under", "latency_ms", limit=15))
    assert chosen.trial_id == "tie", "0.85 twice under the limit: the faster one"
    assert "3 of 4 trials have latency_ms <= 15" in chosen.reason
    assert select(points, ACC_LAT, Rule("best_under", "latency_ms", limit=100)).trial_id == "accurate"
    assert select(points, ACC_LAT, Rule("best_under", "latency_ms", limit=8)).trial_id == "quick", "limit inclusive"


def test_best_under_that_nothing_satisfies_names_the_rule_and_the_closest_trial() -> None:
    points = pts(("a", 0.90, 40.0), ("b", 0.80, 17.25), ("c", 0.85, 30.0))
    with pytest.raises(SelectionError) as info:
        select(points, ACC_LAT, Rule("best_under", "latency_ms", limit=15))
    message = str(info.value)
    assert "best_under(latency_ms <= 15)" in message
    assert "closest is trial b with latency_ms 17.2500" in message and "val_miou 0.8000" in message


def test_no_comparable_trial_is_a_selection_error() -> None:
    with pytest.raises(SelectionError, match="no trial reported every objective"):
        select([TrialPoint("x", {"val_miou": 0.5})], ACC_LAT, Rule())


# ----------------------------------------------------------------------------- table, figure, MLflow
def test_rows_put_the_front_first_and_mark_the_pick() -> None:
    points = pts(("bad", 0.5, 50.0), ("fast", 0.7, 5.0), ("slow", 0.9, 30.0))
    front = pareto_front(points, ACC_LAT)
    chosen = select(points, ACC_LAT, Rule("fastest_within", "val_miou", max_drop=0.3))
    rows = front_rows(points, ACC_LAT, front, chosen)
    assert [r["trial_id"] for r in rows] == ["slow", "fast", "bad"]
    assert [r["on_front"] for r in rows] == [True, True, False]
    assert [r["picked"] for r in rows] == [False, True, False]
    text = format_front(rows, ACC_LAT, "fastest_within(val_miou, max_drop 0.3)")
    assert "2 of 3 trials non-dominated" in text
    assert [line.split()[0] for line in text.splitlines()[3:]] == ["*", "*", "bad"]
    assert "<==" in text.splitlines()[4]


@pytest.mark.parametrize("n_objectives", [1, 2, 3])
def test_figure_draws_every_pair_of_objectives(n_objectives: int) -> None:
    objectives = [Obj("val_miou", "max"), Obj("latency_ms", "min"), Obj("gmacs", "min")][:n_objectives]
    points = [TrialPoint(str(i), {"val_miou": 0.5 + i / 10, "latency_ms": 3.0 + i, "gmacs": 1.0}) for i in range(4)]
    front = pareto_front(points, objectives)
    fig = pareto_figure(points, objectives, front, select(points, objectives, Rule()))
    panels = {1: 1, 2: 1, 3: 3}[n_objectives]
    assert len(fig.axes) == panels
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert any(label.startswith("Pareto front") for label in labels) and "picked" in labels


class RecordingTracker:
    """Stands in for ``hairseg_core.track.runs.Tracker``: records what would be logged."""

    def __init__(self) -> None:
        self.tables: dict[str, list] = {}
        self.dicts: dict[str, dict] = {}
        self.figures: list[str] = []
        self.tags: dict[str, str] = {}

    def log_table(self, run_id: str, rows: list, artifact_file: str) -> None:
        self.tables[artifact_file] = rows

    def log_dict(self, run_id: str, data: dict, artifact_file: str) -> None:
        self.dicts[artifact_file] = json.loads(json.dumps(data))

    def log_figure(self, run_id: str, figure: object, artifact_file: str) -> None:
        self.figures.append(artifact_file)

    def set_tags(self, run_id: str, tags: dict) -> None:
        self.tags.update({k: str(v) for k, v in tags.items()})


def test_log_front_writes_table_json_figure_and_tags() -> None:
    points = pts(("a", 0.9, 30.0), ("b", 0.8, 5.0), ("c", 0.7, 9.0))
    front = pareto_front(points, ACC_LAT)
    rule = Rule("fastest_within", "val_miou", max_drop=0.2)
    chosen = select(points, ACC_LAT, rule)
    tracker = RecordingTracker()
    log_front(tracker, "run", points, ACC_LAT, front, rule, chosen)
    summary = tracker.dicts["pareto/front.json"]
    assert summary["objectives"] == ["val_miou", "latency_ms"] and summary["modes"]["latency_ms"] == "min"
    assert [r["trial_id"] for r in summary["front"]] == ["a", "b"] and summary["picked"] == "b"
    assert summary["rule"] == {"rule": "fastest_within", "metric": "val_miou", "max_drop": 0.2, "limit": None}
    assert len(tracker.tables["pareto/trials.json"]) == 3 and tracker.figures == ["pareto/front.png"]
    assert tracker.tags["hairseg.pareto_front"] == "a,b" and tracker.tags["hairseg.select_rule"] == "fastest_within"
