"""A sweep's cost before it starts: GPU-hours and wall time, as an upper bound and an expected value.

Why: a paper-scale space is 64 trials x 80 epochs; what that costs on the cluster at hand should be known
before the first GPU-hour is spent, and compared with what it really took afterwards (both are printed and
logged on the sweep's MLflow run, so the next estimate can be judged).

The model, stated so it can be checked:

* one epoch trains ``min(train images // batch, max_steps_per_epoch)`` steps of ``batch`` images at the
  measured training rate of the trial's backbone, crop and batch (``hairseg_core.train.gpu_table``; scaled by
  pixels per image where not measured), then validates the validation images and ``precise_bn_batches``
  batches forward only, counted at 3x the training rate (a forward pass is about a third of a step);
* trials sharing a GPU (``resources.gpu`` = 1/N) each get ``speedup(N) / N`` of the rate, with the measured
  aggregate speedup of N processes where one was measured, else none (a large model already fills the GPU);
* ASHA: the upper bound trains every trial for every epoch; the expected value lets 1 / reduction_factor
  of the trials past each rung (ASHA's design; early trials of an asynchronous run pass more often);
* the searched choices are equally likely (the expected value averages over them, the bound takes the
  slowest);
* GPU-hours are trial hours x GPU share; wall time spreads the trials over what runs at once (the GPUs the
  cluster has or its autoscaler can add, ``max_concurrent_trials`` and ``num_samples``).

Not counted: data loading (on the trial's CPUs), worker start, per-trial latency measurement, the final stage.
The rates are one GPU model's (the table's); another GPU model's time differs, and the estimate says so.
On a CPU run there is no rate to use, so only the workload (images to train) is estimated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hairseg_core.config import SearchSpace
from hairseg_core.scaling import effective_eval_size
from hairseg_core.search.gpu_plan import (
    ClusterView,
    NodeShape,
    TrialShape,
    iter_gpu_names,
    setting_values,
    trial_device,
    trial_shapes,
)
from hairseg_core.track.tags import (
    TAG_ESTIMATE_BASIS,
    TAG_ESTIMATE_CLUSTER_GPUS,
    TAG_ESTIMATE_CPU_RUN,
    TAG_ESTIMATE_RATES_GPU,
)
from hairseg_core.train.gpu_table import GpuTable, default_table

#: A forward pass (validation, precise BN) costs about this fraction of a training step per image.
FORWARD_FRACTION = 1 / 3


def asha_epochs(epochs: int, grace_period: int, reduction_factor: float, scheduler: str = "asha") -> float:
    """Expected epochs per trial when 1/rf of the trials pass each rung (rungs at grace x rf^k < epochs)."""
    if scheduler != "asha":
        return float(epochs)
    rungs = []
    rung = float(grace_period)
    while rung < epochs:
        rungs.append(rung)
        rung *= reduction_factor
    expected, start, reaching = 0.0, 0.0, 1.0
    for stop in [*rungs, float(epochs)]:
        expected += reaching * (stop - start)
        start = stop
        reaching /= reduction_factor
    return expected


@dataclass(frozen=True)
class DataSize:
    """Images per epoch the trials see; ``source`` says how they were counted (or why not)."""

    train: int | None
    val: int | None
    source: str


def count_images(space: SearchSpace) -> DataSize:
    """Train and validation images of the space's data, from the dataset listings (no image is decoded)."""
    from hairseg_core.data import build_dataset  # deferred: the dataset package imports OpenCV and torch
    from hairseg_core.data.sampling import describe_shares

    cfg = space.trial_config({})

    def listed(split: str) -> dict[str, int]:
        sources = [s for s in cfg.data_sources if getattr(s, split)]
        return {s.name: len(build_dataset(s.dataset, split, root=s.data_root, **s.dataset_options)) for s in sources}

    try:
        train, val = listed("train"), listed("val")
    except Exception as exc:  # the data may live on the workers only; the estimate then has no size
        return DataSize(None, None, f"not counted ({type(exc).__name__}: {str(exc)[:160]})")
    names = ", ".join(s.name for s in cfg.data_sources if s.train or s.val)
    source = f"listed from {names}"
    if len(train) > 1:
        source += f"; {describe_shares(cfg.data_sources, train)}"
    return DataSize(sum(train.values()), sum(val.values()), source)


