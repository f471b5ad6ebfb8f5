"""What a sweep's Tune results say: progress, the trial to export, the Pareto front, the trial table.

Everything here reads a ``tune.ResultGrid`` (and the search space); nothing runs trials.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.result import TRAINING_ITERATION

from hairseg_core.config import SearchSpace, TrainConfig, sampled_settings, trial_config
from hairseg_core.search.checkpoints import holds_checkpoint_file
from hairseg_core.search.pareto import Selection, SelectionError, TrialPoint, pareto_front, select
from hairseg_core.search.space import SpaceSampler
from hairseg_core.search.trial import LATENCY_MACHINE_KEY


@dataclass
class BestTrial:
    """What the final stage needs of the winning trial: ``train_config`` stays typed (the space's
    ``trial_config``); ``config`` is its plain dict, for the MLflow params and the printed summary."""

    trial_id: str
    train_config: TrainConfig
    metrics: dict[str, Any]
    checkpoint_path: str
    mlflow_run_id: str | None

    @property
    def config(self) -> dict[str, Any]:
        return self.train_config.model_dump()

    def to_dict(self) -> dict[str, Any]:
        """The plain record written as ``best_trial.json`` (``config`` as a dict; the same keys as ever)."""
        return {
            "trial_id": self.trial_id,
            "config": self.config,
            "metrics": dict(self.metrics),
            "checkpoint_path": self.checkpoint_path,
            "mlflow_run_id": self.mlflow_run_id,
        }


@dataclass(frozen=True)
class SweepProgress:
    """How many of a sweep's trials ended, and how.

    Tune's own counts cannot tell a stop signal from a finished sweep: on Ctrl-C it saves its
    state, then marks the trials that were still running TERMINATED while stopping their
    actors. A trial that really ended has ``done`` in its last result (its function returned
    or ASHA stopped it) or an error; anything else is unfinished, as are trials never started.
    """

    completed: int
    errored: int
    unfinished: int

    @property
    def ended(self) -> int:
        return self.completed + self.errored


def sweep_progress(results: tune.ResultGrid, num_samples: int) -> SweepProgress:
    """Count completed / errored / unfinished trials of a sweep of ``num_samples`` trials."""
    completed = errored = 0
    for result in results:
        if result.error is not None:
            errored += 1
        elif (result.metrics or {}).get("done") is True:
            completed += 1
    return SweepProgress(completed, errored, max(0, num_samples - completed - errored))


def best_trial(results: tune.ResultGrid, space: SearchSpace, pick: TrialPoint | None = None) -> BestTrial:
    """The trial to export, with its best checkpoint.

    ``pick`` (a point ``pareto.select`` chose) names the trial, and its checkpoint is the one of the
    pick's epoch where Tune kept it; without ``pick``, the best trial by the epoch objective (the first
    one that changes per epoch, see ``SearchSpace.epoch_objective``) over each trial's best epoch.
    """
    objective = space.epoch_objective
    if pick is None:
        best = results.get_best_result(metric=objective.metric, mode=objective.mode, scope="all")
    else:
        best = next((r for r in results if str((r.metrics or {}).get("trial_id")) == pick.trial_id), None)
    if best is None or best.metrics is None:
        which = f"trial {pick.trial_id} is not among the results" if pick else "the sweep produced no successful trial"
        raise RuntimeError(f"{which}: see the errors above")
    # A checkpoint Tune lists may be gone (see RestoreFromSurvivingCheckpoint): only files that exist.
    ckpts = [(c, m) for c, m in best.best_checkpoints if objective.metric in m and holds_checkpoint_file(c)]
    if not ckpts:
        raise RuntimeError(f"trial {best.metrics.get('trial_id')} kept no checkpoint")
    sign = 1 if objective.mode == "max" else -1
    at_epoch = [cm for cm in ckpts if pick is not None and cm[1].get(TRAINING_ITERATION) == pick.epoch]
    checkpoint, metrics = at_epoch[-1] if at_epoch else max(ckpts, key=lambda cm: sign * cm[1][objective.metric])
    return BestTrial(
        trial_id=str(best.metrics.get("trial_id")),
        train_config=space.trial_config(best.config),
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        checkpoint_path=checkpoint.path,
        mlflow_run_id=metrics.get("mlflow_run_id"),
    )


@dataclass
class SweepFront:
    """A finished sweep's trials in objective space, their Pareto front and the trial ``select:`` picked.

    ``selection`` is None when no trial satisfies the rule; ``error`` then says why (rule, closest trial).
    """

    points: list[TrialPoint]
    front: list[TrialPoint]
    selection: Selection | None
    error: str | None = None
    latency_note: str | None = None  # how latency_ms was measured, when the driver re-measured it


def sweep_front(results: tune.ResultGrid, space: SearchSpace) -> SweepFront:
    """Points, front and pick of a sweep (``hairseg_core.search.pareto`` does the work, on Tune's results).

    When latency is an objective, every trial's ``latency_ms`` is first replaced by the driver's own
    measurement after training (``search.deploy_latency``): quiet, interleaved, the export's form.
    """
    points = trial_points(results, space)
    note = None
    if any(o.metric == "latency_ms" for o in space.objectives):
        points, note = _with_deploy_latency(results, points, space)
    front = pareto_front(points, space.objectives)
    try:
        return SweepFront(points, front, select(points, space.objectives, space.select), latency_note=note)
    except SelectionError as exc:
        return SweepFront(points, front, None, str(exc), latency_note=note)


def _with_deploy_latency(
    results: tune.ResultGrid, points: list[TrialPoint], space: SearchSpace
) -> tuple[list[TrialPoint], str | None]:
    """The points with the driver's per-frame latency (the trial's own figure kept as ``latency_trial_ms``),
    and a line saying how it was measured (None when no trial reported anything)."""
    from hairseg_core.search.deploy_latency import measure_deploy_latency  # deferred: torch, onnxruntime

    configs = {
        point.trial_id: trial_config(space.fixed, result.config or {})
        for result, point in zip(results, points, strict=True)
        if point.values
    }
    measured = measure_deploy_latency(configs, space.finalize)
    if not measured:
        return points, None
    updated = []
    for point in points:
        latency = measured.get(point.trial_id)
        if latency is not None:
            values = dict(point.values)
            if "latency_ms" in values:
                values["latency_trial_ms"] = values["latency_ms"]
            values["latency_ms"], values["latency_p90_ms"] = latency.latency_ms, latency.latency_p90_ms
            point = replace(point, values=values)
        updated.append(point)
    first = next(iter(measured.values()))
    return updated, (
        f"latency_ms: ms per 640x480 frame as the webcam app runs the export ({first.form}, letterbox "
        f"{first.input_size} px, one ONNX Runtime thread), median of {space.finalize.latency_repeats} rounds "
        f"measured by the driver after every trial ended, architectures interleaved; latency_trial_ms: each "
        f"trial's own figure, taken while other trials trained"
    )


#: Shown beside the objectives in the front table when a trial reported them.
FRONT_EXTRA_METRICS = ("val_miou", "latency_ms", "latency_p90_ms", "latency_trial_ms", "params_m", "gmacs")


def trial_points(results: tune.ResultGrid, space: SearchSpace) -> list[TrialPoint]:
    """Each trial as a point in objective space: the metrics of its best epoch by the epoch objective.

    That epoch is the one whose checkpoint the trial keeps and an export would use (ties: the latest,
    which Tune keeps), so a point is a model that exists. Latency, params and MACs are the same in
    every epoch. A trial that reported nothing gets a point without values (listed, not comparable).
    """
    objective = space.epoch_objective
    wanted = list(dict.fromkeys([*(o.metric for o in space.objectives), *FRONT_EXTRA_METRICS]))
    points = []
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id is None and result.path:
            trial_id = Path(result.path).name.removeprefix("trial_")
        info = {k: v for k, v in sampled_settings(result.config or {}).items() if isinstance(v, (int, float, str))}
        frame = result.metrics_dataframe
        if frame is None or objective.metric not in frame or frame[objective.metric].dropna().empty:
            points.append(TrialPoint(str(trial_id), {}, None, info))
            continue
        rows = frame[frame[objective.metric].notna()]
        column = rows[objective.metric].astype(float)
        target = column.max() if objective.mode == "max" else column.min()
        row = rows[column == target].iloc[-1]
        values = {}
        for metric in wanted:
            try:
                number = float(row.get(metric))
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                values[metric] = number
        points.append(TrialPoint(str(trial_id), values, int(row[TRAINING_ITERATION]), info))
    return points


def latency_machines(results: tune.ResultGrid) -> list[str]:
    """The machines the trials' latencies were measured on (one line each, see ``latency.describe_machine``)."""
    seen: dict[str, None] = {}
    for result in results:
        frame = result.metrics_dataframe
        if frame is not None and LATENCY_MACHINE_KEY in frame:
            seen.update(dict.fromkeys(str(v) for v in frame[LATENCY_MACHINE_KEY].dropna().unique()))
    return list(seen)


