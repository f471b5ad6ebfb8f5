"""Errors that would repeat: a trial that cannot succeed fails once instead of ``max_failures`` times.

Tune decides whether to retry a failed trial from ``max_failures`` alone. The trial side
(:func:`fail_once`) tells a named actor, :class:`FailOnceBoard`, before raising; the driver side
(:class:`FailOnceCallback`) lowers that trial's retry budget and acknowledges. Both halves of the
protocol live here so the board's name and messages cannot drift apart.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.tune import Callback
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

logger = logging.getLogger(__name__)


def _board_name(sweep: str) -> str:
    return f"hairseg-fail-once-{sweep}"


@ray.remote(num_cpus=0)
class FailOnceBoard:
    """Where a trial says "my error will repeat" before raising it, and the driver acknowledges.

    Tune decides whether to retry a failed trial from ``max_failures`` alone. The driver's
    :class:`FailOnceCallback` reads this board at every step of Tune's loop and lowers the
    reporting trial's retry budget to what it has used; the trial raises only after that
    acknowledgement, so Tune never retries it.
    """

    def __init__(self) -> None:
        self._pending: dict[str, str] = {}
        self._acknowledged: set[str] = set()

    def report(self, trial_id: str, message: str) -> None:
        self._pending[trial_id] = message

    def drain(self) -> dict[str, str]:
        pending, self._pending = self._pending, {}
        return pending

    def acknowledge(self, trial_ids: list[str]) -> None:
        self._acknowledged.update(trial_ids)

    def acknowledged(self, trial_id: str) -> bool:
        if trial_id in self._acknowledged:
            self._acknowledged.discard(trial_id)
            return True
        return False


class FailOnceCallback(Callback):
    """Driver side of :class:`FailOnceBoard`: a trial that cannot succeed is not retried.

    ``Trial.max_failures`` is the attribute ``Trial.should_recover`` compares the failure count
    with; setting it to the failures so far makes the coming failure the last.
    """

    def __init__(self, sweep: str) -> None:
        self.sweep = sweep
        self._board: Any = None
        self._pending: Any = None

    def _ensure_board(self) -> Any:
        if self._board is None:
            # On the driver's node: a worker node that dies (spot preemption) must not take it along.
            here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
            self._board = FailOnceBoard.options(
                name=_board_name(self.sweep), get_if_exists=True, scheduling_strategy=here
            ).remote()
        return self._board

    def setup(self, **info: Any) -> None:
        self._ensure_board()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        board = self._ensure_board()
        if self._pending is None:
            self._pending = board.drain.remote()
        ready, _ = ray.wait([self._pending], timeout=0)
        if not ready:
            return
        try:
            reported: dict[str, str] = ray.get(self._pending)
        except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError) as exc:
            # The board went away with its node: start a new one; a trial that reported to the
            # old one is retried as usual after its acknowledgement timeout (never worse than Tune).
            logger.warning("fail-once board lost (%s); starting a new one", type(exc).__name__)
            self._board = self._pending = None
            return
        self._pending = None
        if not reported:
            return
        by_id = {t.trial_id: t for t in trials}
        for trial_id, message in reported.items():
            trial = by_id.get(trial_id)
            if trial is not None:
                trial.max_failures = trial.run_metadata.num_failures
                logger.warning("trial %s will not be retried: %s", trial_id, message)
        ray.get(board.acknowledge.remote(list(reported)))

    def __getstate__(self) -> dict[str, Any]:  # actor handles and futures do not survive a resume
        return {**self.__dict__, "_board": None, "_pending": None}


def fail_once(trial_id: str, sweep: str, error: BaseException, timeout: float = 60.0) -> None:
    """Tell the driver that ``error`` will repeat, and wait until it has lowered the retry budget.

    Without a driver that listens (an old one, or no board), the error is raised after
    ``timeout`` and Tune retries as usual: never worse than before.
    """
    try:
        board = ray.get_actor(_board_name(sweep))
    except ValueError:
        return
    ray.get(board.report.remote(trial_id, f"{type(error).__name__}: {error}"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ray.get(board.acknowledged.remote(trial_id)):
            return
        time.sleep(0.1)
    logger.warning("the driver did not acknowledge within %.0f s; Tune may retry this trial", timeout)
