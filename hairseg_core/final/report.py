"""A reproduction report per sweep: one self-contained HTML file built from what MLflow holds.

Why from MLflow and not from the sweep's memory: the same function then rebuilds the report of
any old sweep (``python pipelines/finalize.py --report-only --run-id <parent run id>``), on any
machine that reaches the tracking store, and what the report shows is exactly what is recorded.

Sections (each an ``<section id=...>``, so a browser test can find them): search space and
machine, trial table, learning curves with ASHA's stops, Optuna parameter importances and a
parallel-coordinates plot, Table 5 with bootstrap intervals and example panels, the Pareto front
(multi-objective sweeps only), the promotion decision, and the paper's Tables 1–6 beside the
sweep's matching numbers. Figures are matplotlib PNGs embedded as base64: the file opens offline.

Reading (``collect_sweep``) and drawing (``render_report``) are separate so the drawing can be
tested on constructed records without a sweep.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hairseg_core.final import paper_tables as paper
from hairseg_core.track.retry import with_retries
from hairseg_core.track.runs import Tracker
from hairseg_core.track.tags import (
    TAG_BEST_RUN_ID,
    TAG_CPU,
    TAG_CPU_COUNT,
    TAG_EARLY_STOPPED,
    TAG_ERROR,
    TAG_GIT_DIRTY,
    TAG_GPU,
    TAG_HOST,
    TAG_KIND,
    TAG_MLFLOW,
    TAG_MODEL_VERSION,
    TAG_OPTUNA,
    TAG_PLATFORM,
    TAG_PROMOTION_IMAGES,
    TAG_PYTHON,
    TAG_RAY,
    TAG_SOURCE_GIT_COMMIT,
    TAG_SWEEP,
    TAG_TORCH,
    TAG_TRIAL,
)

REPORT_FILE = "report.html"
SECTIONS = {
    "space": "Search space",
    "machine": "Machine and versions",
    "trials": "Trials",
    "curves": "Learning curves",
    "importance": "Parameter importances",
    "parallel": "Parallel coordinates",
    "table5": "Post-processing (Table 5) with intervals",
    "examples": "Example predictions",
    "pareto": "Pareto front",
    "promotion": "Promotion decision",
    "paper": "vs the paper",
}
#: Artifacts of the parent run that a multi-objective sweep leaves (the first one found is shown).
PARETO_ARTIFACTS = ("pareto/front.json", "pareto_front.json", "pareto.json")


# ----------------------------------------------------------------------------- the record
@dataclass
class TrialRecord:
    """One trial as its MLflow child run recorded it."""

    trial_id: str
    run_id: str
    status: str
    params: dict[str, Any]
    curve: list[tuple[int, float]]  # (epoch, space metric), one value per epoch
    val_miou: list[tuple[int, float]]
    early_stopped: bool
    error: str = ""

    @property
    def epochs_run(self) -> int:
        return max((step for step, _ in self.curve), default=0)

    def best(self, mode: str) -> float | None:
        values = [v for _, v in self.curve if math.isfinite(v)]
        if not values:
            return None
        return max(values) if mode == "max" else min(values)

    def best_val_miou(self) -> float | None:
        values = [v for _, v in self.val_miou if math.isfinite(v)]
        return max(values) if values else None


@dataclass
class SweepRecord:
    """Everything the report shows, as read back from the sweep's runs."""

    sweep: str
    parent_run_id: str
    experiment: str
    space: dict[str, Any]
    space_yaml: str
    machine: dict[str, str]
    trials: list[TrialRecord]
    train_settings: dict[str, str] = field(default_factory=dict)  # the best trial's full config (params)
    table5: list[dict[str, Any]] = field(default_factory=list)
    examples: list[bytes] = field(default_factory=list)  # PNG bytes
    decision: dict[str, Any] | None = None
    finalize_run_id: str | None = None
    model_version: str | None = None
    test_images: int | None = None
    pareto: Any = None
    pareto_source: str | None = None
    pareto_png: bytes | None = None

    @property
    def metric(self) -> str:
        return str(self.space.get("metric", "val_miou"))

    @property
    def mode(self) -> str:
        return str(self.space.get("mode", "max"))

    @property
    def max_epochs(self) -> int:
        scheduler = self.space.get("scheduler") or {}
        return int(scheduler.get("max_t") or (self.space.get("fixed") or {}).get("epochs") or self.epochs_default())

    def epochs_default(self) -> int:
        return int(self.train_settings.get("epochs", 0) or max((t.epochs_run for t in self.trials), default=0))

    def completed(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.status == "FINISHED" and t.best(self.mode) is not None]


# ----------------------------------------------------------------------------- reading MLflow
def _artifact_paths(tracker: Tracker, run_id: str, path: str | None = None) -> list[str]:
    items = with_retries(lambda: tracker.client.list_artifacts(run_id, path), "list artifacts")
    out: list[str] = []
    for item in items:
        out += _artifact_paths(tracker, run_id, item.path) if item.is_dir else [item.path]
    return out


def _download(tracker: Tracker, run_id: str, path: str, tmp: str) -> Path:
    return Path(with_retries(lambda: tracker.client.download_artifacts(run_id, path, tmp), "download artifact"))


