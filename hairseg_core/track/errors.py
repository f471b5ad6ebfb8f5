"""What can go wrong talking to MLflow, as exceptions that say so in one line.

The entry points turn each of these into a one-line error and exit status 2; ``login_problem`` tells a
refused login (which no retry fixes) from an outage (which ``hairseg_core.track.retry`` rides out).
"""

from __future__ import annotations

import os

from mlflow.exceptions import MlflowException

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


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking store cannot be reached or written."""


class SweepNameTaken(ValueError):
    """A new sweep was given the name of a sweep that exists: one name, one sweep."""


class TrackingLoginFailed(TrackingUnavailable):
    """The MLflow server wants a login and refused this one (or got none); a retry cannot fix it."""


class UnknownExperiment(LookupError):
    """A look-up named an MLflow experiment the store does not have (nothing was created)."""


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an exception's message (MLflow's run to many lines), else its type."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def login_problem(tracking_uri: str, exc: MlflowException) -> TrackingLoginFailed | None:
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
            f"the MLflow server at {tracking_uri} denies user {user!r} this request: {first_line(exc)}"
        )
    return None
