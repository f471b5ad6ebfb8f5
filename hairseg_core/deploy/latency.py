"""How fast a network runs, measured: median / p90 wall-clock of repeated CPU forward passes, params, MACs.

A multi-objective sweep trades accuracy against speed, so the speed has to be a measurement of the
trial's own network, not a guess from its settings. Latency depends on the architecture and the input
size only (not on the weights), so a trial measures it once, before training, and reports the same
measured value with every epoch (``hairseg_core.search.trial``): every result Tune, Optuna and ASHA see is
then complete, and nothing is invented for the epochs before the end.

The measurement is pinned so numbers from different trials compare: batch 1, a square input of the
deployment size (``finalize.export_size``, else the trained short side ``base_size``), eval mode,
``torch.no_grad``, on the CPU with a fixed thread count (``finalize.latency_threads``) that is restored
afterwards. Warm-up passes are not timed (allocator, oneDNN kernel selection), and the spread (p90) is
reported beside the median, because trials that train on the same node at the same time disturb each
other's timings and the spread shows how much. :func:`machine_info` names what was measured on.

This is the one place that times things: :func:`measure_latency` (one callable; trials, ``export_all``'s
per-back-end latency) and :func:`interleaved_times` (several callables in alternation, so background load
hits all alike; ``benchmarks/webcam_fps.py``, ``benchmarks/postprocess.py``), both summarised by
:func:`latency_stats`.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

#: Passes timed after warm-up; fewer make the median and p90 too noisy to rank trials by.
MIN_REPEATS = 20
DEFAULT_WARMUP = 5


@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock statistics of repeated calls, in milliseconds."""

    median_ms: float
    mean_ms: float
    p90_ms: float
    min_ms: float
    repeats: int

    @property
    def fps(self) -> float:
        return 1000.0 / self.median_ms if self.median_ms > 0 else float("inf")


def _percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list (numpy's default method)."""
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def latency_stats(times_ms: Sequence[float]) -> LatencyStats:
    """Median, mean, p90 (linear interpolation) and minimum of measured call times in milliseconds."""
    if not times_ms:
        raise ValueError("latency_stats needs at least one measured time")
    ordered = sorted(float(t) for t in times_ms)
    return LatencyStats(
        median_ms=statistics.median(ordered),
        mean_ms=statistics.fmean(ordered),
        p90_ms=_percentile(ordered, 0.9),
        min_ms=ordered[0],
        repeats=len(ordered),
    )


def measure_latency(fn: Callable[[], object], repeats: int = 30, warmup: int = DEFAULT_WARMUP) -> LatencyStats:
    """Call ``fn`` ``warmup`` times untimed (allocator, caches, lazy init), then time ``repeats`` calls.

    The median is the headline number because a shared 2-core machine produces occasional slow outliers
    that would dominate a mean; p90 says how wide the slow tail is.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return latency_stats(times)


def interleaved_times(
    calls: Mapping[str, Callable[[int], object]],
    rounds: int,
    warmup: int = DEFAULT_WARMUP,
    shuffle_seed: int | None = 0,
) -> dict[str, list[float]]:
    """Call every entry once per round (argument: the round index), ``warmup`` rounds untimed, then
    ``rounds`` timed; milliseconds per entry.

    Alternating the callables makes load from other processes on a shared machine hit every entry alike.
    With ``shuffle_seed`` (default 0) the order is reshuffled each round, reproducibly, so no entry always
    follows the same neighbour (thread pools winding down, caches); None keeps the mapping's order.
    """
    if rounds < 1 or warmup < 0:
        raise ValueError(f"need rounds >= 1 and warmup >= 0, got {rounds}, {warmup}")
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    rng = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)
    for index in range(warmup + rounds):
        if rng is not None:
            rng.shuffle(order)
        for name in order:
            fn = calls[name]
            start = time.perf_counter()
            fn(index)
            if index >= warmup:
                times[name].append((time.perf_counter() - start) * 1000.0)
    return times


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``, then give the caller its own count back.

    A trial trains with as many threads as Ray gave it; the latency is measured with the fixed count
    the search space states, so that a trial with 4 CPUs does not look 3x faster than one with 1.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example``: FLOPs / 2 (``FlopCounterMode`` counts a MAC
    as two FLOPs, and counts convolutions, matmuls and their kin; elementwise ops and pooling are free)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(example)
    return counter.get_total_flops() // 2


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(threads: int) -> dict[str, str]:
    """What a latency was measured on: CPU model, logical cores, threads used, torch build and back-ends."""
    parallel = torch.__config__.parallel_info()
    backend = next(
        (line.split(":", 1)[1].strip() for line in parallel.splitlines() if "parallel backend" in line), "unknown"
    )
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count() or "unknown"),
        "threads": str(threads),
        "torch": str(torch.__version__),  # a TorchVersion: checkpoints load weights_only, plain types only
        "backend": f"{backend} parallel, oneDNN {'on' if torch.backends.mkldnn.is_available() else 'off'}",
        "arch": platform.machine(),
    }


def describe_machine(info: dict[str, str]) -> str:
    """One line for tables and tags: ``AMD EPYC (2 cores), 1 thread, torch 2.14.1, OpenMP parallel, oneDNN on``."""
    threads = info.get("threads", "?")
    return (
        f"{info.get('cpu', '?')} ({info.get('cores', '?')} cores), {threads} thread{'' if threads == '1' else 's'}, "
        f"torch {info.get('torch', '?')}, {info.get('backend', '?')}"
    )


@dataclass(frozen=True)
class ModelCost:
    """A network's measured CPU latency at one input size and its size / compute."""

    latency_ms: float  # median of ``repeats`` timed passes
    latency_p90_ms: float
    params_m: float  # parameters, millions
    gmacs: float  # multiply-accumulates of one pass, billions
    input_size: int
    threads: int
    repeats: int
    machine: dict[str, str]

    def metrics(self) -> dict[str, float]:
        """The numbers a trial reports (``config.REPORTED_METRICS``)."""
        return {
            "latency_ms": self.latency_ms,
            "latency_p90_ms": self.latency_p90_ms,
            "params_m": self.params_m,
            "gmacs": self.gmacs,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelCost:
        return cls(**{**raw, "machine": dict(raw.get("machine", {}))})


def measure_model_cost(
    model: nn.Module,
    input_size: int,
    threads: int = 1,
    repeats: int = MIN_REPEATS,
    warmup: int = DEFAULT_WARMUP,
) -> ModelCost:
    """Latency (median, p90), parameters and MACs of ``model`` on a 1x3xSxS input, on the CPU.

    ``model`` is left untouched: a CPU copy in eval mode is measured, so this may be called on a
    trainer's model (on any device, in train mode) before it trains.
    """
    if repeats < MIN_REPEATS:
        raise ValueError(f"repeats must be >= {MIN_REPEATS} for a usable median and p90, got {repeats}")
    probe = copy.deepcopy(model).to("cpu").eval()
    example = torch.randn(1, 3, int(input_size), int(input_size), generator=torch.Generator().manual_seed(0))
    with torch_threads(threads):
        with torch.no_grad():
            stats = measure_latency(lambda: probe(example), repeats=repeats, warmup=warmup)
        macs = count_macs(probe, example)
    return ModelCost(
        latency_ms=round(stats.median_ms, 4),
        latency_p90_ms=round(stats.p90_ms, 4),
        params_m=round(count_params(probe) / 1e6, 6),
        gmacs=round(macs / 1e9, 6),
        input_size=int(input_size),
        threads=threads,
        repeats=repeats,
        machine=machine_info(threads),
    )
