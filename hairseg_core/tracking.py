"""The only MLflow glue: where runs live, one parent run per sweep, one child run per trial.

Design choices, and why:

* Every call goes through an explicit ``MlflowClient`` with an explicit run id, never the
  fluent ``mlflow.start_run`` stack: trials run in Ray worker processes and threads, and a
  resumed trial must write into *its own* earlier run, not a new one.
* A trial's run is found again by tags (``hairseg.sweep`` + ``hairseg.trial_id``), and its id
  is also kept in the trial's checkpoint, so retries and ``--resume`` never create duplicates.
* The default store is a sqlite file in the working directory, made absolute so that Ray
  workers (whose working directory differs) write to the same file. ``MLFLOW_TRACKING_URI``
  or ``--tracking-uri`` point elsewhere, e.g. an ``mlflow server`` on the cluster's head node.
* A remote server is probed before the sweep starts: a typo in the URI fails in a second, not
  after the first trial has trained for an hour.
"""

from __future__ import annotations

import io
import json
import logging
import os
import platform
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

DEFAULT_DB = "mlruns.db"
DEFAULT_ARTIFACTS = "mlartifacts"
TAG_SWEEP = "hairseg.sweep"
TAG_KIND = "hairseg.kind"
TAG_TRIAL = "hairseg.trial_id"
CHAMPION_ALIAS = "champion"
#: MLflow error codes that no retry can fix.
PERMANENT_ERRORS = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_ALREADY_EXISTS",
    "RESOURCE_DOES_NOT_EXIST",
    "BAD_REQUEST",
    "INVALID_STATE",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
}
T = TypeVar("T")


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking store cannot be reached or written."""


def resolve_tracking_uri(uri: str | None = None, workdir: str | Path | None = None) -> str:
    """``uri`` > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///<workdir>/mlruns.db`` (absolute path)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            path = Path(uri[len("sqlite:///") :])
            if not path.is_absolute():
                uri = f"sqlite:///{(Path(workdir or Path.cwd()) / path).resolve()}"
        return uri
    return f"sqlite:///{(Path(workdir or Path.cwd()) / DEFAULT_DB).resolve()}"


def default_artifact_location(tracking_uri: str, workdir: str | Path | None = None) -> str | None:
    """For a local sqlite store, keep artifacts beside it (absolute), so workers agree on them."""
    if tracking_uri.startswith("sqlite:"):
        db_path = Path(tracking_uri[len("sqlite:///") :])
        return (db_path.parent / DEFAULT_ARTIFACTS).resolve().as_uri()
    return None  # the server decides (e.g. --artifacts-destination s3://...)


