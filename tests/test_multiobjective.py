"""Multi-objective search: objectives in the space, measured latency, the Pareto front and the pick.

The first tests are fast (no Ray): validation of ``objectives`` / ``select`` / ``scheduler.metric``,
the searcher and scheduler built from them, and the latency measurement itself. The sweep tests run
``pipelines/sweep.py`` as a subprocess on real Ray + Optuna + ASHA + MLflow (as tests/test_sweep.py
does) and check the front and the pick against the values MLflow holds, recomputed here without
``hairseg_core.search.pareto``.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.artifacts
import optuna
import pytest
import torch
from sweep_helpers import EXPERIMENT, TINY_SPACE, Workspace, _merge, sweep_runs, tune_results
from torch import nn

from hairseg_core.config import ConfigError, load_search_space, search_space_from_dict
from hairseg_core.deploy.latency import count_macs, describe_machine, measure_model_cost, torch_threads

REPO = Path(__file__).resolve().parent.parent
TWO = [{"metric": "val_miou", "mode": "max"}, {"metric": "latency_ms", "mode": "min"}]
BASE = {"name": "t", "fixed": {"epochs": 3}}


# ----------------------------------------------------------------------------- validation
def test_single_metric_form_is_one_objective_and_round_trips() -> None:
    space = search_space_from_dict({**BASE, "metric": "val_loss", "mode": "min"})
    assert [(o.metric, o.mode) for o in space.objectives] == [("val_loss", "min")]
    assert space.select.rule == "best" and space.scheduler_objective.metric == "val_loss"
    again = search_space_from_dict(space.model_dump(mode="json"))  # what a resume reads back
    assert again.model_dump() == space.model_dump()


def test_objectives_set_metric_and_mode_to_the_first() -> None:
    space = search_space_from_dict({**BASE, "objectives": TWO[::-1]})
    assert (space.metric, space.mode) == ("latency_ms", "min")
    assert space.epoch_objective.metric == "val_miou", "latency is the same every epoch: it cannot rank epochs"
    assert search_space_from_dict(space.model_dump(mode="json")).objectives == space.objectives


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"objectives": [{"metric": "val_mio", "mode": "max"}]},
            "objectives.0.metric: metric 'val_mio' is not reported",
        ),
        ({"objectives": [{"metric": "val_miou", "mode": "up"}]}, "objectives.0.mode"),
        ({"objectives": []}, "objectives: empty"),
        ({"objectives": [TWO[0], TWO[0]]}, "objectives: each metric may appear once"),
        ({"metric": "val_loss", "objectives": TWO}, "metric: 'val_loss' contradicts objectives[0].metric"),
        ({"objectives": TWO, "scheduler": {"metric": "val_loss"}}, "scheduler.metric: 'val_loss' is not an objective"),
        (
            {"objectives": TWO, "select": {"rule": "fastest_within", "metric": "val_acc", "max_drop": 0.01}},
            "select.metric: 'val_acc' is not among the objectives",
        ),
        ({"objectives": TWO, "select": {"rule": "best_under", "metric": "latency_ms", "limit": -5}}, "select.limit"),
        ({"objectives": TWO, "select": {"rule": "best_under", "metric": "latency_ms"}}, "rule best_under needs limit"),
        (
            {"objectives": TWO, "select": {"rule": "best_under", "metric": "val_miou", "limit": 1}},
            "best_under bounds a metric to minimise",
        ),
        (
            {"select": {"rule": "fastest_within", "metric": "val_miou", "max_drop": 0.01}},
            "fastest_within needs latency_ms among the objectives",
        ),
        (
            {"objectives": TWO, "select": {"rule": "fastest_within", "metric": "val_miou", "max_drop": -0.1}},
            "select.max_drop",
        ),
        ({"objectives": TWO, "select": {"rule": "best", "limit": 3}}, "rule best takes no limit"),
        ({"objectives": TWO, "select": {"rule": "fastest", "metric": "val_miou"}}, "select.rule"),
        ({"searcher": {"sampler": "random", "population_size": 8}}, "population_size is an NSGA-II setting"),
        ({"finalize": {"latency_repeats": 5}}, "finalize.latency_repeats"),
        ({"finalize": {"latency_threads": 0}}, "finalize.latency_threads"),
    ],
)
def test_invalid_objectives_and_rules_name_the_key(tmp_path: Path, extra: dict, expected: str) -> None:
    import yaml

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**BASE, **extra}))
    with pytest.raises(ConfigError) as info:
        load_search_space(path)
    assert str(path) in str(info.value) and expected in str(info.value), str(info.value)


def test_shipped_webcam_space_trades_accuracy_for_latency_and_paper_stays_single() -> None:
    webcam = load_search_space(REPO / "search_spaces" / "webcam.yaml")
    assert [(o.metric, o.mode) for o in webcam.objectives] == [("val_miou", "max"), ("latency_ms", "min")]
    assert (webcam.select.rule, webcam.select.metric, webcam.select.max_drop) == ("fastest_within", "val_miou", 0.01)
    assert webcam.scheduler_objective.metric == "val_miou" and webcam.finalize.export_size == 224
    paper = load_search_space(REPO / "search_spaces" / "paper.yaml")
    assert len(paper.objectives) == 1 and paper.select.rule == "best"


def test_searcher_and_scheduler_follow_the_objectives() -> None:
    from ray.tune.schedulers import ASHAScheduler

    from hairseg_core.search.space import build_scheduler, build_searcher

    raw = {**BASE, "params": {"lr_head": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}
    multi = search_space_from_dict({**raw, "objectives": TWO, "scheduler": {"metric": "latency_ms"}})
    searcher = build_searcher(multi)
    assert searcher.metric == ["val_miou", "latency_ms"] and searcher.mode == ["max", "min"]
    assert searcher._ot_study.directions[1].name == "MINIMIZE"
    scheduler = build_scheduler(multi)
    assert isinstance(scheduler, ASHAScheduler) and (scheduler.metric, scheduler._mode) == ("latency_ms", "min")
    nsga = search_space_from_dict({**raw, "objectives": TWO, "searcher": {"sampler": "nsga2", "population_size": 6}})
    sampler = build_searcher(nsga)._sampler
    assert isinstance(sampler, optuna.samplers.NSGAIISampler) and sampler._population_size == 6
    single = build_searcher(search_space_from_dict(raw))
    assert single.metric == "val_miou" and single.mode == "max", "one objective stays a plain string"


# ----------------------------------------------------------------------------- latency
def test_macs_of_a_known_convolution_and_linear() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_macs(conv, torch.zeros(1, 3, 16, 16)) == 8 * 3 * 9 * 16 * 16
    linear = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    assert count_macs(linear, torch.zeros(1, 3, 2, 2)) == 12 * 5


class ThreadProbe(nn.Module):
    """Records the torch thread count it runs with."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return self.conv(x)


