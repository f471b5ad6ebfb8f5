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
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import mlflow.artifacts
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import Schema, TensorSpec
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

DEFAULT_DB = "mlruns.db"
DEFAULT_ARTIFACTS = "mlartifacts"
TAG_SWEEP = "hairseg.sweep"
TAG_KIND = "hairseg.kind"
TAG_TRIAL = "hairseg.trial_id"
CHAMPION_ALIAS = "champion"
TAG_SUPERSEDED_BY = "hairseg.superseded_by"
TAG_SUPERSEDES = "hairseg.supersedes"
#: On a deleted trial run: why no trial of the sweep continues it (see :meth:`Tracker.retire_orphan_trial_run`).
TAG_ORPHANED = "hairseg.orphaned"
#: On a sweep's parent run: the sweep's folder in Tune's storage (its manifest, lease and final-stage record).
TAG_STORAGE = "hairseg.storage"
#: On a registered model version: sha256 of the checkpoint it was made from. One version per (sweep, digest).
TAG_CHECKPOINT_DIGEST = "hairseg.checkpoint_digest"
#: On a created run: a random token, so that a create whose answer was lost is found instead of repeated.
TAG_CREATE_TOKEN = "hairseg.create_token"
#: The sweep run a trial run belongs to. Trial runs are top-level runs (see README "MLflow UI"): MLflow's
#: runs table folds nested runs under a collapsed parent row and no saved view can unfold it.
TAG_PARENT = "hairseg.parent_run_id"
#: What MLflow's UI reads to open an experiment in its model-training view instead of the GenAI one
#: (``mlflow.experimentKind``; values in the UI bundle: ``custom_model_development``, ``genai_development``).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: A run's description in the UI (its "Description" box and column).
TAG_NOTE = "mlflow.note.content"
#: Where MLflow puts a logged model's ``extra_files`` (the state-dict checkpoint and model.json).
MODEL_EXTRA_DIR = "extra_files"
#: Experiment tag prefix of the UI's saved views; ``?viewStateShareKey=<key>`` opens one.
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
#: MLflow's own tags a replacement trial run keeps (the name, the description, the source).
_COPIED_MLFLOW_TAGS = {
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_RUN_NAME,
    TAG_NOTE,
    "mlflow.source.name",
    "mlflow.source.type",
    "mlflow.source.git.commit",
}
_EPOCH_IMAGE = re.compile(r"epoch(\d+)[_.]")


def _epoch_of(artifact_path: str) -> int | None:
    """The epoch of a ``predictions/epoch003.png`` (or older ``epoch003_0.png``) artifact, else None."""
    found = _EPOCH_IMAGE.search(artifact_path.rsplit("/", 1)[-1])
    return int(found.group(1)) if found else None


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


class SweepNameTaken(ValueError):
    """A new sweep was given the name of a sweep that exists: one name, one sweep."""


class TrackingLoginFailed(TrackingUnavailable):
    """The MLflow server wants a login and refused this one (or got none); a retry cannot fix it."""


class UnknownExperiment(LookupError):
    """A look-up named an MLflow experiment the store does not have (nothing was created)."""


#: Client settings MLflow reads from the environment to log in to a tracking server (basic-auth user and
#: password, or a bearer token) and to check its TLS certificate. What a sweep hands its trials, so a trial
#: on a node started without them logs in as the driver does (``hairseg_core.search.tuner``).
CREDENTIAL_ENV = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
)


def tracking_credentials() -> dict[str, str]:
    """The login / TLS settings of :data:`CREDENTIAL_ENV` this process has (values never to be logged)."""
    return {k: os.environ[k] for k in CREDENTIAL_ENV if os.environ.get(k)}


def apply_tracking_credentials(credentials: Mapping[str, str] | None) -> None:
    """Use ``credentials`` (from the driver) where this process has none of its own; returns nothing to log."""
    for key, value in (credentials or {}).items():
        if key in CREDENTIAL_ENV:
            os.environ.setdefault(key, value)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _login_problem(tracking_uri: str, exc: MlflowException) -> TrackingLoginFailed | None:
    """The one-line error of a request the server refused for its login, else None."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if exc.error_code == "UNAUTHENTICATED":
        if not user and not os.environ.get("MLFLOW_TRACKING_TOKEN"):
            return TrackingLoginFailed(
                f"the MLflow server at {tracking_uri} requires a login: set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD in the environment (cluster/README.md, 'Tracking behind a login')"
            )
        return TrackingLoginFailed(
            f"the MLflow server at {tracking_uri} refused the login of user {user!r} (MLFLOW_TRACKING_USERNAME / "
            "MLFLOW_TRACKING_PASSWORD): wrong user name or password"
        )
    if exc.error_code == "PERMISSION_DENIED":
        return TrackingLoginFailed(
            f"the MLflow server at {tracking_uri} denies user {user!r} this request: {_first_line(exc)}"
        )
    return None


def sqlite_path(tracking_uri: str) -> Path | None:
    """The file of a ``sqlite:///`` store, else None."""
    return Path(tracking_uri[len("sqlite:///") :]) if tracking_uri.startswith("sqlite:///") else None