def optuna_study_from_results(results: tune.ResultGrid, space: SearchSpace) -> optuna.Study:
    """Rebuild an in-memory Optuna study from Tune's results (works after a resume too)."""
    sampler = SpaceSampler(space.params)
    study = optuna.create_study(direction="maximize" if space.mode == "max" else "minimize")
    for result in results:
        if result.error is not None or not result.metrics or result.metrics_dataframe is None:
            continue
        frame = result.metrics_dataframe
        if space.metric not in frame:
            continue
        values = frame[space.metric].dropna()
        if values.empty:
            continue
        best_value = float(values.max() if space.mode == "max" else values.min())
        dists = sampler.distributions(result.config)
        params = {k: result.config[k] for k in dists}
        intermediate = {
            int(i): float(v)
            for i, v in zip(frame["training_iteration"], frame[space.metric], strict=False)
            if not math.isnan(v)
        }
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=dists, value=best_value, intermediate_values=intermediate
            )
        )
    return study


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_summary(error: BaseException) -> str:
    """The line of a trial's error that says what went wrong (Ray's first line only names the actor)."""
    lines = [_ANSI.sub("", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line]
    return (lines[-1] if lines else type(error).__name__)[:200]


def results_rows(results: tune.ResultGrid, space: SearchSpace) -> list[dict[str, Any]]:
    """One row per trial, best first: its sampled settings, epochs run, and final/best metrics."""
    rows = []
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id is None and result.path:  # an errored trial reported nothing: its folder names it
            trial_id = Path(result.path).name.removeprefix("trial_")
        row: dict[str, Any] = {"trial_id": trial_id}
        row.update(sampled_settings(result.config or {}))
        frame = result.metrics_dataframe
        if frame is not None and space.metric in frame:
            values = frame[space.metric].dropna()
            row[f"best_{space.metric}"] = float(values.max() if space.mode == "max" else values.min())
            row["epochs_run"] = int(frame["training_iteration"].max())
        keys = ["val_miou", "val_fwiou", "val_acc", "val_acc_class", "val_boundary_f", "val_loss"]
        keys += sorted(k for k in (result.metrics or {}) if k.startswith("val_") and k.endswith("_miou"))
        for key in dict.fromkeys(keys):  # a source's mIoU per validation set, after the combined ones
            if result.metrics and key in result.metrics:
                row[f"last_{key}"] = result.metrics[key]
        for key in ("latency_ms", "latency_p90_ms", "gmacs"):  # measured once per trial: no best / last
            if result.metrics and key in result.metrics:
                row[key] = result.metrics[key]
        row["error"] = error_summary(result.error) if result.error else ""
        rows.append(row)
    key = f"best_{space.metric}"
    sign = -1 if space.mode == "max" else 1
    rows.sort(key=lambda r: sign * r[key] if key in r else math.inf)
    return rows
