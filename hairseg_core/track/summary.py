"""A finished sweep's results onto its parent run: the trials table, the best trial and Optuna's plots."""

from __future__ import annotations

import warnings
from typing import Any

from hairseg_core.track.experiment import ExperimentRuns, flatten_params
from hairseg_core.track.tags import TAG_BEST_CHECKPOINT, TAG_BEST_RUN_ID, TAG_BEST_TRIAL, TAG_NOTE


def log_sweep_summary(
    tracker: ExperimentRuns, parent_run_id: str, rows: list[dict[str, Any]], study: Any, best: Any, metric: str
) -> None:
    """Results table, Optuna plots and the best trial onto the sweep's parent run."""
    if rows:
        tracker.log_table(parent_run_id, rows, "results/trials.json")
    tracker.log_dict(parent_run_id, best.to_dict(), "best_trial.json")
    tracker.set_tags(
        parent_run_id,
        {
            TAG_BEST_TRIAL: best.trial_id,
            TAG_BEST_RUN_ID: best.mlflow_run_id or "",
            TAG_BEST_CHECKPOINT: best.checkpoint_path,
        },
    )
    previous = tracker.get_run(parent_run_id).data.tags.get(TAG_NOTE, "")
    score = best.metrics.get(metric)
    sampled = {k: v for k, v in (best.config or {}).items() if rows and k in rows[0]}  # the searched settings
    summary = (
        f"\n\n**Best trial {best.trial_id}**: {metric} = {score:.4f} (run {best.mlflow_run_id}); "
        + ", ".join(f"{k}={v}" for k, v in sampled.items())
        + ". Artifacts: `results/trials.csv` (every trial), `best_trial.json`, `plots/` (Optuna)."
        if isinstance(score, (int, float))
        else ""
    )
    tracker.set_tags(parent_run_id, {TAG_NOTE: previous.split("\n\n**Best trial")[0] + summary})
    tracker.log_metrics(
        parent_run_id, {f"best_{k}": v for k, v in best.metrics.items() if k.startswith("val_")}, step=0
    )
    tracker.log_params(
        parent_run_id,
        flatten_params({"best": {k: v for k, v in best.config.items() if k != "dataset_options"}}),
    )
    log_optuna_plots(tracker, parent_run_id, study)


def log_optuna_plots(tracker: ExperimentRuns, parent_run_id: str, study: Any) -> None:
    """Optuna's plots of the study as ``plots/<name>.png``; a plot that cannot be drawn says why in a ``.txt``."""
    import matplotlib  # deferred: matplotlib only for the sweep's plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after choosing the Agg backend
    import optuna.visualization.matplotlib as ovm  # deferred: Optuna's plots only here

    plots = {
        "optimization_history": ovm.plot_optimization_history,
        "param_importances": ovm.plot_param_importances,
        "parallel_coordinate": ovm.plot_parallel_coordinate,
        "intermediate_values": ovm.plot_intermediate_values,
    }
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            tracker.log_figure(parent_run_id, fig, f"plots/{name}.png")
            plt.close(fig)
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as exc:
            # e.g. importances need >= 2 finished trials with varying parameters
            tracker.log_text(parent_run_id, f"{name} not drawn: {exc}\n", f"plots/{name}.txt")