@dataclass
class CostEstimate:
    """What the sweep is expected to cost; :meth:`lines` prints it, :meth:`metrics` / :meth:`tags` log it."""

    cpu_run: bool
    trials: int
    concurrency: int
    train_images_upper: float | None = None
    train_images_expected: float | None = None
    gpu_hours_upper: float | None = None
    gpu_hours_expected: float | None = None
    wall_hours_upper: float | None = None
    wall_hours_expected: float | None = None
    rates_gpu: str | None = None
    cluster_gpus: list[str] = field(default_factory=list)
    basis: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: one line per trial shape (rate, where it comes from, sharing, time per epoch): logged, not printed
    details: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = []
        if self.cpu_run:
            out.append(
                f"cost estimate (CPU run): {self.trials} trials, {self.concurrency} at a time; no time estimate on CPU"
            )
        else:
            out.append(f"cost estimate: {self.trials} trials, {self.concurrency} at a time on the cluster it sees")
        if self.train_images_upper is not None:
            out.append(
                f"  training images: {_big(self.train_images_expected)} expected (ASHA), "
                f"{_big(self.train_images_upper)} at most"
            )
        if self.gpu_hours_upper is not None:
            out.append(
                f"  GPU-hours: {self.gpu_hours_expected:.2f} expected, {self.gpu_hours_upper:.2f} at most; "
                f"wall time: {_hours(self.wall_hours_expected)} expected, {_hours(self.wall_hours_upper)} at most"
            )
        out += [f"  {line}" for line in self.basis + self.notes]
        return out

    def metrics(self) -> dict[str, float]:
        names = (
            "train_images_upper",
            "train_images_expected",
            "gpu_hours_upper",
            "gpu_hours_expected",
            "wall_hours_upper",
            "wall_hours_expected",
        )
        out = {f"estimate_{n}": float(getattr(self, n)) for n in names if getattr(self, n) is not None}
        out["estimate_concurrency"] = float(self.concurrency)
        return out

    def tags(self) -> dict[str, str]:
        return {
            TAG_ESTIMATE_CPU_RUN: str(self.cpu_run).lower(),
            TAG_ESTIMATE_RATES_GPU: self.rates_gpu or "none",
            TAG_ESTIMATE_CLUSTER_GPUS: ", ".join(self.cluster_gpus) or "none",
            TAG_ESTIMATE_BASIS: "\n".join(self.basis + self.notes)[:4900],
        }

    def text(self) -> str:
        """Everything, for the sweep run's ``cost/estimate.txt``."""
        return "\n".join([*self.lines(), "per trial configuration:", *(f"  {d}" for d in self.details)]) + "\n"


def _big(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value / 1e6:.2f} M" if value >= 1e6 else f"{value:,.0f}"


def _hours(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.2f} h" if value >= 1 else f"{value * 60:.0f} min"


def _concurrency(space: SearchSpace, cluster: ClusterView, cpu_run: bool) -> int:
    """Trials that can run at once: per node, as many as both its GPUs and its CPUs hold."""
    limit = space.num_samples
    if space.max_concurrent_trials:
        limit = min(limit, space.max_concurrent_trials)
    gpu, cpu = (0.0 if cpu_run else space.resources.gpu), space.resources.cpu

    def slots(nodes: tuple[NodeShape, ...]) -> int:
        total = 0
        for node in nodes:
            by_cpu = math.floor(node.cpus / cpu + 1e-9) if cpu else limit
            by_gpu = math.floor(node.gpus / gpu + 1e-9) if gpu else by_cpu
            total += min(by_cpu, by_gpu) * node.count
        return total

    # the autoscaler's node types at their maximum include the live workers of those types
    return max(1, min(limit, max(slots(cluster.nodes), slots(cluster.node_types))))


def _trial_images(shape: TrialShape, space: SearchSpace, data: DataSize) -> tuple[float, float] | None:
    """(training images, forward-only images) of one epoch of a trial of ``shape``."""
    if data.train is None:
        return None
    steps = data.train // shape.batch
    max_steps = space.fixed.get("max_steps_per_epoch")
    if max_steps:
        steps = min(steps, int(max_steps))
    bn = int(space.fixed.get("precise_bn_batches", 0) or 0) * shape.batch
    return float(steps * shape.batch), float((data.val or 0) + bn)