def require_existing_store(tracking_uri: str) -> None:
    """For look-ups: a sqlite store that does not exist is an error, and is not created by asking."""
    path = sqlite_path(tracking_uri)
    if path is not None and not path.is_file():
        raise TrackingUnavailable(
            f"no MLflow store at {path} (nothing was created): run from the folder holding mlruns.db or pass "
            "--tracking-uri / MLFLOW_TRACKING_URI"
        )


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


def check_tracking(tracking_uri: str, timeout: float = 5.0, must_exist: bool = False) -> None:
    """Fail fast and clearly (one line) when the tracking store is not usable or refuses the login.

    ``must_exist``: a look-up (a run id, an experiment, a model): a sqlite store that is not there is an
    error instead of being created empty.
    """
    if must_exist:
        require_existing_store(tracking_uri)
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
        login = _login_problem(tracking_uri, exc)
        if login is not None:
            raise login from None
        raise TrackingUnavailable(f"MLflow store {tracking_uri} is not usable: {_first_line(exc)}") from None


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


logger = logging.getLogger(__name__)


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
            # one line per retry: a sweep that slows down during an outage says why
            logger.warning("MLflow call '%s' failed (%s); retry %d in %.0f s", what, _short(exc), attempt, wait)
            time.sleep(wait)


def _short(exc: BaseException) -> str:
    """The first line of an exception, for a one-line retry warning."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def create_once(create: Callable[[], T], lookup: Callable[[], T | None], what: str) -> T:
    """A create that is not idempotent (a run, a model version), made at most once across an outage.

    ``with_retries(create)`` would repeat a create whose request reached the server but whose answer was
    lost, making two. Here ``lookup`` (by a tag only this create sets) runs before every repeat: what the
    lost attempt made is returned instead of made again. Same budget and errors as ``with_retries``.
    """
    attempts = 0

    def attempt() -> T:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            found = lookup()
            if found is not None:
                return found
        return create()

    return with_retries(attempt, what)


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


def machine_description() -> dict[str, str]:
    """CPU model, logical cores, GPU and OS of this machine: a sweep's timings mean little without them."""
    import optuna  # deferred: Optuna only for its version tag
    import torch  # deferred: most tracking calls never need torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "hairseg.cpu": cpu,
        "hairseg.cpu_count": str(os.cpu_count()),
        "hairseg.gpu": gpu,
        "hairseg.platform": platform.platform(),
        "hairseg.optuna": optuna.__version__,
    }


def source_tags() -> dict[str, str]:
    """MLflow's source tags (the UI's Source column): the sweep entry point, run locally or on a cluster."""
    return {"mlflow.source.name": "pipelines/sweep.py", "mlflow.source.type": "LOCAL"}