def _history(tracker: Tracker, run_id: str, key: str) -> list[tuple[int, float]]:
    """(epoch, value) with the last value logged per epoch, in epoch order."""
    metrics = with_retries(lambda: tracker.client.get_metric_history(run_id, key), "read metric history")
    by_step: dict[int, float] = {}
    for m in sorted(metrics, key=lambda m: (m.timestamp, m.step)):
        by_step[int(m.step)] = float(m.value)
    return sorted(by_step.items())


def _parse_value(raw: str, spec: Mapping[str, Any] | None) -> Any:
    """A sampled value back from its MLflow param string, typed by its search-space entry."""
    kind = (spec or {}).get("type")
    if kind == "float":
        return float(raw)
    if kind == "int":
        return int(float(raw))
    choices = (spec or {}).get("choices")
    if isinstance(choices, dict):
        choices = [c for values in choices.values() for c in values]
    for choice in choices or []:
        if str(choice) == raw:
            return choice
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _table_artifact(path: Path) -> list[dict[str, Any]]:
    """Rows of an ``MlflowClient.log_table`` JSON file (``{"columns": [...], "data": [[...]]}``)."""
    payload = json.loads(path.read_text())
    if isinstance(payload, list):
        return payload
    return [dict(zip(payload["columns"], row, strict=True)) for row in payload["data"]]


def machine_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """What the parent run records about the driver's machine and software (``environment_tags``)."""
    names = {
        TAG_CPU: "CPU",
        TAG_CPU_COUNT: "logical cores",
        TAG_GPU: "GPU",
        TAG_HOST: "host",
        TAG_PLATFORM: "platform",
        TAG_PYTHON: "python",
        TAG_TORCH: "torch",
        TAG_RAY: "ray",
        TAG_MLFLOW: "mlflow",
        TAG_OPTUNA: "optuna",
        TAG_SOURCE_GIT_COMMIT: "git commit",
        TAG_GIT_DIRTY: "uncommitted changes",
    }
    return {label: tags[key] for key, label in names.items() if key in tags}