def test_model_cost_is_measured_on_a_copy_with_the_stated_threads() -> None:
    model = ThreadProbe().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch_threads(2):
        cost = measure_model_cost(model, 32, threads=1, repeats=20, warmup=3)
        assert torch.get_num_threads() == 2, "the caller's thread count is restored"
    assert model.training and not model.seen, "the model itself is neither run nor switched to eval"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert cost.repeats == 20 and cost.threads == 1 and cost.input_size == 32
    assert 0 < cost.latency_ms <= cost.latency_p90_ms
    assert cost.params_m == pytest.approx((4 * 3 * 9 + 4) / 1e6)
    assert cost.gmacs == pytest.approx(round(4 * 3 * 9 * 30 * 30 / 1e9, 6))
    assert cost.machine["threads"] == "1" and cost.machine["torch"] == torch.__version__
    assert "1 thread," in describe_machine(cost.machine)
    with pytest.raises(ValueError, match="repeats must be >= 20"):
        measure_model_cost(model, 32, repeats=5)


def test_measured_latency_ranks_a_heavier_head_slower() -> None:
    """Real DeepLabv3+ heads: 8x the ASPP / decoder width is many times the MACs and clearly slower."""
    from hairseg_core.models import build_model

    light = measure_model_cost(build_model(aspp_channels=16, decoder_channels=16), 129, repeats=20)
    heavy = measure_model_cost(build_model(aspp_channels=256, decoder_channels=256), 129, repeats=20)
    assert heavy.gmacs > 3 * light.gmacs and heavy.params_m > light.params_m
    assert heavy.latency_ms > light.latency_ms, (light, heavy)