def environment_tags() -> dict[str, str]:
    """Versions and git commit, so a result can be traced to the code that made it."""
    import ray  # deferred: Ray only for its version tag
    import torch  # deferred: most tracking calls never need torch

    tags = {
        "hairseg.python": platform.python_version(),
        "hairseg.torch": torch.__version__,
        "hairseg.ray": ray.__version__,
        "hairseg.mlflow": mlflow.__version__,
        "hairseg.host": platform.node(),
        **machine_description(),
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


def existing_sweep_run(tracking_uri: str, experiment: str, sweep: str) -> str | None:
    """The parent run of a sweep named ``sweep`` in ``experiment``, or None; creates nothing (no experiment)."""
    if tracking_uri.startswith(("http://", "https://")):
        limit_mlflow_http_retries()
    client = MlflowClient(tracking_uri)
    found = with_retries(lambda: client.get_experiment_by_name(experiment), "get experiment")
    if found is None:
        return None
    runs = with_retries(
        lambda: client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_KIND}` = 'sweep'",
            max_results=1,
        ),
        "search runs",
    )
    return runs[0].info.run_id if runs else None


class Tracker:
    """MLflow operations of one sweep; cheap to construct in each Ray worker."""

    def __init__(
        self, tracking_uri: str, experiment: str, artifact_location: str | None = None, create: bool = True
    ) -> None:
        """``create=False``: a look-up; an experiment that does not exist raises :class:`UnknownExperiment`."""
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self._create = create
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
        """The experiment's id, creating it tagged as model training (an older one gets the tag now).

        Without ``mlflow.experimentKind`` MLflow 3's UI guesses, and an experiment it cannot classify
        opens in the GenAI view (traces, no runs table).
        """
        found = self.client.get_experiment_by_name(self.experiment)
        if found is None and not self._create:
            known = sorted(e.name for e in self.client.search_experiments(max_results=50))
            raise UnknownExperiment(
                f"no MLflow experiment {self.experiment!r} in {self.tracking_uri} (experiments: {', '.join(known)})"
            )
        if found is not None:
            if found.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND and self._create:
                self.client.set_experiment_tag(found.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
            return found.experiment_id
        try:
            return self.client.create_experiment(
                self.experiment,
                artifact_location=self._artifact_location,
                tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND},
            )
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

    def find_trial(self, sweep: str, trial_id: str, parent_run_id: str | None = None) -> str | None:
        """The trial's live run; with ``parent_run_id``, only one that sweep run created."""
        parent = f" and tags.`{TAG_PARENT}` = '{parent_run_id}'" if parent_run_id else ""
        runs = self._find(f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_TRIAL}` = '{trial_id}'{parent}")
        return runs[0].info.run_id if runs else None

    def trial_runs(self, sweep: str, parent_run_id: str | None = None) -> list[Any]:
        """The sweep's live trial runs; with ``parent_run_id``, only those that sweep run created (by id:
        another sweep that once had the same name never counts)."""
        parent = f" and tags.`{TAG_PARENT}` = '{parent_run_id}'" if parent_run_id else ""
        return self._find(f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_KIND}` = 'trial'{parent}")

    def _create_run(self, experiment_id: str, tags: Mapping[str, Any], what: str, **kwargs: Any) -> Any:
        """``create_run`` at most once: tagged with a fresh token, found by it if an answer was lost."""
        token = uuid.uuid4().hex
        tags = {**tags, TAG_CREATE_TOKEN: token}

        def lookup() -> Any | None:
            runs = self.client.search_runs([experiment_id], filter_string=f"tags.`{TAG_CREATE_TOKEN}` = '{token}'")
            return runs[0] if runs else None

        return create_once(lambda: self.client.create_run(experiment_id, tags=tags, **kwargs), lookup, what)

    # ----------------------------------------------------------------- parent run
    def start_sweep(
        self,
        sweep: str,
        space: Mapping[str, Any],
        space_file: str | None = None,
        resume: bool = False,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> str:
        """Create the sweep's parent run and log the search space; on ``resume``, reopen it.

        A resumed sweep reopens ``parent_run_id`` (the run its manifest recorded), or the run of its name
        for sweeps from before the manifest had it. A new sweep never reopens a run: a name that already
        has a parent run is refused (``SweepNameTaken``), since reopening would mix two sweeps' records.
        """
        if resume:
            existing = parent_run_id or self.find_parent(sweep)
            if existing:
                with_retries(lambda: self.client.update_run(existing, status="RUNNING"), "reopen parent run")
                return existing
        elif self.find_parent(sweep):
            raise SweepNameTaken(f"experiment {self.experiment!r} already has a sweep named {sweep}")
        note = (
            f"Sweep **{sweep}**: {space.get('num_samples', '?')} trials of search space "
            f"`{space.get('name', '?')}`, objective `{space.get('metric', '?')}` ({space.get('mode', '?')}). "
            "Each trial is a run of its own in this experiment, tagged `hairseg.sweep`; this run holds the "
            "search space, the results table, the best configuration and the Optuna plots, and its child "
            "run `<sweep>-finalize` holds Table 5, the exports and the registered model."
        )
        tags = {
            TAG_SWEEP: sweep,
            TAG_KIND: "sweep",
            MLFLOW_RUN_NAME: sweep,
            TAG_NOTE: note,
            **source_tags(),
            **environment_tags(),
            **{k: str(v) for k, v in (tags or {}).items()},
        }
        run = self._create_run(self.experiment_id, tags, "create parent run", run_name=sweep)
        run_id = run.info.run_id
        params = flatten_params({k: v for k, v in space.items() if k != "params"})
        params["search_space"] = json.dumps(space.get("params", {}), sort_keys=True)
        self.log_params(run_id, params)
        self.log_dict(run_id, dict(space), "search_space.json")
        if space_file and Path(space_file).is_file():
            with_retries(lambda: self.client.log_artifact(run_id, space_file), "log search space file")
        return run_id

    def save_sweep_view(self, sweep: str, space: Mapping[str, Any]) -> str:
        """Save the UI view a sweep is compared in (an experiment tag) and return its share key.

        ``<ui>/#/experiments/<id>/runs?viewStateShareKey=<key>`` then opens the runs table filtered to
        this sweep, best trial first, with the sampled parameters and the validation metrics as columns,
        and a chart view comparing every trial. The view is also listed in the page's saved-views menu.
        """
        key = view_key(sweep)
        state = sweep_view_state(sweep, space)
        now = int(time.time() * 1000)
        envelope = json.dumps({"name": f"sweep {sweep}", "createdAt": now, "updatedAt": now, "state": state})
        with_retries(
            lambda: self.client.set_experiment_tag(self.experiment_id, VIEW_TAG_PREFIX + key, envelope),
            "save sweep view",
        )
        return key

    def log_datasets(self, run_id: str, fingerprints: Iterable[Any], context: str = "training") -> None:
        """The run's data sources as MLflow dataset inputs (the UI's Dataset column and run page)."""
        inputs = [
            DatasetInput(
                Dataset(
                    name=f.name,
                    digest=f.digest[:36],
                    source_type="local",
                    source=json.dumps({"uri": f.root}),
                    profile=json.dumps({"dataset": f.dataset, **{f"num_{k}": v for k, v in f.counts.items()}}),
                ),
                tags=[InputTag("mlflow.data.context", context)],
            )
            for f in fingerprints
        ]
        if inputs:
            with_retries(lambda: self.client.log_inputs(run_id, datasets=inputs), "log dataset inputs")

    # ----------------------------------------------------------------- trial runs
    def start_trial(
        self,
        sweep: str,
        parent_run_id: str,
        trial_id: str,
        trial_name: str,
        params: Mapping[str, Any],
        run_id: str | None = None,
        sampled: Mapping[str, Any] | None = None,
        datasets: Iterable[Any] = (),
    ) -> str:
        """Return the trial's run: the one given (from its checkpoint), the one tagged for it, or a new one.

        A new run is a top-level run of the experiment (not nested under the sweep's run, which MLflow's
        runs table would show collapsed), linked to its sweep by ``hairseg.sweep`` and
        ``hairseg.parent_run_id``; it gets a description naming its ``sampled`` values, the code's git
        commit and ``datasets`` (:mod:`hairseg_core.data.fingerprint`) as dataset inputs.
        """
        if run_id is None:
            run_id = self.find_trial(sweep, trial_id, parent_run_id)
        if run_id is not None:
            with_retries(lambda: self.client.update_run(run_id, status="RUNNING"), "reopen trial run")
            return run_id
        values = ", ".join(f"{k}={v}" for k, v in (sampled or {}).items()) or "no sampled values"
        tags = {
            TAG_SWEEP: sweep,
            TAG_KIND: "trial",
            TAG_TRIAL: trial_id,
            TAG_PARENT: parent_run_id,
            MLFLOW_RUN_NAME: trial_name,
            TAG_NOTE: f"Trial {trial_id} of sweep **{sweep}**: {values}.",
            **source_tags(),
            **environment_tags(),
        }
        run = self._create_run(self.experiment_id, tags, "create trial run", run_name=trial_name)
        self.log_params(run.info.run_id, flatten_params(params))
        self.log_datasets(run.info.run_id, datasets)
        return run.info.run_id

    def copy_datasets(self, src_run_id: str, dst_run_id: str) -> None:
        """Log the dataset inputs of one run onto another (a trial fed the sweep's shared data)."""
        run = self.get_run(src_run_id)
        datasets = list(run.inputs.dataset_inputs) if run.inputs is not None else []
        if datasets:
            with_retries(lambda: self.client.log_inputs(dst_run_id, datasets=datasets), "copy dataset inputs")

    def log_best_metrics(self, run_id: str) -> dict[str, float]:
        """``best_val_*`` on a trial's run from its per-epoch history (max, min for losses); returns them.

        MLflow's runs table and bar charts show a metric's last value; ASHA compares trials by their
        best epoch, and a trial's last epoch is often not its best, so the best values are logged too.
        """
        run = self.get_run(run_id)
        best: dict[str, float] = {}
        last_step = 0
        for key in run.data.metrics:
            if not key.startswith("val_"):
                continue
            history = with_retries(lambda key=key: self.client.get_metric_history(run_id, key), "read metric history")
            values = [m.value for m in history if m.value == m.value]  # NaN never wins
            last_step = max([last_step, *(m.step for m in history)])
            if values:
                best[f"best_{key}"] = min(values) if "loss" in key else max(values)
        if best:
            self.log_metrics(run_id, best, step=last_step)
        return best

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
    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        with_retries(lambda: self.client.log_text(run_id, text, artifact_file), "log text")

    def get_run(self, run_id: str) -> Any:
        return with_retries(lambda: self.client.get_run(run_id), "get run")

    def download_artifact(self, run_id: str, path: str, dst: str | Path) -> Path:
        return Path(with_retries(lambda: self.client.download_artifacts(run_id, path, str(dst)), "download artifact"))

    def latest_sweep_runs(self, max_results: int = 50) -> list[Any]:
        """The experiment's sweep parent runs, newest first."""
        return with_retries(
            lambda: self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{TAG_KIND}` = 'sweep'",
                order_by=["attributes.start_time DESC"],
                max_results=max_results,
            ),
            "search sweep runs",
        )

    # ----------------------------------------------------------------- restarted trial attempts
    def logged_epochs(self, run_id: str, key: str = "val_miou") -> list[int]:
        """The steps (epochs) ``key`` was logged at in ``run_id``, in logging order, repeats included."""
        history = with_retries(lambda: self.client.get_metric_history(run_id, key), "read metric history")
        return [m.step for m in sorted(history, key=lambda m: (m.timestamp, m.step))]

    def current_trial_run(
        self, sweep: str, trial_id: str, hint: str | None, parent_run_id: str | None = None
    ) -> str | None:
        """The trial's live run: ``hint`` (from a checkpoint) unless it was superseded, else the tagged one.

        A checkpoint written before a restarted attempt replaced the trial's run still names the old
        run; that one is deleted and points at its successor (tag ``hairseg.superseded_by``).
        """
        if hint is not None:
            run = self.get_run(hint)
            if run.info.lifecycle_stage != "deleted" and TAG_SUPERSEDED_BY not in run.data.tags:
                return hint
        return self.find_trial(sweep, trial_id, parent_run_id)

    def supersede_trial_run(self, run_id: str, keep_through: int, reason: str) -> str:
        """Replace a trial's run by a copy holding only its epochs ``1..keep_through``; return the copy.

        Used when an attempt restarts from an older checkpoint (or from scratch) than the run's last
        logged epoch: the epochs after ``keep_through`` are trained again, and logging them into the
        same run would give one epoch two values (MLflow cannot delete logged values). The copy gets
        the run's tags, parameters, every metric value at steps <= ``keep_through`` (system metrics up
        to the moment that epoch was logged) and the per-epoch prediction images of those epochs; the
        old run is tagged ``hairseg.superseded_by`` and deleted (hidden from the UI and from searches;
        ``MlflowClient.restore_run`` brings it back).
        """
        old = self.get_run(run_id)
        keep_tags = {k: v for k, v in old.data.tags.items() if not k.startswith("mlflow.") or k in _COPIED_MLFLOW_TAGS}
        keep_tags[TAG_SUPERSEDES] = run_id
        keep_tags["hairseg.supersede_reason"] = reason
        keep_tags.pop(TAG_CREATE_TOKEN, None)
        new = self._create_run(
            old.info.experiment_id,
            keep_tags,
            "create replacement trial run",
            run_name=old.info.run_name,
            start_time=old.info.start_time,
        )
        new_id = new.info.run_id
        self.log_params(new_id, dict(old.data.params))
        self.copy_datasets(run_id, new_id)
        epoch_time: int | None = None
        metrics: list[Metric] = []
        for key in old.data.metrics:
            history = with_retries(lambda key=key: self.client.get_metric_history(run_id, key), "read metric history")
            if not key.startswith("system/"):
                kept = [m for m in history if m.step <= keep_through]
                metrics += kept
                if key == "val_miou" and kept:
                    epoch_time = max(m.timestamp for m in kept)
        for key in (k for k in old.data.metrics if k.startswith("system/")):
            history = with_retries(lambda key=key: self.client.get_metric_history(run_id, key), "read metric history")
            metrics += [m for m in history if epoch_time is not None and m.timestamp <= epoch_time]
        for i in range(0, len(metrics), 500):
            chunk = [Metric(m.key, m.value, m.timestamp, m.step) for m in metrics[i : i + 500]]
            with_retries(lambda chunk=chunk: self.client.log_batch(new_id, metrics=chunk), "copy metrics")
        self._copy_epoch_images(run_id, new_id, keep_through)
        self._retire_run(run_id, {TAG_SUPERSEDED_BY: new_id}, "superseded")
        return new_id

    def retire_orphan_trial_run(self, run_id: str, reason: str) -> None:
        """Close and delete the run of a trial the sweep no longer has, saying why (tag ``hairseg.orphaned``).

        A driver killed between a new trial's start and Tune's next save of its experiment state leaves
        that trial's MLflow run behind, but the restored sweep has no such trial and never continues it.
        Left RUNNING it would be an extra row in the runs table, counted by nothing; deleted like a
        superseded run it is hidden from the UI and from searches (``MlflowClient.restore_run`` brings
        it back).
        """
        self._retire_run(run_id, {TAG_ORPHANED: reason}, "orphaned")

    def _retire_run(self, run_id: str, tags: Mapping[str, Any], what: str) -> None:
        """Tag a trial run with why it is retired, close it KILLED and delete it (hidden, restorable)."""
        self.set_tags(run_id, tags)
        with_retries(lambda: self.client.set_terminated(run_id, status="KILLED"), f"end {what} run")
        with_retries(lambda: self.client.delete_run(run_id), f"delete {what} run")

    def _copy_epoch_images(self, src: str, dst: str, keep_through: int) -> None:
        files = with_retries(lambda: self.client.list_artifacts(src, "predictions"), "list artifacts")
        kept = [f.path for f in files if 0 < (_epoch_of(f.path) or 0) <= keep_through]
        if not kept:
            return
        with tempfile.TemporaryDirectory(prefix="hairseg-copy-") as tmp:
            for path in kept:
                local = self.download_artifact(src, path, tmp)
                with_retries(lambda local=local: self.client.log_artifact(dst, str(local), "predictions"), "copy image")

    def start_finalize(self, sweep: str, parent_run_id: str | None, params: Mapping[str, Any]) -> str:
        """A child run of the sweep holding Table 5, the exports and the registered model.

        A final stage whose process was killed left its run RUNNING; it is closed KILLED here, so a
        sweep has at most one FINISHED final-stage run per completed final stage.
        """
        stale = self._find(f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_KIND}` = 'finalize'")
        for run in stale:
            if run.info.status == "RUNNING":
                self.end_run(run.info.run_id, "KILLED")
        tags = {TAG_SWEEP: sweep, TAG_KIND: "finalize", MLFLOW_RUN_NAME: f"{sweep}-finalize"}
        if parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        run = self._create_run(self.experiment_id, tags, "create finalize run", run_name=tags[MLFLOW_RUN_NAME])
        self.log_params(run.info.run_id, flatten_params(params))
        return run.info.run_id

    def reopen_finalize(self, sweep: str, run_id: str) -> None:
        """Continue the final-stage run an earlier attempt created (recorded in the sweep's final-stage record);
        other final-stage runs of the sweep left RUNNING by killed attempts are closed KILLED."""
        stale = self._find(f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_KIND}` = 'finalize'")
        for run in stale:
            if run.info.status == "RUNNING" and run.info.run_id != run_id:
                self.end_run(run.info.run_id, "KILLED")
        with_retries(lambda: self.client.update_run(run_id, status="RUNNING"), "reopen finalize run")

    def champion(self, name: str, alias: str = CHAMPION_ALIAS) -> Any | None:
        """The model version behind ``models:/<name>@champion``, or None when there is none yet."""

        def lookup() -> Any | None:
            try:
                return self.client.get_model_version_by_alias(name, alias)
            except MlflowException as exc:
                if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}:
                    return None
                # MLflow's basic-auth app answers 403, not 404, for the alias of a model nobody registered yet
                # (it finds no permission on a model that does not exist): the first sweep's final stage.
                if exc.error_code == "PERMISSION_DENIED" and not self.client.search_registered_models(
                    filter_string=f"name = '{name}'", max_results=1
                ):
                    return None
                raise

        return with_retries(lookup, "look up champion")

    def load_model(self, model_uri: str) -> Any:
        """A registered DeepLabv3+ back as a torch module (eval mode, CPU), rebuilt without unpickling code.

        The version's ``model.pt`` (a state dict plus the model config, read with ``weights_only=True``)
        is rebuilt by the package's own loader, and its trained scale is attached. Versions registered
        before the ONNX flavor (a pickled torch module) are rebuilt the same way from the ``model.pt`` of
        their export folder: their pickle is never loaded.
        """
        # Deferred: the artifact layer imports torch, which most tracking calls (and Ray's driver) never need.
        from hairseg_core.artifact import DEFAULT_FILES, load_model

        name = DEFAULT_FILES["checkpoint"]
        with tempfile.TemporaryDirectory(prefix="hairseg-model-") as tmp:
            try:
                checkpoint = Path(
                    with_retries(
                        lambda: mlflow.artifacts.download_artifacts(
                            artifact_uri=f"{model_uri.rstrip('/')}/{MODEL_EXTRA_DIR}/{name}",
                            dst_path=tmp,
                            tracking_uri=self.tracking_uri,
                        ),
                        "download registered checkpoint",
                    )
                )
            except (MlflowException, TrackingUnavailable, OSError):
                checkpoint = resolve_model_uri(model_uri, self.tracking_uri) / name  # an older, pickled version
            return load_model(checkpoint, "eager")  # eval mode, its train_scale attached

    def register_model(self, run_id: str, export_dir: str | Path, name: str, tags: Mapping[str, Any]) -> str:
        """Log ``export_all``'s ONNX model to ``run_id`` with MLflow's ONNX flavor, register it; returns the version.

        No pickle: the flavor stores ``model.onnx`` itself (loaded by onnxruntime, ``mlflow.pyfunc`` takes
        an NCHW float32 batch and returns the softmax), and the state-dict checkpoint ``model.pt`` plus
        ``model.json`` ride along as extra files, from which :meth:`load_model` rebuilds the torch module.
        The signature has dynamic batch, height and width; the input example is one 64x64 synthetic
        portrait, normalised as the metadata says.

        At most one version per (``tags["hairseg.sweep"]``, ``tags["hairseg.checkpoint_digest"]``): the version
        is looked up by those tags first, created with its tags in the same call (a version never exists
        untagged), and looked up again instead of created again when a create's answer was lost. The model
        is logged through the client, not ``mlflow.start_run``, whose exit would end ``run_id``.
        """
        import mlflow.onnx  # deferred: MLflow's ONNX flavor is lazy-loaded by mlflow itself
        import onnx  # deferred: onnx only when registering a model
        import onnxruntime  # deferred: onnxruntime only when registering a model

        # Deferred (torch, cv2): only registering a model needs the artifact layer and its probe image.
        from hairseg_core.artifact import DEFAULT_FILES, normalize_image, synthetic_portrait
        from hairseg_core.final.record import pause_point

        sweep, digest = str(tags.get(TAG_SWEEP, "")), str(tags.get(TAG_CHECKPOINT_DIGEST, ""))

        def lookup() -> str | None:
            return self.find_model_version(name, sweep, digest) if sweep and digest else None

        found = lookup()
        if found is not None:
            return found
        export_dir = Path(export_dir)
        mlflow.set_tracking_uri(self.tracking_uri)  # register_model resolves models:/ URIs through it
        onnx_model = onnx.load(str(export_dir / DEFAULT_FILES["onnx"]))
        graph_in, graph_out = onnx_model.graph.input[0].name, onnx_model.graph.output[0].name
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1), graph_in)]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 2, -1, -1), graph_out)]),
        )
        example = {graph_in: np.ascontiguousarray(normalize_image(synthetic_portrait(64, 64)).numpy())}
        requirements = [
            f"onnx=={onnx.__version__}",
            f"onnxruntime=={onnxruntime.__version__}",
            f"mlflow=={mlflow.__version__}",
        ]
        extra = [str(export_dir / DEFAULT_FILES[k]) for k in ("checkpoint", "metadata")]
        experiment_id = self.get_run(run_id).info.experiment_id
        token = uuid.uuid4().hex

        def find_logged() -> Any | None:
            found = self.client.search_logged_models(
                [experiment_id], filter_string=f"tags.`{TAG_CREATE_TOKEN}` = '{token}'"
            )
            return found[0] if found else None

        logged = create_once(
            lambda: self.client.create_logged_model(
                experiment_id, name="model", source_run_id=run_id, tags={TAG_CREATE_TOKEN: token}
            ),
            find_logged,
            "create logged model",
        )
        info = with_retries(  # idempotent: the same logged model's artifacts, written again
            lambda: mlflow.onnx.log_model(
                onnx_model,
                name="model",
                signature=signature,
                input_example=example,
                pip_requirements=requirements,
                save_as_external_data=False,
                extra_files=extra,
                model_id=logged.model_id,
                run_id=run_id,
            ),
            "log model",
        )
        pause_point("model_logged")
        version_tags = {k: str(v) for k, v in tags.items()}
        version = create_once(
            lambda: str(mlflow.register_model(info.model_uri, name, tags=version_tags).version),
            lookup,
            "register model",
        )
        return version

    def find_model_version(self, name: str, sweep: str, digest: str) -> str | None:
        """The version of ``name`` registered for this sweep and checkpoint digest, or None."""
        query = f"name='{name}' and tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_CHECKPOINT_DIGEST}` = '{digest}'"
        found = with_retries(lambda: self.client.search_model_versions(query), "search model versions")
        return str(min(int(v.version) for v in found)) if found else None

    def get_model_version(self, name: str, version: str) -> Any:
        return with_retries(lambda: self.client.get_model_version(name, version), "get model version")

    def set_champion(self, name: str, version: str, alias: str = CHAMPION_ALIAS) -> None:
        with_retries(lambda: self.client.set_registered_model_alias(name, alias, version), "set alias")


