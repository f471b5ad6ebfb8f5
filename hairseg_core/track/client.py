"""Where the MLflow store is, how to log in to it, and whether it answers: before any run is touched.

* The default store is a sqlite file in the working directory, made absolute so that Ray
  workers (whose working directory differs) write to the same file. ``MLFLOW_TRACKING_URI``
  or ``--tracking-uri`` point elsewhere, e.g. an ``mlflow server`` on the cluster's head node.
* A remote server is probed before the sweep starts: a typo in the URI fails in a second, not
  after the first trial has trained for an hour.
* Every call goes through an explicit ``MlflowClient`` (:func:`tracking_client`), never the fluent
  ``mlflow.start_run`` stack: trials run in Ray worker processes and threads.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from hairseg_core.track.errors import TrackingUnavailable, first_line, login_problem

DEFAULT_DB = "mlruns.db"
DEFAULT_ARTIFACTS = "mlartifacts"

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


def limit_mlflow_http_retries() -> None:
    """Make MLflow's own HTTP layer give up quickly, so ``with_retries`` alone sets the policy.

    By default MLflow retries each request 7 times with exponential backoff and a 120 s
    timeout: minutes per call against a dead server, multiplied by our retries and by every
    call a trial makes. Values the user set in the environment are left alone.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def tracking_client(tracking_uri: str) -> MlflowClient:
    """The client every hairseg call goes through; against a server, MLflow's own retries are cut short first."""
    if tracking_uri.startswith(("http://", "https://")):
        limit_mlflow_http_retries()
    return MlflowClient(tracking_uri)


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
        login = login_problem(tracking_uri, exc)
        if login is not None:
            raise login from None
        raise TrackingUnavailable(f"MLflow store {tracking_uri} is not usable: {first_line(exc)}") from None