def test_an_nsga2_searcher_pickles_for_the_experiment_state() -> None:
    """Tune pickles the searcher into its experiment state (and --resume unpickles it); Optuna 5's
    genetic samplers hold a thread lock, which plain pickling rejects."""
    import pickle

    from hairseg_core.search.space import build_searcher

    raw = {**BASE, "params": {"lr_head": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}
    space = search_space_from_dict({**raw, "objectives": TWO, "searcher": {"sampler": "nsga2", "population_size": 4}})
    searcher = pickle.loads(pickle.dumps(build_searcher(space)))
    sampler = searcher._sampler
    assert sampler.population_size == 4
    with sampler._thread_lock:  # a working lock again after unpickling
        pass


def test_a_trial_measures_once_and_a_restored_attempt_reports_the_same(tmp_path: Path) -> None:
    """The measurement travels in the checkpoint: a retry (maybe on another node) reports the same numbers."""
    from sweep_helpers import tiny_train_config

    from hairseg_core.search.trial import LatencySettings, _model_cost
    from hairseg_core.train.trainer import Trainer

    cfg = tiny_train_config(tmp_path)
    settings = LatencySettings(export_size=None, threads=1, repeats=20)
    trainer = Trainer(cfg)
    cost, measured = _model_cost(trainer, settings)
    assert measured and cost.input_size == cfg.base_size, "no export_size: the trained scale"
    trainer.save_checkpoint(tmp_path / "ckpt.pt")
    restored = Trainer.from_checkpoint(tmp_path / "ckpt.pt")
    again, measured_again = _model_cost(restored, settings)
    assert not measured_again and again == cost
    other, remeasured = _model_cost(restored, LatencySettings(export_size=97, threads=1, repeats=20))
    assert remeasured and other.input_size == 97, "other settings: measured again"


def test_trials_of_one_architecture_share_a_measurement_in_their_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With reuse_actors a worker runs many trials: one network is measured once, another one anew."""
    from sweep_helpers import tiny_train_config

    from hairseg_core.search import trial as trial_module
    from hairseg_core.train.trainer import Trainer

    monkeypatch.setattr(trial_module, "_MEASURED", {})
    calls: list[int] = []
    real = trial_module.measure_model_cost

    def counting(model: torch.nn.Module, size: int, **kwargs: object) -> object:
        calls.append(size)
        return real(model, size, **kwargs)

    monkeypatch.setattr(trial_module, "measure_model_cost", counting)
    settings = trial_module.LatencySettings(export_size=None, threads=1, repeats=20)
    cfg = tiny_train_config(tmp_path)
    first, new_first = trial_module._model_cost(Trainer(cfg), settings)
    other_lr = Trainer(cfg.model_copy(update={"lr_head": cfg.lr_head * 3, "seed": cfg.seed + 1}))
    second, new_second = trial_module._model_cost(other_lr, settings)
    assert new_first and new_second, "each trial logs its cost on its own run"
    assert second == first and len(calls) == 1, "same architecture: measured once"
    assert other_lr.extra["model_cost"] == first.to_dict(), "and kept in the second trial's checkpoint"
    wider = Trainer(cfg.model_copy(update={"aspp_channels": cfg.aspp_channels * 2}))
    third, _ = trial_module._model_cost(wider, settings)
    assert len(calls) == 2 and third.params_m > first.params_m, "another architecture: measured anew"


# ----------------------------------------------------------------------------- sweeps on real Ray
def _download_json(ws: Workspace, run_id: str, path: str) -> dict:
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=path, dst_path=str(ws.cwd / "downloads"), tracking_uri=ws.tracking_uri
    )
    return json.loads(Path(local).read_text())


def _non_dominated(values: dict[str, tuple[float, float]]) -> set[str]:
    """Trials no other trial beats on one objective without losing on the other (both minimised)."""
    out = set()
    for t, (a, b) in values.items():
        if not any((a2 <= a and b2 <= b) and (a2 < a or b2 < b) for t2, (a2, b2) in values.items() if t2 != t):
            out.add(t)
    return out


def _space(ws: Workspace, select: dict, **overrides: object) -> Path:
    """TINY_SPACE with val_loss x latency_ms and two head widths, so latency and MACs differ by trial."""
    raw = _merge(
        TINY_SPACE,
        {
            "objectives": [{"metric": "val_loss", "mode": "min"}, {"metric": "latency_ms", "mode": "min"}],
            "select": select,
            "fixed": {"epochs": 2},
            "finalize": {"export_size": 97},  # latency at 97 px (trials train at 65)
            **overrides,
        },
    )
    raw["fixed"].pop("aspp_channels")
    raw["fixed"].pop("decoder_channels")
    raw["params"] = {
        "lr_head": {"type": "float", "low": 1e-4, "high": 0.05, "log": True},
        "aspp_channels": {"type": "categorical", "choices": [16, 128]},
        "decoder_channels": {"type": "categorical", "choices": [16, 128]},
    }
    import yaml

    path = ws.cwd / "multi.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.slow
def test_two_objective_sweep_logs_latency_the_front_and_the_pick(ws: Workspace) -> None:
    space = _space(
        ws,
        {"rule": "fastest_within", "metric": "val_loss", "max_drop": 0.5},
        searcher={"sampler": "tpe", "n_startup_trials": 2},
    )
    sweep = ws.run(["--space", str(space), "--num-samples", "4", "--no-finalize", "--num-cpus", "2"], timeout=600)
    assert sweep.proc.returncode == 0, sweep.describe()

    runs = sweep_runs(ws.tracking_uri, EXPERIMENT)
    results = tune_results(ws.sweep_dir())
    assert len(runs.trials) == 4 and sorted(runs.by_trial()) == sorted(results)
    points: dict[str, tuple[float, float]] = {}
    for trial_id, run in runs.by_trial().items():
        metrics = run.data.metrics
        for key in ("latency_ms", "latency_p90_ms", "params_m", "gmacs", "val_loss"):
            assert key in metrics, f"trial {trial_id} logged no {key}: {sorted(metrics)}"
        assert 0 < metrics["latency_ms"] <= metrics["latency_p90_ms"]
        assert "1 thread" in run.data.tags["hairseg.latency_machine"]
        assert run.data.tags["hairseg.latency_input_size"] == "97"
        # Tune saw the same measured latency in every epoch (no epoch lacks an objective)
        assert {row["latency_ms"] for row in results[trial_id]} == {metrics["latency_ms"]}
        best_loss = min(v for _, v in runs.history(run.info.run_id, "val_loss"))
        points[trial_id] = (best_loss, metrics["latency_ms"])
    widths = {
        t: (rows[0]["config"]["aspp_channels"], rows[0]["config"]["decoder_channels"]) for t, rows in results.items()
    }
    gmacs = {t: r.data.metrics["gmacs"] for t, r in runs.by_trial().items()}
    for t in gmacs:
        for u in gmacs:
            assert (gmacs[t] == gmacs[u]) == (widths[t] == widths[u]), "MACs follow the architecture alone"

    parent = runs.parents[0]
    summary = _download_json(ws, parent.info.run_id, "pareto/front.json")
    assert summary["objectives"] == ["val_loss", "latency_ms"]
    # The pick's latency is the driver's, measured after every trial ended (search/deploy_latency.py); each
    # trial's own in-sweep figure is kept beside it. One measurement per architecture.
    driver: dict[str, tuple[float, float]] = {}
    for row in summary["trials"]:
        assert row["latency_trial_ms"] == pytest.approx(points[row["trial_id"]][1])
        assert row["val_loss"] == pytest.approx(points[row["trial_id"]][0])
        assert 0 < row["latency_ms"] <= row["latency_p90_ms"]
        driver[row["trial_id"]] = (row["val_loss"], row["latency_ms"])
    for t in driver:
        for u in driver:
            if widths[t] == widths[u]:
                assert driver[t][1] == driver[u][1], "one driver measurement per architecture"
    assert "measured by the driver after every trial ended" in parent.data.tags["hairseg.latency_method"]
    points = driver
    logged_front = {r["trial_id"] for r in summary["front"]}
    assert logged_front == _non_dominated(points), (points, summary["front"])

    # fastest_within: the fastest trial whose best val_loss is within 0.5 of the lowest
    lowest = min(v for v, _ in points.values())
    within = {t: p for t, p in points.items() if p[0] <= lowest + 0.5 + 1e-9}
    expected = min(within, key=lambda t: (within[t][1], within[t][0], t))
    assert summary["picked"] == expected and expected in logged_front
    assert parent.data.tags["hairseg.best_trial"] == expected, "the pick is what the final stage exports"
    assert parent.data.tags["hairseg.select_rule"] == "fastest_within"
    assert "1 thread" in json.loads(parent.data.tags["hairseg.latency_machines"])[0]
    out = sweep.stdout
    assert f"Pareto front (val_loss min, latency_ms min): {len(logged_front)} of 4 trials non-dominated" in out
    assert f"picked for export: trial {expected}: fastest_within(val_loss, max_drop 0.5)" in out
    local = mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id,
        artifact_path="pareto/front.png",
        dst_path=str(ws.cwd / "png"),
        tracking_uri=ws.tracking_uri,
    )
    assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_rule_no_trial_satisfies_fails_at_the_end_and_keeps_the_trials(ws: Workspace) -> None:
    space = _space(
        ws,
        {"rule": "best_under", "metric": "latency_ms", "limit": 0.001},
        searcher={"sampler": "nsga2", "population_size": 2},
        scheduler={"type": "fifo"},
    )
    sweep = ws.run(["--space", str(space), "--num-samples", "2", "--set", "epochs=1", "--num-cpus", "2"], timeout=600)
    assert sweep.proc.returncode == 1, sweep.describe()
    runs = sweep_runs(ws.tracking_uri, EXPERIMENT)
    latency = {t: r.data.metrics["latency_ms"] for t, r in runs.by_trial().items()}
    closest = min(latency, key=lambda t: (latency[t], t))
    assert "best_under(latency_ms <= 0.001): no trial has latency_ms <= 0.001" in sweep.stderr, sweep.stderr
    assert f"the closest is trial {closest} with latency_ms" in sweep.stderr
    assert {r.info.status for r in runs.trials} == {"FINISHED"} and len(runs.trials) == 2
    assert runs.parents[0].info.status == "FAILED"
    summary = _download_json(ws, runs.parents[0].info.run_id, "pareto/front.json")
    assert summary["picked"] is None and "closest is trial" in summary["reason"]
    assert not (ws.cwd / "exports").exists(), "nothing is exported"