def check_tracking(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail fast and clearly when the tracking store is not usable."""
    if tracking_uri.startswith(("http://", "https://")):
        limit_mlflow_http_retries()
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - user-given server
                if resp.status != 200:
                    raise TrackingUnavailable(f"MLflow server {tracking_uri} answered {resp.status} on /health")
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingUnavailable(
                f"cannot reach the MLflow tracking server at {tracking_uri} ({reason}). Start it "
                f"(`mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db`), fix "
                "--tracking-uri / MLFLOW_TRACKING_URI, or unset it to use the local sqlite store."
            ) from None
    elif tracking_uri.startswith("sqlite:"):
        path = Path(tracking_uri[len("sqlite:///") :])
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise TrackingUnavailable(f"MLflow sqlite store {path}: folder {path.parent} is missing or not writable")
    try:
        MlflowClient(tracking_uri).search_experiments(max_results=1)
    except MlflowException as exc:
        raise TrackingUnavailable(f"MLflow store {tracking_uri} is not usable: {exc}") from None


#: Seconds one tracking call keeps retrying through an outage before it gives up (env override).
RETRY_BUDGET_ENV = "HAIRSEG_TRACKING_RETRY_S"
DEFAULT_RETRY_BUDGET_S = 120.0


def retry_budget() -> float:
    """The outage a tracking call rides out: long enough for an ``mlflow server`` restart."""
    raw = os.environ.get(RETRY_BUDGET_ENV)
    if raw is None:
        return DEFAULT_RETRY_BUDGET_S
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise ValueError(f"{RETRY_BUDGET_ENV}={raw!r}: expected a number of seconds") from None


def limit_mlflow_http_retries() -> None:
    """Make MLflow's own HTTP layer give up quickly, so ``with_retries`` alone sets the policy.

    By default MLflow retries each request 7 times with exponential backoff and a 120 s
    timeout: minutes per call against a dead server, multiplied by our retries and by every
    call a trial makes. Values the user set in the environment are left alone.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def with_retries(
    fn: Callable[[], T],
    what: str,
    attempts: int | None = None,
    delay: float = 1.0,
    budget_s: float | None = None,
    max_delay: float = 15.0,
) -> T:
    """Retry a tracking call across short server outages (restart, network blip).

    Retries with exponential backoff (capped at ``max_delay``) until ``attempts`` calls or
    ``budget_s`` seconds (default: ``$HAIRSEG_TRACKING_RETRY_S`` or 120 s) are spent, then
    raises ``TrackingUnavailable``: a server that stays down fails the trial clearly instead
    of hanging it. Errors no retry can fix (bad request, permission) are raised at once.
    """
    budget = retry_budget() if budget_s is None else budget_s
    start = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except (MlflowException, OSError) as exc:
            if isinstance(exc, MlflowException) and exc.error_code in PERMANENT_ERRORS:
                raise  # a bad request stays bad: retrying only hides the message
            wait = min(max_delay, delay * 2 ** (attempt - 1))
            elapsed = time.monotonic() - start
            if (attempts is not None and attempt >= attempts) or elapsed + wait > budget:
                raise TrackingUnavailable(
                    f"MLflow call '{what}' failed {attempt} times over {elapsed:.0f} s (retry budget "
                    f"{budget:.0f} s, {RETRY_BUDGET_ENV}): {exc}"
                ) from exc
            time.sleep(wait)


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Nested settings → MLflow params (``scheduler.max_t``), values truncated to MLflow's limit."""
    out: dict[str, str] = {}
    _flatten("", params, out)
    return {k: v[:6000] for k, v in out.items()}


def environment_tags() -> dict[str, str]:
    """Versions and git commit, so a result can be traced to the code that made it."""
    import ray
    import torch

    tags = {
        "hairseg.python": platform.python_version(),
        "hairseg.torch": torch.__version__,
        "hairseg.ray": ray.__version__,
        "hairseg.mlflow": mlflow.__version__,
        "hairseg.host": platform.node(),
    }
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        tags["mlflow.source.git.commit"] = commit
        tags["hairseg.git_dirty"] = str(bool(dirty))
    except (OSError, subprocess.SubprocessError):
        tags["hairseg.git_commit"] = "unknown (not a git checkout)"
    return tags


class Tracker:
    """MLflow operations of one sweep; cheap to construct in each Ray worker."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        if tracking_uri.startswith(("http://", "https://")):
            limit_mlflow_http_retries()
        self.client = MlflowClient(tracking_uri)
        self._artifact_location = artifact_location
        self._experiment_id: str | None = None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = with_retries(self._ensure_experiment, "get/create experiment")
        return self._experiment_id

    def _ensure_experiment(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment, artifact_location=self._artifact_location)
        except MlflowException:  # created concurrently by another process
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    # ----------------------------------------------------------------- lookup
    def _find(self, filter_string: str) -> list[Any]:
        return with_retries(
            lambda: self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1000),
            "search runs",
        )

    def find_parent(self, sweep: str) -> str | None:
        runs = self._find(f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_KIND}` = 'sweep'")
        return runs[0].info.run_id if runs else None

    def find_trial(self, sweep: str, trial_id: str) -> str | None:
        runs = self._find(f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_TRIAL}` = '{trial_id}'")
        return runs[0].info.run_id if runs else None

    def trial_runs(self, sweep: str) -> list[Any]:
        return self._find(f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_KIND}` = 'trial'")

    # ----------------------------------------------------------------- parent run
    def start_sweep(self, sweep: str, space: Mapping[str, Any], space_file: str | None = None) -> str:
        """Create (or, on resume, find) the sweep's parent run and log the search space."""
        existing = self.find_parent(sweep)
        if existing:
            with_retries(lambda: self.client.update_run(existing, status="RUNNING"), "reopen parent run")
            return existing
        tags = {TAG_SWEEP: sweep, TAG_KIND: "sweep", MLFLOW_RUN_NAME: sweep, **environment_tags()}
        run = with_retries(
            lambda: self.client.create_run(self.experiment_id, tags=tags, run_name=sweep), "create parent run"
        )
        run_id = run.info.run_id
        params = flatten_params({k: v for k, v in space.items() if k != "params"})
        params["search_space"] = json.dumps(space.get("params", {}), sort_keys=True)
        self.log_params(run_id, params)
        self.client.log_dict(run_id, dict(space), "search_space.json")
        if space_file and Path(space_file).is_file():
            self.client.log_artifact(run_id, space_file)
        return run_id

    # ----------------------------------------------------------------- trial runs
    def start_trial(
        self,
        sweep: str,
        parent_run_id: str,
        trial_id: str,
        trial_name: str,
        params: Mapping[str, Any],
        run_id: str | None = None,
    ) -> str:
        """Return the trial's run: the one given (from its checkpoint), the one tagged for it, or a new one."""
        if run_id is None:
            run_id = self.find_trial(sweep, trial_id)
        if run_id is not None:
            with_retries(lambda: self.client.update_run(run_id, status="RUNNING"), "reopen trial run")
            return run_id
        tags = {
            TAG_SWEEP: sweep,
            TAG_KIND: "trial",
            TAG_TRIAL: trial_id,
            MLFLOW_PARENT_RUN_ID: parent_run_id,
            MLFLOW_RUN_NAME: trial_name,
        }
        run = with_retries(
            lambda: self.client.create_run(self.experiment_id, tags=tags, run_name=trial_name),
            "create trial run",
        )
        self.log_params(run.info.run_id, flatten_params(params))
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):
            chunk = items[i : i + 100]
            with_retries(lambda chunk=chunk: self.client.log_batch(run_id, params=chunk), "log params")

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
        with_retries(lambda: self.client.log_batch(run_id, metrics=batch), "log metrics")

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        with_retries(lambda: self.client.log_batch(run_id, tags=batch), "set tags")

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        RunStatus.from_string(status)  # validates the name
        with_retries(lambda: self.client.set_terminated(run_id, status=status), "end run")

    def log_image(self, run_id: str, image: Any, artifact_file: str) -> None:
        with_retries(lambda: self.client.log_image(run_id, image, artifact_file=artifact_file), "log image")

    def log_figure(self, run_id: str, figure: Any, artifact_file: str) -> None:
        with_retries(lambda: self.client.log_figure(run_id, figure, artifact_file), "log figure")

    def log_table(self, run_id: str, rows: list[dict[str, Any]], artifact_file: str) -> None:
        import pandas as pd

        frame = pd.DataFrame(rows)
        with_retries(lambda: self.client.log_table(run_id, frame, artifact_file), "log table")
        buf = io.StringIO()
        frame.to_csv(buf, index=False)
        with_retries(
            lambda: self.client.log_text(run_id, buf.getvalue(), artifact_file.rsplit(".", 1)[0] + ".csv"),
            "log csv",
        )

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        with_retries(lambda: self.client.log_artifacts(run_id, str(local_dir), artifact_path), "log artifacts")

    def log_dict(self, run_id: str, data: Mapping[str, Any], artifact_file: str) -> None:
        with_retries(lambda: self.client.log_dict(run_id, dict(data), artifact_file), "log dict")

    # ----------------------------------------------------------------- final stage + registry
    def start_finalize(self, sweep: str, parent_run_id: str | None, params: Mapping[str, Any]) -> str:
        """A child run of the sweep holding Table 5, the exports and the registered model."""
        tags = {TAG_SWEEP: sweep, TAG_KIND: "finalize", MLFLOW_RUN_NAME: f"{sweep}-finalize"}
        if parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        run = with_retries(
            lambda: self.client.create_run(self.experiment_id, tags=tags, run_name=tags[MLFLOW_RUN_NAME]),
            "create finalize run",
        )
        self.log_params(run.info.run_id, flatten_params(params))
        return run.info.run_id

    def champion(self, name: str, alias: str = CHAMPION_ALIAS) -> Any | None:
        """The model version behind ``models:/<name>@champion``, or None when there is none yet."""
        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}:
                return None
            raise

    def load_model(self, model_uri: str) -> Any:
        """A registered DeepLabv3+ back as a torch module (eval mode, CPU)."""
        import mlflow.pytorch

        mlflow.set_tracking_uri(self.tracking_uri)
        model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
        return model.eval()

    def register_model(self, run_id: str, model: Any, name: str, tags: Mapping[str, Any]) -> str:
        """Log the module to ``run_id`` (MLflow 3 ``log_model(name=...)``) and register it; returns the version."""
        import mlflow.pytorch
        import torch

        mlflow.set_tracking_uri(self.tracking_uri)
        requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "hairseg"]
        with mlflow.start_run(run_id=run_id, nested=True):
            info = mlflow.pytorch.log_model(
                model.cpu().eval(), name="model", pip_requirements=requirements, serialization_format="pickle"
            )
        version = with_retries(lambda: mlflow.register_model(info.model_uri, name), "register model")
        for key, value in tags.items():
            with_retries(
                lambda key=key, value=value: self.client.set_model_version_tag(name, version.version, key, str(value)),
                "tag model version",
            )
        return str(version.version)

    def set_champion(self, name: str, version: str, alias: str = CHAMPION_ALIAS) -> None:
        with_retries(lambda: self.client.set_registered_model_alias(name, alias, version), "set alias")


