"""Everything a sweep checks before Ray starts: a problem here fails in seconds, naming what is wrong.

Order matters for the time to an error: the Ray address (one TCP connect), the pretrained weights
(cheaper than decoding data), then the data every trial shares and the final stage's test split.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from hairseg_core.config import SearchSpace
from hairseg_core.data.errors import DataError
from hairseg_core.data.input_path import (
    InputPlan,
    cache_sources,
    choose_mode,
    estimate_decoded_bytes,
    space_short_side,
)
from hairseg_core.search.weights import sweep_weights
from hairseg_core.threads import available_cpus
from hairseg_core.train.trainer import TrialData


class PreflightError(Exception):
    """A check before Ray failed; the message is what the user reads (it names the file, backbone or host)."""


@dataclass
class Prepared:
    """What the checks produced for the trials: pretrained files and, when shared, the data and its path.

    ``data`` is this node's cache of every split (memory-mapped); ``plan`` says whether trials get it
    through the object store (memory) or from each node's own cache (stream). Both None when the
    search space varies what data is read: each trial then prepares its own.
    """

    weights: dict[str, bytes]
    data: TrialData | None
    plan: InputPlan | None = None


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


def varies_data(space: SearchSpace) -> bool:
    """Whether trials read different data (a searched dataset, root or sources): then nothing is shared."""
    return bool({"dataset", "data_root", "dataset_options", "sources"} & set(space.params))


def plan_data(space: SearchSpace, progress: bool = True) -> tuple[TrialData, InputPlan]:
    """Choose the input path, then cache every train / val split on this node (decoding each file once).

    The choice comes first, from the decoded size estimated on a few samples per split: the memory path
    keeps every image at its own resolution (exactly the pixels it always had); the streaming path's cache
    shrinks images far larger than any trial reads (:mod:`hairseg_core.data.node_cache`). The cache is
    kept: the next sweep over the same files (same names, sizes and times) starts at once.
    """
    settings = space.data
    cfg = space.trial_config({})
    budget = int(settings.memory_budget_gib * 2**30)
    mode = choose_mode(settings.input, estimate_decoded_bytes(cfg), budget)
    store = None if mode == "memory" else space_short_side(space)
    workers = settings.cache_workers or available_cpus()
    cached = cache_sources(cfg, settings.cache_dir, store, workers=workers, progress=progress)
    data = TrialData.from_parts(cached["train"], cached["val"])
    plan = InputPlan(
        mode=mode,
        decoded_bytes=sum(split.nbytes for role in cached.values() for _, split in role),
        budget_bytes=budget,
        cache_dir=settings.cache_dir or "(each node's default: $HAIRSEG_DATA_CACHE or ~/.cache/hairseg/data)",
        store_short_side=store,
        requested=settings.input,
        counts={f"{name}/{role}": len(split) for role, parts in cached.items() for name, split in parts},
    )
    return data, plan


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

    # The data every trial shares is decoded here (into this node's cache), before Ray and before the
    # MLflow parent run: a corrupt image or a wrong path fails now, naming the file.
    data, plan = None, None
    if not varies_data(space):
        try:
            data, plan = plan_data(space)
        except (DataError, ValueError, FileNotFoundError) as exc:  # DataError names the file
            names = ", ".join(repr(s.dataset) for s in space.trial_config({}).data_sources)
            raise PreflightError(f"\nerror: dataset {names}: {exc}") from exc

    if finalize and data is not None:  # same data for every trial: its test split is known now
        from hairseg_core.final.test_split import check_test_split  # deferred: the exporters and post-processing

        split = space.finalize.test_split
        try:
            check_test_split(space.trial_config({}), split)
        except (DataError, ValueError, FileNotFoundError) as exc:
            raise PreflightError(
                f"\nerror: the final stage needs the {split!r} split: {exc}\n"
                "  set finalize.test_split in the search space, or pass --no-finalize"
            ) from exc
    return Prepared(weights, data, plan)