def start_system_metrics(run_id: str, tracking_uri: str, interval: float = 10.0) -> Any | None:
    """CPU / memory / GPU usage of this trial's process into its run; None where unavailable."""
    # Its start/stop INFO lines would repeat for every trial in the sweep's console.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor  # deferred, optional: psutil

        monitor = SystemMetricsMonitor(
            run_id, sampling_interval=interval, resume_logging=True, tracking_uri=tracking_uri
        )
        monitor.start()
        return monitor
    except Exception:  # psutil missing, no permission for GPU counters, ...: optional by nature
        return None


def view_key(sweep: str) -> str:
    """The share key of a sweep's saved UI view: its name, with characters a tag key or URL cannot hold replaced."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", sweep)


def _col(kind: str, key: str) -> str:
    """A runs-table column as the UI names it (``metrics.`val_miou```)."""
    return f"{kind}.`{key}`"


def sweep_view_state(sweep: str, space: Mapping[str, Any]) -> str:
    """The UI state (JSON) of the view a sweep is compared in; see :meth:`Tracker.save_sweep_view`.

    Field names are those of MLflow 3.17's runs page (``ExperimentPageUIState`` and the search facets it
    keeps in a shared view; the UI fills in defaults for anything left out). The first chart section
    compares every trial: the objective per epoch, parameters vs the best objective (parallel coordinates
    and a scatter of the first sampled parameter), and the best objective per trial; the UI adds its own
    charts for the remaining metrics below.
    """
    metric, mode = str(space.get("metric", "val_miou")), str(space.get("mode", "max"))
    specs = space.get("params", {})
    params = [k for k in specs if "@" not in k]
    numeric = [k for k in params if isinstance(specs[k], Mapping) and specs[k].get("type") in ("float", "int")]
    best = f"best_{metric}"
    per_epoch = list(dict.fromkeys([metric, "val_miou"]))
    section = "hairseg-sweep-comparison"

    def chart(kind: str, uuid: str, **fields: Any) -> dict[str, Any]:
        base = {"uuid": uuid, "type": kind, "runsCountToCompare": 100, "metricSectionId": section}
        return {**base, "deleted": False, "isGenerated": False, **fields}

    charts = [
        chart(
            "LINE",
            f"hairseg-line-{key}",
            metricKey=key,
            displayName=f"{key} per epoch, every trial",
            xAxisKey="step",
            scaleType="linear",
            xAxisScaleType="linear",
            lineSmoothness=0,
            useGlobalXaxisKey=False,
            useGlobalLineSmoothing=False,
        )
        for key in per_epoch
    ]
    if params:
        charts.append(
            chart(
                "PARALLEL",
                "hairseg-parallel",
                displayName=f"sampled parameters vs {best}",
                selectedParams=params[:8],
                selectedMetrics=[best],
                showAllRuns=False,
            )
        )
    if numeric:
        charts.append(
            chart(
                "SCATTER",
                "hairseg-scatter",
                displayName=f"{numeric[0]} vs {best}",
                xaxis={"key": numeric[0], "type": "PARAM"},
                yaxis={"key": best, "type": "METRIC"},
            )
        )
    charts.append(chart("BAR", f"hairseg-bar-{best}", metricKey=best, displayName=f"{best} per trial"))
    # Few metric columns, so the sampled values fit on a screen: the UI orders columns itself (attributes,
    # metrics and parameters alphabetically, tags) and the table scrolls sideways beyond its width. The
    # dataset is on each run's page and in the Datasets filter; the other metrics in the chart view.
    columns = [_col("metrics", k) for k in dict.fromkeys([best, "best_val_miou", metric, "val_miou"])]
    columns += [_col("params", k) for k in params]
    columns += [_col("tags", k) for k in ("hairseg.epochs_run", "hairseg.early_stopped")]
    state = {
        "searchFilter": f"tags.`{TAG_SWEEP}` = '{sweep}'",
        "orderByKey": _col("metrics", best),
        "orderByAsc": mode == "min",
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": list(dict.fromkeys(columns)),
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": charts,
        "compareRunSections": [
            {
                "uuid": section,
                "name": f"Sweep {sweep}: trials compared",
                "display": True,
                "isReordered": False,
                "deleted": False,
                "isGenerated": False,
            }
        ],
        "isAccordionReordered": False,
        "hideEmptyCharts": True,
        "useGroupedValuesInCharts": True,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }
    return json.dumps(state)


def view_url(ui: str, experiment_id: str, key: str, charts: bool = False) -> str:
    """The address of a sweep's saved view in the UI at ``ui`` (``http://127.0.0.1:5000``).

    ``workflowType=machine_learning``: MLflow 3.17's UI picks the GenAI or the model-training layout
    from a switch it keeps per browser (GenAI by default), not from the experiment's kind tag.
    """
    mode = "&compareRunsMode=CHART" if charts else ""
    query = f"workflowType=machine_learning&viewStateShareKey={key}{mode}"
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def ui_address(tracking_uri: str) -> str:
    """Where the UI of this store is: the tracking server itself, or what :func:`ui_command` starts."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return "http://127.0.0.1:5000"


def ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser"
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


def log_sweep_summary(
    tracker: Tracker, parent_run_id: str, rows: list[dict[str, Any]], study: Any, best: Any, metric: str
) -> None:
    """Results table, Optuna plots and the best trial onto the sweep's parent run."""
    import matplotlib  # deferred: matplotlib only for the sweep's plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: after choosing the Agg backend
    import optuna.visualization.matplotlib as ovm  # deferred: Optuna's plots only here

    if rows:
        tracker.log_table(parent_run_id, rows, "results/trials.json")
    tracker.log_dict(parent_run_id, best.to_dict(), "best_trial.json")
    tracker.set_tags(
        parent_run_id,
        {
            "hairseg.best_trial": best.trial_id,
            "hairseg.best_run_id": best.mlflow_run_id or "",
            "hairseg.best_checkpoint": best.checkpoint_path,
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


def resolve_model_uri(uri: str, tracking_uri: str | None = None) -> Path:
    """``models:/hairseg@champion`` (or ``models:/hairseg/3``) → local folder with model.onnx/.ts/.json.

    The final stage tags each registered version with the run that holds its webcam exports;
    this downloads that ``export/`` folder.
    """
    if not uri.startswith("models:/"):
        raise ValueError(f"{uri!r} is not a models:/ URI")
    tracking_uri = resolve_tracking_uri(tracking_uri)
    try:
        require_existing_store(tracking_uri)  # a look-up never creates an empty sqlite store
    except TrackingUnavailable as exc:
        raise FileNotFoundError(f"{uri}: {exc}") from None
    client = MlflowClient(tracking_uri)
    name, _, ref = uri[len("models:/") :].partition("@")
    try:
        if ref:
            version = with_retries(lambda: client.get_model_version_by_alias(name, ref), "resolve model alias")
        else:
            name, _, number = name.partition("/")
            version = with_retries(lambda: client.get_model_version(name, number), "get model version")
    except MlflowException as exc:
        login = _login_problem(tracking_uri, exc)
        if login is not None:
            raise login from None
        raise FileNotFoundError(
            f"{uri}: no such registered model version in {tracking_uri} ({_first_line(exc)})"
        ) from None
    run_id = version.tags.get("hairseg.export_run_id") or version.run_id
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="export", tracking_uri=tracking_uri))
