"""Everything a sweep checks before Ray starts: a problem here fails in seconds, naming what is wrong.

Order matters for the time to an error: the Ray address (one TCP connect), the pretrained weights
(cheaper than decoding data), then the data every trial shares and the final stage's test split.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from hairseg_core.config import SearchSpace
from hairseg_core.data.errors import DataError
from hairseg_core.sweep.weights import sweep_weights
from hairseg_core.train import TrialData, load_trial_data


class PreflightError(Exception):
    """A check before Ray failed; the message is what the user reads (it names the file, backbone or host)."""


@dataclass
class Prepared:
    """What the checks produced for the trials: pretrained files and, when shared, the decoded data."""

    weights: dict[str, bytes]
    data: TrialData | None


def check_ray_address(address: str | None, timeout: float = 5.0) -> str | None:
    """Why a ``host:port`` cluster address is unusable, or None.

    ``ray.init`` retries an unreachable GCS forever (minutes of warnings, no exit), so a typo'd
    port or a head node that is down is caught here with one TCP connect.
    """
    if not address or address in {"auto", "local"}:
        return None
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not host or not port.isdigit():
        return f"Ray address {address!r} (--address / RAY_ADDRESS): expected host:port, ray://host:port, auto"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except OSError as exc:
        return (
            f"cannot reach the Ray cluster at {address} ({exc}). Check --address / RAY_ADDRESS, or start "
            "the head node (`ray start --head`); leave both unset to run on a local Ray instead."
        )


def share_data(space: SearchSpace) -> TrialData | None:
    """Decode the data once for all trials, unless the search space varies what data is read."""
    if {"dataset", "data_root", "dataset_options", "sources"} & set(space.params):
        return None
    return load_trial_data(space.trial_config({}), progress=True)


def check_trial_inputs(space: SearchSpace, finalize: bool = True) -> Prepared:
    """Resolve the weights, decode the shared data and (with ``finalize``) check the test split.

    Raises :class:`PreflightError` with the message to print; nothing has been recorded in MLflow yet.
    """
    # Pretrained weights first (cheaper than decoding data): resolved (fetched once if missing),
    # loaded strictly into their backbone, then handed to every trial through the object store (no trial downloads).
    from hairseg_core.models import WeightsMismatchError, WeightsNotFoundError

    try:
        weights = sweep_weights(space)
    except (WeightsNotFoundError, WeightsMismatchError) as exc:
        raise PreflightError(f"\nerror: pretrained weights: {exc}") from exc

    # The data every trial shares is decoded here, before Ray and before the MLflow parent run:
    # a corrupt image or a wrong path fails in seconds, naming the file.
    try:
        data = share_data(space)
    except (DataError, ValueError, FileNotFoundError) as exc:  # DataError names the file
        names = ", ".join(repr(s.dataset) for s in space.trial_config({}).data_sources)
        raise PreflightError(f"\nerror: dataset {names}: {exc}") from exc

    if finalize and data is not None:  # same data for every trial: its test split is known now
        from hairseg_core.finalize import check_test_split  # deferred: the exporters and post-processing

        split = space.finalize.test_split
        try:
            check_test_split(space.trial_config({}).model_dump(), split)
        except (DataError, ValueError, FileNotFoundError) as exc:
            raise PreflightError(
                f"\nerror: the final stage needs the {split!r} split: {exc}\n"
                "  set finalize.test_split in the search space, or pass --no-finalize"
            ) from exc
    return Prepared(weights, data)
