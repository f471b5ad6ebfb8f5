"""Every MLflow call rides out a short outage (a server restart, a network blip) and then fails clearly.

``with_retries`` is the policy for calls that may be repeated; ``create_once`` for the creates that may not
(a run, a logged model, a model version), which a lost answer would otherwise make twice.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

from mlflow.exceptions import MlflowException

from hairseg_core.track.errors import PERMANENT_ERRORS, TrackingUnavailable

T = TypeVar("T")

#: Seconds one tracking call keeps retrying through an outage before it gives up (env override).
RETRY_BUDGET_ENV = "HAIRSEG_TRACKING_RETRY_S"
DEFAULT_RETRY_BUDGET_S = 120.0

logger = logging.getLogger(__name__)


def retry_budget() -> float:
    """The outage a tracking call rides out: long enough for an ``mlflow server`` restart."""
    raw = os.environ.get(RETRY_BUDGET_ENV)
    if raw is None:
        return DEFAULT_RETRY_BUDGET_S
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise ValueError(f"{RETRY_BUDGET_ENV}={raw!r}: expected a number of seconds") from None


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