def estimate_cost(
    space: SearchSpace, cluster: ClusterView, data: DataSize, table: GpuTable | None = None
) -> CostEstimate:
    """The sweep's estimated workload, GPU-hours and wall time on ``cluster`` (see the module docstring)."""
    table = table or default_table()
    cpu_run = space.resources.gpu == 0 or trial_device(space) == "cpu"
    concurrency = _concurrency(space, cluster, cpu_run)
    estimate = CostEstimate(cpu_run=cpu_run, trials=space.num_samples, concurrency=concurrency)
    estimate.cluster_gpus = list(iter_gpu_names(cluster))
    expected_epochs = _expected_epochs(space, estimate)
    estimate.basis.append(
        f"data: {data.train if data.train is not None else '?'} train / "
        f"{data.val if data.val is not None else '?'} val images ({data.source})"
    )
    per_epoch = [(s, _trial_images(s, space, data)) for s in trial_shapes(space)]
    if any(images is None for _, images in per_epoch):
        estimate.notes.append("no estimate: the data set size is unknown on this machine")
        return estimate
    train_per_epoch = [images[0] for _, images in per_epoch if images]
    estimate.train_images_upper = space.num_samples * space.epochs * max(train_per_epoch)
    estimate.train_images_expected = space.num_samples * expected_epochs * sum(train_per_epoch) / len(train_per_epoch)
    if cpu_run:
        estimate.notes.append(
            "CPU run: the rate table is GPU-measured (benchmarks/README.md, GPU settings), so no hours are estimated"
        )
        return estimate
    timed = _trial_hours(estimate, space, per_epoch, table)
    if timed is None:
        return estimate
    trial_hours, rates_from = timed
    _gpu_and_wall_hours(estimate, space, trial_hours, expected_epochs)
    _note_gpu_models(estimate, rates_from)
    estimate.notes.append("GPU compute only: data loading, worker start and the final stage are not counted")
    return estimate


def _expected_epochs(space: SearchSpace, estimate: CostEstimate) -> float:
    """Epochs a trial runs on average once ASHA stops some early; the basis says how it was counted."""
    epochs = space.epochs
    scheduler = space.scheduler
    expected_epochs = asha_epochs(epochs, scheduler.grace_period, scheduler.reduction_factor, scheduler.type)
    rungs = f" (ASHA grace {scheduler.grace_period}, reduction {scheduler.reduction_factor:g})"
    estimate.basis.append(
        f"epochs: {epochs} at most, {expected_epochs:.2f} expected per trial"
        + (rungs if scheduler.type == "asha" else "")
    )
    return expected_epochs


def _trial_hours(
    estimate: CostEstimate,
    space: SearchSpace,
    per_epoch: list[tuple[TrialShape, tuple[float, float] | None]],
    table: GpuTable,
) -> tuple[list[float], set[str]] | None:
    """GPU hours of one epoch per trial configuration, from the rate table (trials sharing a GPU run slower
    each, by the measured share speed-up), and the GPUs the rates were measured on; None (with a note) when
    a backbone was never measured."""
    share = space.resources.gpu
    per_gpu = max(1, math.floor(1 / share + 1e-9)) if share < 1 else 1
    eval_size = effective_eval_size(space.trial_config({}))
    amp = setting_values(space, "amp")
    settings: Mapping[str, Any] = {"amp": amp[0]} if len(amp) == 1 and isinstance(amp[0], bool) else {}
    trial_hours = []
    rates_from = set()
    measured, per_trial_rates = 0, []
    for shape, images in per_epoch:
        assert images is not None
        rate = table.train_rate(shape.backbone, shape.crop, shape.batch, shape.head, settings, shape.output_stride)
        if rate is None:
            estimate.notes.append(f"no estimate: {shape.backbone} was never measured on a GPU")
            return None
        speedup = table.share_speedup(shape.backbone, shape.crop, shape.batch, per_gpu)
        per_trial = rate.value * speedup.value / per_gpu
        forward_rate = per_trial / FORWARD_FRACTION * (shape.crop / float(eval_size)) ** 2
        seconds = images[0] / per_trial + images[1] / forward_rate
        trial_hours.append(seconds / 3600)
        rates_from.add(rate.basis.rsplit(" on ", 1)[-1])
        measured += rate.measured
        per_trial_rates.append(per_trial)
        estimate.details.append(
            f"{shape.describe()}: {rate.value:.0f} img/s alone ({rate.basis}); {per_gpu} per GPU: x{speedup.value:.2f} "
            f"aggregate ({speedup.basis}) -> {per_trial:.0f} img/s each, {seconds:.0f} s/epoch"
        )
    estimate.rates_gpu = ", ".join(sorted(rates_from))
    estimate.basis.append(
        f"training rate per trial: {min(per_trial_rates):.0f}-{max(per_trial_rates):.0f} img/s over "
        f"{len(per_epoch)} trial configurations ({measured} measured, the others scaled or by proxy; "
        f"{per_gpu} trial(s) per GPU)"
    )
    return trial_hours, rates_from