def start_system_metrics(run_id: str, tracking_uri: str, interval: float = 10.0) -> Any | None:
    """CPU / memory / GPU usage of this trial's process into its run; None where unavailable."""
    # Its start/stop INFO lines would repeat for every trial in the sweep's console.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            run_id, sampling_interval=interval, resume_logging=True, tracking_uri=tracking_uri
        )
        monitor.start()
        return monitor
    except Exception:  # psutil missing, no permission for GPU counters, ...: optional by nature
        return None


def ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser"
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


def summarize_runs(runs: Iterable[Any], metric: str) -> list[dict[str, Any]]:
    """A row per trial run: name, status, its params and last metrics (for the results table)."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "trial": run.info.run_name,
            "status": run.info.status,
        }
        row.update({f"param.{k}": v for k, v in run.data.params.items()})
        row.update(run.data.metrics)
        rows.append(row)
    return rows


def log_sweep_summary(
    tracker: Tracker, parent_run_id: str, rows: list[dict[str, Any]], study: Any, best: Any, metric: str
) -> None:
    """Results table, Optuna plots and the best trial onto the sweep's parent run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    if rows:
        tracker.log_table(parent_run_id, rows, "results/trials.json")
    from dataclasses import asdict

    tracker.log_dict(parent_run_id, asdict(best), "best_trial.json")
    tracker.set_tags(
        parent_run_id,
        {
            "hairseg.best_trial": best.trial_id,
            "hairseg.best_run_id": best.mlflow_run_id or "",
            "hairseg.best_checkpoint": best.checkpoint_path,
        },
    )
    tracker.log_metrics(
        parent_run_id, {f"best_{k}": v for k, v in best.metrics.items() if k.startswith("val_")}, step=0
    )
    tracker.log_params(
        parent_run_id,
        flatten_params({"best": {k: v for k, v in best.config.items() if k != "dataset_options"}}),
    )
    plots = {
        "optimization_history": ovm.plot_optimization_history,
        "param_importances": ovm.plot_param_importances,
        "parallel_coordinate": ovm.plot_parallel_coordinate,
        "intermediate_values": ovm.plot_intermediate_values,
    }
    import warnings

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
            tracker.client.log_text(parent_run_id, f"{name} not drawn: {exc}\n", f"plots/{name}.txt")


def resolve_model_uri(uri: str, tracking_uri: str | None = None) -> Path:
    """``models:/hairseg@champion`` (or ``models:/hairseg/3``) → local folder with model.onnx/.ts/.json.

    The final stage tags each registered version with the run that holds its webcam exports;
    this downloads that ``export/`` folder.
    """
    import mlflow.artifacts

    if not uri.startswith("models:/"):
        raise ValueError(f"{uri!r} is not a models:/ URI")
    tracking_uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    name, _, ref = uri[len("models:/") :].partition("@")
    try:
        if ref:
            version = client.get_model_version_by_alias(name, ref)
        else:
            name, _, number = name.partition("/")
            version = client.get_model_version(name, number)
    except MlflowException as exc:
        raise FileNotFoundError(f"{uri}: no such registered model version in {tracking_uri} ({exc.message})") from None
    run_id = version.tags.get("hairseg.export_run_id") or version.run_id
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="export", tracking_uri=tracking_uri))