def _finalize_run(tracker: Tracker, experiment_id: str, sweep: str) -> Any | None:
    """The sweep's newest final-stage run that changed the registry (else its newest dry run)."""
    runs = with_retries(
        lambda: tracker.client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_KIND}` = 'finalize'",
            order_by=["attributes.start_time DESC"],
            max_results=20,
        ),
        "search finalize runs",
    )
    real = [r for r in runs if TAG_MODEL_VERSION in r.data.tags]
    return (real or runs or [None])[0]


def collect_sweep(tracker: Tracker, parent_run_id: str) -> SweepRecord:
    """Read the sweep's parent run, trial runs and final-stage run into a :class:`SweepRecord`."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # dozens of small files: bars are noise
    parent = with_retries(lambda: tracker.client.get_run(parent_run_id), "get parent run")
    sweep = parent.data.tags.get(TAG_SWEEP, parent.info.run_name)
    experiment = with_retries(lambda: tracker.client.get_experiment(parent.info.experiment_id), "get experiment").name
    with tempfile.TemporaryDirectory(prefix="hairseg-report-") as tmp:
        artifacts = _artifact_paths(tracker, parent_run_id)
        space = json.loads(_download(tracker, parent_run_id, "search_space.json", tmp).read_text())
        yaml_files = [p for p in artifacts if "/" not in p and p.endswith((".yaml", ".yml"))]
        if yaml_files:
            space_yaml = _download(tracker, parent_run_id, yaml_files[0], tmp).read_text()
        else:  # a sweep started from a dict: the validated space is all there is
            space_yaml = yaml.safe_dump(space, sort_keys=False)
        pareto, pareto_source = None, None
        for candidate in PARETO_ARTIFACTS:
            if candidate in artifacts:
                pareto = json.loads(_download(tracker, parent_run_id, candidate, tmp).read_text())
                pareto_source = candidate
                break
        pareto_png = None
        if "pareto/front.png" in artifacts:
            pareto_png = _download(tracker, parent_run_id, "pareto/front.png", tmp).read_bytes()
        specs = space.get("params") or {}
        metric = str(space.get("metric", "val_miou"))
        trials = []
        for run in tracker.trial_runs(sweep, parent_run_id):
            params = {
                key.removeprefix("sampled."): _parse_value(value, specs.get(key.removeprefix("sampled.")))
                for key, value in run.data.params.items()
                if key.startswith("sampled.")
            }
            curve = _history(tracker, run.info.run_id, metric)
            miou = curve if metric == "val_miou" else _history(tracker, run.info.run_id, "val_miou")
            trials.append(
                TrialRecord(
                    trial_id=run.data.tags.get(TAG_TRIAL, run.info.run_name),
                    run_id=run.info.run_id,
                    status=run.info.status,
                    params=params,
                    curve=curve,
                    val_miou=miou,
                    early_stopped=run.data.tags.get(TAG_EARLY_STOPPED) == "True",
                    error=run.data.tags.get(TAG_ERROR, ""),
                )
            )
        best_run_id = parent.data.tags.get(TAG_BEST_RUN_ID)
        best_run = next((t for t in trials if t.run_id == best_run_id), None)
        train_settings = {}
        if best_run is not None:
            train_settings = dict(with_retries(lambda: tracker.client.get_run(best_run.run_id), "get run").data.params)
        record = SweepRecord(
            sweep=sweep,
            parent_run_id=parent_run_id,
            experiment=experiment,
            space=space,
            space_yaml=space_yaml,
            machine=machine_tags(parent.data.tags),
            trials=trials,
            train_settings=train_settings,
            pareto=pareto,
            pareto_source=pareto_source,
            pareto_png=pareto_png,
        )
        final = _finalize_run(tracker, parent.info.experiment_id, sweep)
        if final is not None:
            run_id = final.info.run_id
            final_artifacts = _artifact_paths(tracker, run_id, "table5")
            record.finalize_run_id = run_id
            record.model_version = final.data.tags.get(TAG_MODEL_VERSION)
            if "table5/postprocessing.json" in final_artifacts:
                record.table5 = _table_artifact(_download(tracker, run_id, "table5/postprocessing.json", tmp))
            examples = sorted(p for p in final_artifacts if p.rsplit("/", 1)[-1].startswith("examples_"))
            record.examples = [_download(tracker, run_id, p, tmp).read_bytes() for p in examples]
            if "finalize.json" in {p for p in _artifact_paths(tracker, run_id) if "/" not in p}:
                record.decision = json.loads(_download(tracker, run_id, "finalize.json", tmp).read_text())["decision"]
            images = final.data.tags.get(TAG_PROMOTION_IMAGES)
            record.test_images = int(images) if images else None
    return record


# ----------------------------------------------------------------------------- figures
def _plt() -> Any:
    import matplotlib  # deferred: matplotlib only when drawing the report's figures

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after choosing the Agg backend

    return plt


def _png(fig: Any) -> str:
    """A matplotlib figure as an ``<img>`` with a base64 PNG (no file, no network)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return _img(buf.getvalue(), "figure")


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def learning_curves_figure(record: SweepRecord) -> Any:
    """Every trial's metric per epoch; an ASHA-stopped trial's last point is a red ×."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    cmap = plt.get_cmap("tab10" if len(record.trials) <= 10 else "tab20")
    for i, trial in enumerate(record.trials):
        if not trial.curve:
            continue
        steps, values = zip(*trial.curve, strict=True)
        color = cmap(i % cmap.N)
        ax.plot(steps, values, "-o", color=color, ms=3, lw=1.4, label=f"{trial.trial_id}")
        if trial.early_stopped or (trial.status == "FINISHED" and trial.epochs_run < record.max_epochs):
            ax.plot(steps[-1], values[-1], "x", color="red", ms=11, mew=2.5)
    ax.plot([], [], "x", color="red", ms=9, mew=2.5, label="stopped by ASHA")
    ax.set_xlabel("epoch")
    ax.set_ylabel(record.metric)
    ax.set_xlim(0.8, max(record.max_epochs, 1) + 0.2)
    ax.set_title(f"{record.metric} per epoch ({len(record.trials)} trials, max {record.max_epochs} epochs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=2, loc="best")
    return fig


def parallel_coordinates_figure(record: SweepRecord) -> Any | None:
    """One vertical axis per searched parameter plus the metric; one line per completed trial.

    Numbers are scaled to their range (log10 for log-scale parameters); categories sit at evenly
    spaced positions. A parameter a trial did not sample (conditional) leaves a gap in its line.
    """
    trials = record.completed()
    specs = record.space.get("params") or {}
    names = [n for n in specs if any(n in t.params for t in trials)]
    if not trials or not names:
        return None
    plt = _plt()
    columns: list[tuple[str, list[float], list[tuple[float, str]]]] = []
    for name in names:
        spec = specs[name]
        values = [t.params.get(name) for t in trials]
        if spec.get("type") in {"float", "int"}:
            nums = [math.log10(v) if spec.get("log") and v else v for v in values if v is not None]
            lo, hi = (min(nums), max(nums)) if nums else (0.0, 1.0)
            span = hi - lo or 1.0
            scaled = [np.nan if v is None else ((math.log10(v) if spec.get("log") else v) - lo) / span for v in values]
            ticks = [
                (0.0, f"{(10**lo if spec.get('log') else lo):.3g}"),
                (1.0, f"{(10**hi if spec.get('log') else hi):.3g}"),
            ]
        else:
            seen = sorted({str(v) for v in values if v is not None})
            pos = {c: (i / (len(seen) - 1) if len(seen) > 1 else 0.5) for i, c in enumerate(seen)}
            scaled = [np.nan if v is None else pos[str(v)] for v in values]
            ticks = [(p, c) for c, p in pos.items()]
        columns.append((name, scaled, ticks))
    scores = [t.best(record.mode) for t in trials]
    lo, hi = min(scores), max(scores)
    columns.append(
        (f"best {record.metric}", [(s - lo) / ((hi - lo) or 1.0) for s in scores], [(0, f"{lo:.4f}"), (1, f"{hi:.4f}")])
    )
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(columns)), 4.2))
    cmap = plt.get_cmap("viridis" if record.mode == "max" else "viridis_r")
    xs = np.arange(len(columns))
    for j in range(len(trials)):
        ys = np.array([col[1][j] for col in columns], dtype=float)
        color = cmap((scores[j] - lo) / ((hi - lo) or 1.0))
        ax.plot(xs, ys, "-o", color=color, lw=1.6, ms=4, alpha=0.85)
    for x, (_, _, ticks) in zip(xs, columns, strict=True):
        ax.axvline(x, color="black", lw=0.8)
        for y, label in ticks:
            ax.text(x + 0.03, y, label, fontsize=7, va="center")
    ax.set_xticks(xs, [c[0] for c in columns], rotation=20, fontsize=8)
    ax.set_yticks([])
    ax.set_ylim(-0.08, 1.08)
    ax.set_title(f"parallel coordinates: {len(trials)} completed trials, colour = best {record.metric}")
    return fig


def importance_figure(importances: Mapping[str, float]) -> Any:
    plt = _plt()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(names)))
    ax.barh(names, [importances[n] for n in names], color="#4c72b0")
    ax.set_xlabel("fANOVA importance (share of the metric's variance)")
    ax.set_xlim(0, 1)
    fig.tight_layout()
    return fig


def intervals_figure(rows: Sequence[Mapping[str, Any]], decision: Mapping[str, Any] | None) -> Any | None:
    """Table 5's mIoU per variant with its bootstrap interval (and the promotion interval, if any)."""
    rows = [r for r in rows if r.get("miou_lo") is not None]
    boot = (decision or {}).get("bootstrap")
    if not rows and not boot:
        return None
    plt = _plt()
    panels = bool(rows) + bool(boot)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 3.2), squeeze=False)
    if rows:
        ax = axes[0][0]
        ys = np.arange(len(rows))[::-1]
        mid = np.array([r["miou"] for r in rows])
        err = np.array([[r["miou"] - r["miou_lo"] for r in rows], [r["miou_hi"] - r["miou"] for r in rows]])
        ax.errorbar(mid, ys, xerr=np.clip(err, 0, None), fmt="o", capsize=5, color="#4c72b0")
        ax.set_yticks(ys, [str(r["method"]) for r in rows])
        ax.set_xlabel("test mIoU with bootstrap interval")
        ax.grid(alpha=0.3, axis="x")
    if boot:
        ax = axes[0][-1]
        ax.errorbar(
            [boot["diff"]], [0], xerr=[[boot["diff"] - boot["lo"]], [boot["hi"] - boot["diff"]]], fmt="o", capsize=6
        )
        ax.axvline(float((decision or {}).get("margin", 0.0)), color="red", ls="--", label="promote_margin")
        ax.set_yticks([])
        ax.set_xlabel(f"{boot['metric']}: new - champion ({boot['confidence']:.0%} CI)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def pareto_figure(points: Sequence[Mapping[str, Any]], objectives: Sequence[str]) -> Any | None:
    numeric = [p for p in points if all(isinstance(p.get(o), (int, float)) for o in objectives[:2])]
    if len(objectives) < 2 or not numeric:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([p[objectives[0]] for p in numeric], [p[objectives[1]] for p in numeric], "o-", color="#dd8452")
    ax.set_xlabel(objectives[0])
    ax.set_ylabel(objectives[1])
    ax.grid(alpha=0.3)
    ax.set_title("Pareto front")
    return fig


# ----------------------------------------------------------------------------- optuna importances
def parameter_importances(record: SweepRecord) -> tuple[dict[str, float] | None, str]:
    """fANOVA importances of the searched parameters, or None with the reason they cannot be computed."""
    import optuna  # deferred: Optuna only for the importances section

    trials = record.completed()
    if len(trials) < 2:
        return None, f"cannot be computed: {len(trials)} completed trial(s); importances need at least 2"
    specs = record.space.get("params") or {}
    study = optuna.create_study(direction="maximize" if record.mode == "max" else "minimize")
    for trial in trials:
        dists = {}
        for name, value in trial.params.items():
            spec = specs.get(name)
            if spec is None:
                continue
            dists[name] = _distribution(spec, value)
        study.add_trial(
            optuna.trial.create_trial(
                params={k: trial.params[k] for k in dists}, distributions=dists, value=trial.best(record.mode)
            )
        )
    varying = [n for n in specs if len({str(t.params.get(n)) for t in trials if n in t.params}) > 1]
    if not varying:
        return None, "cannot be computed: every completed trial has the same parameter values"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as exc:
        return None, f"cannot be computed: {exc}"
    if not importances:
        return None, "cannot be computed: no parameter was sampled in every completed trial"
    return dict(importances), (
        f"fANOVA (optuna.importance, seed 0) over {len(trials)} completed trials, each scored by its best "
        f"{record.metric}; parameters sampled in only some trials (conditional ones) are left out"
    )


def _distribution(spec: Mapping[str, Any], value: Any) -> Any:
    import optuna  # deferred: Optuna only for the importances section

    kind = spec.get("type")
    if kind == "float":
        return optuna.distributions.FloatDistribution(spec["low"], spec["high"], log=bool(spec.get("log")))
    if kind == "int":
        return optuna.distributions.IntDistribution(int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
    choices = spec.get("choices") or [value]
    if isinstance(choices, dict):  # backbone-dependent choices: every value any backbone allows
        choices = list(dict.fromkeys(c for values in choices.values() for c in values))
    if value not in choices:
        choices = [*choices, value]
    return optuna.distributions.CategoricalDistribution(choices)


# ----------------------------------------------------------------------------- HTML
def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        return "" if math.isnan(value) else (f"{value:.4f}" if abs(value) < 1e4 else f"{value:.3g}")
    return str(value)


def html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, css: str = "") -> str:
    if not rows:
        return "<p>(no rows)</p>"
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _pct(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"


def _trial_rows(record: SweepRecord) -> list[dict[str, Any]]:
    names = list(dict.fromkeys(k for t in record.trials for k in t.params))
    rows = []
    for t in record.trials:
        row: dict[str, Any] = {
            "trial": t.trial_id,
            "status": t.status,
            f"best {record.metric}": t.best(record.mode),
            "epochs run": t.epochs_run,
            "stopped by ASHA": "yes" if t.early_stopped else "",
        }
        row.update({n: t.params.get(n, "") for n in names})
        if any(x.error for x in record.trials):
            row["error"] = t.error[:120]
        rows.append(row)
    sign = -1 if record.mode == "max" else 1
    rows.sort(key=lambda r: sign * r[f"best {record.metric}"] if r[f"best {record.metric}"] is not None else math.inf)
    return rows


def _trial_setting(record: SweepRecord, trial: TrialRecord, name: str) -> Any:
    """A trial's value of ``name``: sampled, else fixed in the space, else the best trial's logged config."""
    if name in trial.params:
        return trial.params[name]
    fixed = record.space.get("fixed") or {}
    if name in fixed:
        return fixed[name]
    return record.train_settings.get(name)


def _grouped(record: SweepRecord, label_of: Any) -> dict[str, list[TrialRecord]]:
    groups: dict[str, list[TrialRecord]] = {}
    for trial in record.completed():
        label = label_of(trial)
        if label is not None:
            groups.setdefault(label, []).append(trial)
    return groups


def _comparison_table(
    title: str,
    paper_rows: Mapping[str, Mapping[str, float]],
    groups: dict[str, list[TrialRecord]],
    factor: str,
    extra_note: str = "",
) -> str:
    """The paper's val mIoU per column beside the best val mIoU of this sweep's trials in that column."""
    rows = []
    for column, values in paper_rows.items():
        trials = groups.get(column, [])
        best = max((t.best_val_miou() or -1.0 for t in trials), default=None) if trials else None
        rows.append(
            {
                factor: column,
                "paper mIoU": _pct(values.get("miou")),
                "this sweep: best val mIoU": _pct(best) if trials else "not run",
                "trials": len(trials),
                "their epochs": ", ".join(str(t.epochs_run) for t in trials),
            }
        )
    others = {k: v for k, v in groups.items() if k not in paper_rows}
    for column, trials in others.items():
        rows.append(
            {
                factor: f"{column} (not in the paper)",
                "paper mIoU": "—",
                "this sweep: best val mIoU": _pct(max(t.best_val_miou() or -1.0 for t in trials)),
                "trials": len(trials),
                "their epochs": ", ".join(str(t.epochs_run) for t in trials),
            }
        )
    covered = len(groups) > 1
    verdict = (
        f"<p>The sweep varied this factor ({len(groups)} settings among completed trials).</p>"
        if covered
        else "<p><b>Not varied in this sweep</b> (completed trials all used: "
        f"{html.escape(', '.join(groups) or 'none')}); the sweep's figure is shown for reference only.</p>"
    )
    return f"<h3>{html.escape(title)}</h3>{verdict}{html_table(rows)}<p class='note'>{html.escape(extra_note)}</p>"


def _setting(record: SweepRecord, name: str) -> Any:
    """A sweep-wide setting: fixed in the space, else the train settings, else ``?``."""
    fixed = record.space.get("fixed") or {}
    return fixed.get(name, record.train_settings.get(name, "?"))


def _by_method(record: SweepRecord) -> dict[Any, Mapping[str, Any]]:
    """The final stage's Table 5 rows by variant (``method``); a repeated variant keeps its last row."""
    return {r.get("method"): r for r in record.table5}


def _paper_section(record: SweepRecord) -> str:
    """The paper's Tables 1–6 beside this sweep's matching numbers, after saying how the conditions differ."""
    parts = [_conditions_note(record)]
    parts.extend(_factor_tables(record))
    parts.append(_table5_vs_paper(record))
    parts.append(_table6_vs_paper(record))
    return "".join(parts)


def _conditions_note(record: SweepRecord) -> str:
    """Why the paper's absolute numbers are not this sweep's: data set, resolution, budget and search differ."""

    def setting(name: str) -> str:
        return html.escape(str(_setting(record, name)))

    searched = sorted((record.space.get("params") or {}).keys())
    return (
        f"<p><b>Conditions differ.</b> Paper: {html.escape(paper.PAPER_CONDITIONS)}. This sweep: dataset "
        f"<code>{setting('dataset')}</code>, crop {setting('crop_size')} / base "
        f"{setting('base_size')} px, backbone {setting('backbone')} "
        f"(pretrained: {setting('pretrained')}), up to {record.max_epochs} epochs of at most "
        f"{setting('max_steps_per_epoch')} steps at batch {setting('batch_size')}, "
        f"{len(record.trials)} trials with ASHA (searched: {html.escape(', '.join(searched) or 'nothing')}). "
        "The paper reports the best validation mIoU of one full run per setting; the sweep's figure is the best "
        "validation mIoU among its trials with that setting, and ASHA-stopped trials trained fewer epochs. Absolute "
        "values are therefore not comparable unless data set, resolution and budget match; the direction of an effect "
        "is what can be compared.</p>"
    )


def _factor_tables(record: SweepRecord) -> list[str]:
    """Tables 1–4 (backbone, augmentation, mixup, loss): the paper's val mIoU per setting beside the sweep's best."""

    def of(trial: TrialRecord, name: str) -> Any:
        return _trial_setting(record, trial, name)

    return [
        _comparison_table(
            "Table 1: backbones (paper: val, 20 epochs, frozen backbone)",
            paper.TABLE1_BACKBONES,
            _grouped(record, lambda t: paper.BACKBONE_TO_PAPER.get(str(of(t, "backbone")), None)),
            "backbone",
        ),
        _comparison_table(
            "Table 2: random scale crop (RSC) and Gaussian blur (GB)",
            paper.TABLE2_AUGMENTATION,
            _grouped(record, lambda t: paper.augmentation_label(of(t, "rsc"), of(t, "blur"))),
            "augmentation",
        ),
        _comparison_table(
            "Table 3: mixup α",
            paper.TABLE3_MIXUP,
            _grouped(record, lambda t: paper.mixup_label(of(t, "mixup"), of(t, "mixup_alpha"))),
            "mixup",
            "The paper also reports that mixup lowers the validation loss (0.03064 → 0.02792 / 0.02855).",
        ),
        _comparison_table(
            "Table 4: loss function",
            paper.TABLE4_LOSS,
            _grouped(record, lambda t: paper.loss_label(of(t, "loss"), of(t, "gc_weight"), of(t, "lovasz_weight"))),
            "loss",
        ),
    ]


def _table5_vs_paper(record: SweepRecord) -> str:
    """Table 5: same metric (test mIoU, Acc), same variants: the one table measured the paper's way."""
    rows = []
    by_method = _by_method(record)
    for variant, column in paper.VARIANT_TO_PAPER.items():
        ours = by_method.get(variant)
        interval = ""
        if ours and ours.get("miou_lo") is not None:
            interval = f"[{_pct(ours['miou_lo'])}, {_pct(ours['miou_hi'])}]"
        rows.append(
            {
                "variant": column,
                "paper mIoU": _pct(paper.TABLE5_POSTPROCESSING[column]["miou"]),
                "this sweep mIoU": _pct(ours["miou"]) if ours else "not run",
                "interval": interval,
                "paper Acc": _pct(paper.TABLE5_POSTPROCESSING[column]["acc"]),
                "this sweep Acc": _pct(ours["acc"]) if ours else "not run",
            }
        )
    images = f"{record.test_images} test images" if record.test_images else "the sweep's test images"
    return (
        "<h3>Table 5: CRF and matting (test set)</h3>"
        f"<p>Both are test-set figures of one model, post-processed four ways; the sweep's are on {images} of "
        f"<code>{html.escape(str(_setting(record, 'dataset')))}</code>, the paper's on 927 LFW test images.</p>"
        + html_table(rows)
    )


def _table6_vs_paper(record: SweepRecord) -> str:
    """Table 6: data sets. The sweep's data set is another one; its baseline test row is shown beside."""
    base = _by_method(record).get("baseline")
    rows6 = []
    for dataset, splits in paper.TABLE6_DATASETS.items():
        rows6.append(
            {"data set": f"{dataset} (paper)", **{k: _pct(v) for k, v in splits["test"].items() if k != "loss"}}
        )
    if base:
        rows6.append(
            {
                "data set": f"{_setting(record, 'dataset')} (this sweep)",
                **{k: _pct(base.get(k)) for k in ("acc", "acc_class", "fwiou", "miou")},
            }
        )
    return (
        "<h3>Table 6: data sets (test split)</h3><p>The sweep trained on a different data set from all three of the "
        "paper's, so this row is context, not a reproduction.</p>" + html_table(rows6)
    )


def _objective_names(record: SweepRecord) -> list[str]:
    """The sweep's objectives: from its Pareto artifact, else its space (``objectives`` or ``metric``)."""
    if isinstance(record.pareto, dict) and record.pareto.get("objectives"):
        return [str(o) for o in record.pareto["objectives"]]
    listed = record.space.get("objectives") or []
    names = [str(o.get("metric")) if isinstance(o, dict) else str(o) for o in listed]
    return names or [record.metric]


def _pareto_section(record: SweepRecord) -> str:
    """The front when the sweep optimised several objectives; otherwise says it had one."""
    objectives = _objective_names(record)
    if len(objectives) < 2:
        return f"<p>single objective: {html.escape(objectives[0])} ({html.escape(record.mode)}); no Pareto front.</p>"
    if record.pareto is None:
        return (
            f"<p>Several objectives ({html.escape(', '.join(objectives))}) but the parent run holds no Pareto front "
            f"artifact ({html.escape(', '.join(PARETO_ARTIFACTS))}).</p>"
        )
    data = record.pareto
    parts = [
        f"<p>Objectives: {html.escape(', '.join(objectives))}; from the parent run's "
        f"<code>{html.escape(str(record.pareto_source))}</code>.</p>"
    ]
    if isinstance(data, dict):
        if data.get("picked") is not None or data.get("reason"):
            parts.append(
                f"<p>Picked for export: trial <b>{html.escape(str(data.get('picked')))}</b>: "
                f"{html.escape(str(data.get('reason') or ''))}</p>"
            )
        points = data.get("front") or data.get("points") or []
    else:
        points = data
    if record.pareto_png:
        parts.append(_img(record.pareto_png, "Pareto front"))
    elif isinstance(points, list) and points and all(isinstance(p, dict) for p in points):
        fig = pareto_figure(points, objectives)
        if fig is not None:
            parts.append(_png(fig))
    if isinstance(points, list) and points and all(isinstance(p, dict) for p in points):
        parts.append("<p>Trials on the front:</p>" + html_table(points))
    elif not isinstance(data, dict):
        parts.append(f"<pre>{html.escape(json.dumps(data, indent=2)[:20000])}</pre>")
    return "".join(parts)


def _promotion_section(record: SweepRecord) -> str:
    d = record.decision
    if d is None:
        return "<p>No final stage has run for this sweep (it ran with --no-finalize, or failed before deciding).</p>"
    verdict = "promoted to @champion" if d.get("promote") else "not promoted (champion kept)"
    if d.get("dry_run"):
        verdict = f"dry run: would be {verdict}"
    rows = [
        {"": "decision", "value": verdict},
        {"": "model version", "value": record.model_version or "(not registered)"},
        {"": "reason", "value": d.get("reason", "")},
        {"": "new model test score", "value": d.get("new_score")},
        {"": "champion (re-evaluated now, same images)", "value": d.get("champion_score")},
        {"": "champion version", "value": d.get("champion_version") or "none"},
        {"": "promote_margin", "value": d.get("margin")},
    ]
    boot = d.get("bootstrap")
    if boot:
        rows += [
            {"": "difference (all images)", "value": f"{boot['diff']:+.4f}"},
            {"": "mean over resamples", "value": f"{boot['diff_mean']:+.4f}"},
            {"": f"{boot['confidence']:.0%} interval", "value": f"[{boot['lo']:+.4f}, {boot['hi']:+.4f}]"},
            {"": "resamples / images / seed", "value": f"{boot['resamples']} / {boot['n_images']} / {boot['seed']}"},
        ]
    elif d.get("champion_version") is None:
        rows.append({"": "interval", "value": "none needed: first model, no champion to compare with"})
    else:
        rows.append({"": "interval", "value": "not recorded (final stage from before the paired bootstrap)"})
    parts = [html_table(rows, columns=["", "value"], css="kv")]
    fig = intervals_figure([], d) if boot else None
    if fig is not None:
        parts.append(_png(fig))
    return "".join(parts)


CSS = """
body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;color:#222;
line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:2px solid #4c72b0;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;margin:8px 0;font-size:0.85em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}th{background:#eef2f8}
pre{background:#f6f6f6;padding:10px;overflow-x:auto;font-size:0.8em}img{max-width:100%;display:block;margin:8px 0}
.note{color:#555;font-size:0.85em}nav a{margin-right:12px}
"""


def _space_section(record: SweepRecord) -> str:
    """Metric, trial count, scheduler and the space file as the sweep ran it."""
    return (
        f"<p>Metric <b>{html.escape(record.metric)}</b> ({html.escape(record.mode)}), "
        f"{html.escape(str(record.space.get('num_samples')))} trials, scheduler "
        f"{html.escape(json.dumps(record.space.get('scheduler', {})))}.</p>"
        f"<pre>{html.escape(record.space_yaml)}</pre>"
    )


def _machine_section(record: SweepRecord) -> str:
    """The driver's machine tags; says so when an older sweep recorded no CPU."""
    machine = [{"": k, "value": v} for k, v in record.machine.items()]
    if machine and "CPU" not in record.machine:
        machine.append({"": "CPU", "value": "not recorded (this sweep predates CPU tags on the parent run)"})
    return (
        "<p>The machine that ran the sweep's driver (trials on a cluster ran on its workers).</p>"
        + html_table(machine, columns=["", "value"], css="kv")
        if machine
        else "<p>not recorded on the parent run</p>"
    )


def _trials_section(record: SweepRecord) -> str:
    stopped = sum(t.early_stopped for t in record.trials)
    return (
        f"<p>{len(record.trials)} trials, {len(record.completed())} completed, {stopped} stopped early by ASHA, "
        f"sorted by best {html.escape(record.metric)}.</p>" + html_table(_trial_rows(record))
    )


def _curves_section(record: SweepRecord) -> str:
    return (
        _png(learning_curves_figure(record))
        + f"<p class='note'>A red × marks the last epoch of a trial ASHA stopped before {record.max_epochs} epochs.</p>"
        if record.trials
        else "<p>no trials</p>"
    )


def _importance_section(record: SweepRecord) -> str:
    """Optuna's importances, or why there are none (too few completed trials, nothing searched)."""
    importances, how = parameter_importances(record)
    if importances is None:
        return f"<p>Parameter importances {html.escape(how)}.</p>"
    rows = [{"parameter": k, "importance": v} for k, v in importances.items()]
    return _png(importance_figure(importances)) + html_table(rows) + f"<p class='note'>{html.escape(how)}</p>"


def _parallel_section(record: SweepRecord) -> str:
    fig = parallel_coordinates_figure(record)
    return _png(fig) if fig is not None else "<p>no completed trial with searched parameters to draw</p>"


def _table5_section(record: SweepRecord) -> str:
    """The final stage's post-processing table with bootstrap intervals, when the final stage recorded them."""
    if not record.table5:
        return "<p>No final stage has run for this sweep.</p>"
    columns = [
        c
        for c in ("method", "acc", "acc_class", "miou", "miou_lo", "miou_hi", "fwiou", "boundary_f", "ms_per_image")
        if any(c in r for r in record.table5)
    ]
    level = (record.decision or {}).get("bootstrap") or {}
    note = (
        f"miou_lo / miou_hi: {level.get('confidence', 0.95):.0%} percentile bootstrap interval over the test "
        "images, the same resamples for every variant."
        if any("miou_lo" in r for r in record.table5)
        else "No intervals: this final stage ran before they were recorded."
    )
    fig = intervals_figure(record.table5, None)
    return (
        html_table(record.table5, columns)
        + f"<p class='note'>{html.escape(note)}</p>"
        + (_png(fig) if fig is not None else "")
    )


def _examples_section(record: SweepRecord) -> str:
    return (
        "<p>Image | baseline | +CRF | +matting | +CRF+matting (hair tinted by its probability).</p>"
        + "".join(_img(png, f"example {i}") for i, png in enumerate(record.examples))
        if record.examples
        else "<p>No example panels recorded.</p>"
    )


#: One builder per entry of ``SECTIONS``, called in this order (the order figures are drawn in).
_SECTION_BUILDERS: dict[str, Callable[[SweepRecord], str]] = {
    "space": _space_section,
    "machine": _machine_section,
    "trials": _trials_section,
    "curves": _curves_section,
    "importance": _importance_section,
    "parallel": _parallel_section,
    "table5": _table5_section,
    "examples": _examples_section,
    "pareto": _pareto_section,
    "promotion": _promotion_section,
    "paper": _paper_section,
}


def render_report(record: SweepRecord) -> str:
    """The whole report as one HTML string (no external resource of any kind)."""
    body = {key: build(record) for key, build in _SECTION_BUILDERS.items()}
    nav = "".join(f'<a href="#{key}">{html.escape(title)}</a>' for key, title in SECTIONS.items())
    sections = "".join(
        f'<section id="{key}"><h2>{html.escape(title)}</h2>{body[key]}</section>' for key, title in SECTIONS.items()
    )
    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>hairseg sweep {html.escape(record.sweep)}</title><style>{CSS}</style></head><body>"
        f"<h1>Reproduction report: sweep {html.escape(record.sweep)}</h1>"
        f"<p>MLflow experiment <code>{html.escape(record.experiment)}</code>, parent run "
        f"<code>{html.escape(record.parent_run_id)}</code>, final-stage run "
        f"<code>{html.escape(record.finalize_run_id or 'none')}</code>; built {created} from what MLflow holds "
        "(rebuild: <code>python pipelines/finalize.py --report-only --run-id "
        f"{html.escape(record.parent_run_id)}</code>).</p>"
        f"<nav>{nav}</nav>{sections}</body></html>"
    )


def write_report(tracker: Tracker, parent_run_id: str, export_dir: str | Path | None = None) -> Path:
    """Build the sweep's report, write ``<export_dir>/<sweep>/report.html``, log it to the parent run.

    ``export_dir`` defaults to the space's ``finalize.export_dir`` (``exports``), relative to the
    working directory, i.e. beside the webcam exports. Returns the file's path.
    """
    record = collect_sweep(tracker, parent_run_id)
    root = Path(
        export_dir if export_dir is not None else (record.space.get("finalize") or {}).get("export_dir", "exports")
    )
    path = root / record.sweep / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(render_report(record), encoding="utf-8")
    os.replace(tmp, path)  # a reader sees the old report or the new one, never half of one
    with_retries(lambda: tracker.client.log_artifact(parent_run_id, str(path)), "log report")
    return path