def _gpu_and_wall_hours(
    estimate: CostEstimate, space: SearchSpace, trial_hours: list[float], expected_epochs: float
) -> None:
    """Upper bounds from the slowest configuration run to the last epoch; expectations from the mean one
    stopped as ASHA would, ``concurrency`` trials at a time."""
    share, epochs = space.resources.gpu, space.epochs
    worst = max(trial_hours)
    mean = sum(trial_hours) / len(trial_hours)
    estimate.gpu_hours_upper = space.num_samples * epochs * worst * share
    estimate.gpu_hours_expected = space.num_samples * expected_epochs * mean * share
    waves = math.ceil(space.num_samples / estimate.concurrency)
    estimate.wall_hours_upper = waves * epochs * worst
    estimate.wall_hours_expected = space.num_samples * expected_epochs * mean / estimate.concurrency


def _note_gpu_models(estimate: CostEstimate, rates_from: set[str]) -> None:
    """Warn when the rates come from another GPU model than the cluster's (or the cluster's is unknown)."""
    measured_on = {r.split(" (")[0] for r in rates_from}
    same = any(g.replace("NVIDIA ", "") in m for g in estimate.cluster_gpus for m in measured_on)
    if estimate.cluster_gpus and not same:
        estimate.notes.append(
            f"the rates were measured on {', '.join(sorted(measured_on))}; the cluster's GPUs are "
            f"{', '.join(estimate.cluster_gpus)}: expect different times"
        )
    elif not estimate.cluster_gpus:
        estimate.notes.append(f"the cluster's GPU model is unknown; rates of {', '.join(sorted(measured_on))}")


@dataclass(frozen=True)
class ActualCost:
    wall_hours: float
    gpu_hours: float
    trials: int


def actual_cost(trial_seconds: list[float], wall_seconds: float, gpu_share: float) -> ActualCost:
    """What the sweep took: its wall time and the GPU-hours its trials held (trial time x share)."""
    return ActualCost(wall_seconds / 3600, sum(trial_seconds) * gpu_share / 3600, len(trial_seconds))


def compare_lines(estimate: CostEstimate, actual: ActualCost) -> list[str]:
    """The estimate beside what the sweep really took."""
    lines = [f"cost: the sweep took {_hours(actual.wall_hours)} wall time ({actual.trials} trials)"]
    if estimate.wall_hours_expected is not None:
        lines[0] += (
            f"; estimated {_hours(estimate.wall_hours_expected)} expected, {_hours(estimate.wall_hours_upper)} at most"
        )
    if estimate.gpu_hours_expected is not None:
        lines.append(
            f"  GPU-hours held: {actual.gpu_hours:.2f}; estimated {estimate.gpu_hours_expected:.2f} expected, "
            f"{estimate.gpu_hours_upper:.2f} at most"
        )
    return lines


def log_estimate(tracker: Any, run_id: str, estimate: CostEstimate) -> None:
    """The estimate on the sweep's MLflow run: metrics and tags (not params: a resumed sweep may log a new
    one) and ``cost/estimate.txt`` with every trial configuration's rate and its source."""
    tracker.log_metrics(run_id, estimate.metrics(), step=0)
    tracker.set_tags(run_id, estimate.tags())
    tracker.log_text(run_id, estimate.text(), "cost/estimate.txt")


def report_actual_cost(
    tracker: Any, run_id: str, estimate: CostEstimate, results: Any, wall_seconds: float, gpu_share: float
) -> ActualCost:
    """Print and log what the sweep took beside its estimate; ``results`` is Tune's ``ResultGrid``."""
    seconds = []
    for result in results:
        metrics = getattr(result, "metrics", None) or {}
        if isinstance(metrics.get("time_total_s"), (int, float)):
            seconds.append(float(metrics["time_total_s"]))
    actual = actual_cost(seconds, wall_seconds, gpu_share)
    for line in compare_lines(estimate, actual):
        print(line)
    tracker.log_metrics(run_id, {"actual_wall_hours": actual.wall_hours, "actual_gpu_hours": actual.gpu_hours}, step=0)
    return actual
