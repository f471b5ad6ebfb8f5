"""The only Ray Tune / Optuna glue: search space → OptunaSearch + ASHA → trials → results.

A trial is ``train.Trainer`` driven one epoch at a time: each epoch is reported to Tune
(``ray.tune.report`` with a ``tune.Checkpoint``), so ASHA can stop it early, and logged to
the trial's own MLflow child run. The decoded dataset is handed to trials through
``tune.with_parameters``: it is put into Ray's object store once and read by every trial on a
node, instead of each trial decoding the images again.

This module never calls ``ray.init``: the entry point (``pipelines/sweep.py``) owns the Ray
connection, so the same code runs locally, on ``ray up`` clusters and under KubeRay.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pyarrow.fs
import ray
import torch
from ray import tune
from ray.train._internal.session import _TrainingResult  # what Trainable.restore receives
from ray.tune import Callback, Checkpoint
from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from hairseg_core.config import ParamSpec, SearchSpace, TrainConfig, search_space_from_dict
from hairseg_core.data.fingerprint import fingerprint_config
from hairseg_core.latency import MIN_REPEATS, ModelCost, describe_machine, measure_model_cost
from hairseg_core.pareto import Selection, SelectionError, TrialPoint, pareto_front, select
from hairseg_core.tracking import Tracker, start_system_metrics, with_retries
from hairseg_core.train import CHECKPOINT_FILE, CheckpointError, Trainer, TrialData, load_checkpoint, load_trial_data
from hairseg_core.trial_errors import NonRetriableTrialError, is_deterministic
from hairseg_core.visualize import prediction_panel

logger = logging.getLogger(__name__)

#: Optuna names a backbone-dependent choice ``batch_size@resnet101``: a categorical's choices
#: may not change between trials under one name, so each parent value gets its own name.
BY_SEPARATOR = "@"


# ----------------------------------------------------------------------------- search space
def _condition_holds(when: Mapping[str, Any] | None, sampled: Mapping[str, Any]) -> bool:
    for key, allowed in (when or {}).items():
        values = allowed if isinstance(allowed, list) else [allowed]
        if key not in sampled or sampled[key] not in values:
            return False
    return True


def _distribution(spec: ParamSpec, choices: list[Any] | None = None) -> optuna.distributions.BaseDistribution:
    if spec.type == "categorical":
        return optuna.distributions.CategoricalDistribution(choices if choices is not None else spec.choices)
    if spec.type == "int":
        return optuna.distributions.IntDistribution(
            int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1)
        )
    return optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)


def _suggest(trial: optuna.Trial, name: str, spec: ParamSpec) -> Any:
    if spec.type == "categorical":
        return trial.suggest_categorical(name, spec.choices)
    if spec.type == "int":
        return trial.suggest_int(name, int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1))
    return trial.suggest_float(name, spec.low, spec.high, log=spec.log, step=spec.step)


class SpaceSampler:
    """Optuna define-by-run function for a validated search space (picklable for resume)."""

    def __init__(self, params: Mapping[str, ParamSpec]) -> None:
        self.params = dict(params)

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        sampled: dict[str, Any] = {}
        for name, spec in self.params.items():
            if not _condition_holds(spec.when, sampled):
                continue
            if spec.by is not None:
                parent = sampled.get(spec.by)
                if parent is None:
                    continue
                choices = spec.choices[str(parent)] if str(parent) in spec.choices else spec.choices[parent]
                sampled[name] = trial.suggest_categorical(f"{name}{BY_SEPARATOR}{parent}", choices)
            else:
                sampled[name] = _suggest(trial, name, spec)
        return sampled

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        sampled = self.sample(trial)
        # Return the canonical names of backbone-dependent values as constants: the trial
        # config then has ``batch_size`` as well as Optuna's ``batch_size@resnet101``.
        return {k: v for k, v in sampled.items() if self.params[k].by is not None}

    def distributions(self, config: Mapping[str, Any]) -> dict[str, optuna.distributions.BaseDistribution]:
        """Optuna distributions of the parameters present in one trial's config."""
        out = {}
        for key in config:
            base, _, parent = key.partition(BY_SEPARATOR)
            spec = self.params.get(base)
            if spec is None:
                continue
            if parent and spec.by is not None:
                choices = spec.choices.get(parent) if isinstance(spec.choices, dict) else None
                out[key] = _distribution(spec, choices)
            elif spec.by is None:
                out[key] = _distribution(spec)
        return out


def sampled_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """A Tune trial config without Optuna's internal ``name@parent`` keys."""
    return {k: v for k, v in config.items() if BY_SEPARATOR not in k}


def build_searcher(space: SearchSpace) -> OptunaSearch:
    """Optuna through Ray Tune, on one objective or several.

    With several objectives OptunaSearch gets lists of metrics and modes and runs a multi-objective
    study: each trial is told its *last* result's values when it ends (Optuna takes no intermediate
    values then, so nothing is pruned by Optuna; ASHA does the early stopping). One objective stays a
    plain string, so the study keeps its intermediate values as before.
    """
    sampler_cfg = space.searcher
    if sampler_cfg.sampler == "random":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=space.seed)
    elif sampler_cfg.sampler == "nsga2":
        population = {"population_size": sampler_cfg.population_size} if sampler_cfg.population_size else {}
        sampler = optuna.samplers.NSGAIISampler(seed=space.seed, **population)
    else:
        sampler = optuna.samplers.TPESampler(seed=space.seed, n_startup_trials=sampler_cfg.n_startup_trials)
    storage = optuna.storages.RDBStorage(sampler_cfg.storage) if sampler_cfg.storage else None
    several = len(space.objectives) > 1
    return OptunaSearch(
        space=SpaceSampler(space.params),
        metric=[o.metric for o in space.objectives] if several else space.metric,
        mode=[o.mode for o in space.objectives] if several else space.mode,
        sampler=sampler,
        storage=storage,
        study_name=sampler_cfg.study_name or (space.name if storage else None),
    )


def build_scheduler(space: SearchSpace) -> ASHAScheduler | FIFOScheduler:
    """ASHA compares trials at each rung on one metric: ``scheduler.metric``, default the first objective."""
    if space.scheduler.type == "fifo":
        return FIFOScheduler()
    objective = space.scheduler_objective
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=objective.metric,
        mode=objective.mode,
        max_t=space.scheduler.max_t or space.epochs,
        grace_period=space.scheduler.grace_period,
        reduction_factor=space.scheduler.reduction_factor,
    )


# ----------------------------------------------------------------------------- the trial
@dataclass(frozen=True)
class TrackingSettings:
    tracking_uri: str
    experiment: str
    sweep: str
    parent_run_id: str


@dataclass(frozen=True)
class LatencySettings:
    """How each trial measures its network's CPU latency (``hairseg_core.latency.measure_model_cost``).

    ``export_size`` None: the trial's own ``base_size`` (what the export would default to).
    """

    export_size: int | None = None
    threads: int = 1
    repeats: int = MIN_REPEATS

    @classmethod
    def from_space(cls, space: SearchSpace) -> LatencySettings:
        settings = space.finalize
        return cls(settings.export_size, settings.latency_threads, settings.latency_repeats)

    def input_size(self, cfg: TrainConfig) -> int:
        return int(self.export_size or cfg.base_size)


def _trial_resources() -> int:
    """Whole CPUs Ray gave this trial (at least one): the trial's torch and loader threads."""
    resources = tune.get_context().get_trial_resources()
    if resources is None:  # not inside a Tune trial (a direct call in a test)
        return 1
    return max(1, int(resources.required_resources.get("CPU", 1)))


# ----------------------------------------------------------------------------- weights on every node
#: Pretrained files the driver resolved before Ray started, by the name the lookup expects them under.
WeightsFiles = Mapping[str, bytes]


def install_weights(files: WeightsFiles | None, directory: Path | None = None) -> list[Path]:
    """Write the driver's pretrained files into this node's torch hub cache, where missing.

    The driver resolves (and if needed fetches) every backbone's ImageNet file once, before Ray
    starts, and hands the bytes to the trials through the object store; a trial on a node whose
    cache lacks a file writes it there (temporary file + rename, so concurrent trials on one node
    never see half a file) instead of each of N workers downloading the same file at once.
    Returns the files written.
    """
    if not files:
        return []
    directory = directory or Path(torch.hub.get_dir()) / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, payload in files.items():
        target = directory / name
        if target.is_file() and target.stat().st_size == len(payload):
            continue
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".part")
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
        os.replace(tmp, target)
        logger.info("installed pretrained weights %s (%d bytes) from the driver", target, len(payload))
        written.append(target)
    return written


def sweep_weights(space: SearchSpace, progress: bool = True) -> dict[str, bytes]:
    """Every ImageNet file the space's trials may need, resolved (fetched if missing) and checked.

    Runs on the driver before Ray starts and before the MLflow parent run: a missing, corrupt or
    mismatched file fails here in seconds, naming the backbone and the file (``WeightsNotFoundError``
    / ``WeightsMismatchError``), instead of in every trial. Each file is loaded strictly into its
    backbone once. Returns ``{file name: bytes}`` for :func:`install_weights` on the trials' nodes.
    """
    from hairseg_core.models import BACKBONES, PRETRAINED_SOURCES, load_pretrained_backbone
    from hairseg_core.models.fetch import ensure_imagenet_weights, imagenet_backbones

    files: dict[str, bytes] = {}
    for backbone in imagenet_backbones(space):
        path = ensure_imagenet_weights(backbone, progress=progress)
        source = PRETRAINED_SOURCES[backbone]
        load_pretrained_backbone(BACKBONES.build(backbone), backbone, path)
        name = path.name if path.name in source.file_names else source.file_names[0]
        files[name] = path.read_bytes()
    return files


# ----------------------------------------------------------------------------- errors that would repeat
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


def _fail_once(trial_id: str, sweep: str, error: BaseException, timeout: float = 60.0) -> None:
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


_CHECKPOINT_DIR = re.compile(r"checkpoint_(\d+)$")


def _holds_checkpoint_file(checkpoint: Checkpoint) -> bool:
    """Whether ``checkpoint`` still holds its model file (a deletion may have been cut short)."""
    info = checkpoint.filesystem.get_file_info(f"{checkpoint.path.rstrip('/')}/{CHECKPOINT_FILE}")
    return info.type == pyarrow.fs.FileType.File


def surviving_checkpoint(missing: Checkpoint) -> tuple[Checkpoint, int] | None:
    """The newest readable checkpoint its trial wrote before ``missing``, with its epoch; else None.

    Checkpoint folders are numbered in the order a trial reports them, so a lower number was
    written earlier, fully (a trial persists a checkpoint before reporting it).
    """
    parent, _, name = missing.path.rstrip("/").rpartition("/")
    number = _CHECKPOINT_DIR.match(name)
    if number is None:
        return None
    missing_index = int(number.group(1))
    selector = pyarrow.fs.FileSelector(parent, allow_not_found=True)
    earlier = []
    for info in missing.filesystem.get_file_info(selector):
        found = _CHECKPOINT_DIR.match(info.base_name)
        if found and info.type == pyarrow.fs.FileType.Directory and int(found.group(1)) < missing_index:
            earlier.append((int(found.group(1)), info.path))
    for _, path in sorted(earlier, reverse=True):
        candidate = Checkpoint(path, filesystem=missing.filesystem)
        if not _holds_checkpoint_file(candidate):
            continue
        try:
            with candidate.as_directory() as local:
                epoch = int(load_checkpoint(local)["epoch"])
        except (CheckpointError, OSError) as exc:
            logger.warning("skipping unreadable checkpoint %s: %s", path, exc)
            continue
        return candidate, epoch
    return None


class RestoreFromSurvivingCheckpoint:
    """Trainable mixin: when Tune's checkpoint of a trial is gone, continue from an earlier one.

    Tune deletes a trial's checkpoints beyond ``num_to_keep`` (keeping the best by the metric,
    and the newest) as soon as a new one arrives, but writes its experiment state only every
    few seconds. A driver killed in between (OOM, preemption, a closed laptop) leaves a state
    that names a deleted checkpoint, and Tune's own restore then fails the trial on every retry:
    ``--resume`` would end an unfinished trial ERROR. Any earlier checkpoint is a consistent
    point to continue from: the epochs after it are trained again and reported with the same
    iteration numbers, as when Tune's state merely predates a trial's last epochs. With no
    earlier checkpoint the trial starts over.
    """

    def restore(self, checkpoint_path: Any) -> Any:
        result = checkpoint_path
        if isinstance(result, _TrainingResult) and not _holds_checkpoint_file(result.checkpoint):
            fallback = surviving_checkpoint(result.checkpoint)
            if fallback is None:
                logger.warning(
                    "checkpoint %s of this trial no longer exists and no earlier one does: the trial starts over",
                    result.checkpoint.path,
                )
                return None
            checkpoint, epoch = fallback
            logger.warning(
                "checkpoint %s of this trial no longer exists: continuing from %s (epoch %d)",
                result.checkpoint.path,
                checkpoint.path,
                epoch,
            )
            result = _TrainingResult(checkpoint=checkpoint, metrics={TRAINING_ITERATION: epoch})
        return super().restore(result)  # type: ignore[misc]


def run_trial(
    config: dict[str, Any],
    fixed: dict[str, Any],
    tracking: TrackingSettings,
    data: TrialData | None = None,
    weights: WeightsFiles | None = None,
    latency: LatencySettings | None = None,
) -> None:
    """Tune function trainable: one DeepLabv3+ configuration, reported once per epoch.

    Before training, the network's CPU latency, parameters and MACs are measured once (``latency``);
    they depend on the architecture alone and go into every epoch's result, so each result Tune,
    Optuna and ASHA see holds every objective. An error that would repeat on every attempt (see
    :mod:`hairseg_core.trial_errors`) ends the trial at once, recorded on its MLflow run; anything
    else is left to Tune's ``max_failures``.
    """
    # One "Checkpoint successfully created" line per epoch per trial drowns Tune's status table.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    context = tune.get_context()
    trial_id = context.get_trial_id()
    try:
        _train_trial(config, fixed, tracking, data, weights, latency or LatencySettings())
    except Exception as exc:
        if not is_deterministic(exc):
            raise
        error = NonRetriableTrialError(exc)
        _record_error(tracking, trial_id, error)
        _fail_once(trial_id, tracking.sweep, exc)
        raise error from exc


def _record_error(tracking: TrackingSettings, trial_id: str, error: BaseException) -> None:
    """Put the error's message on the trial's MLflow run (the driver closes it FAILED)."""
    tracker = Tracker(tracking.tracking_uri, tracking.experiment)
    run_id = tracker.find_trial(tracking.sweep, trial_id)
    if run_id is None:  # failed before its run existed (e.g. while building the model)
        run_id = tracker.start_trial(
            tracking.sweep, tracking.parent_run_id, trial_id, tune.get_context().get_trial_name(), params={}
        )
    tracker.set_tags(run_id, {"hairseg.error": str(error)[:4000], "hairseg.retried": False})


def _train_trial(
    config: dict[str, Any],
    fixed: dict[str, Any],
    tracking: TrackingSettings,
    data: TrialData | None,
    weights: WeightsFiles | None,
    latency: LatencySettings,
) -> None:
    sampled = sampled_settings(config)
    cfg = TrainConfig(**{**fixed, **sampled})
    cpus = _trial_resources()
    torch.set_num_threads(cpus)
    # The driver resolved every pretrained file before Ray started: a trial never downloads.
    os.environ["HAIRSEG_OFFLINE"] = "1"
    install_weights(weights)
    context = tune.get_context()
    trial_id, trial_name = context.get_trial_id(), context.get_trial_name()

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            trainer = Trainer.from_checkpoint(Path(ckpt_dir) / CHECKPOINT_FILE, data=data, cpus=cpus)
    else:
        trainer = Trainer(cfg, data=data, cpus=cpus)
    cost, measured = _model_cost(trainer, latency)

    tracker = Tracker(tracking.tracking_uri, tracking.experiment)
    known_run = tracker.current_trial_run(tracking.sweep, trial_id, trainer.extra.get("mlflow_run_id"))
    ended = _epochs_if_ended(tracker, known_run) if known_run else None
    if ended is not None:
        # The driver closed this trial's run (completed or stopped by ASHA) and then died
        # before Tune's experiment state recorded the end: do not train it again.
        trainer.extra["mlflow_run_id"] = known_run
        _catch_up(trainer, ended)
        return
    # The run's dataset inputs: those of the sweep's run when the driver decoded the data for every
    # trial (this node may not even hold the files), else the files this trial reads itself.
    run_id = tracker.start_trial(
        tracking.sweep,
        tracking.parent_run_id,
        trial_id,
        trial_name,
        params={**cfg.model_dump(), "sampled": sampled},
        run_id=known_run,
        sampled=sampled,
        datasets=fingerprint_config(cfg) if known_run is None and data is None else (),
    )
    if known_run is None and data is not None:
        tracker.copy_datasets(tracking.parent_run_id, run_id)
    logged = tracker.logged_epochs(run_id)
    if logged and max(logged) > trainer.epoch:
        # This attempt continues from an older point than the run has logged (a checkpoint Tune's
        # state had not recorded yet, or none): the epochs after it are trained again. One value per
        # epoch, from the attempt whose weights the trial keeps: continue in a copy of the run that
        # holds only the epochs up to the restored one.
        run_id = tracker.supersede_trial_run(
            run_id,
            keep_through=trainer.epoch,
            reason=f"attempt restarted from epoch {trainer.epoch}; the old run had logged epoch {max(logged)}",
        )
    trainer.extra["mlflow_run_id"] = run_id
    # Where this attempt runs and which epoch it continues from: after a node loss or a
    # --resume, the run shows the trial moved and restarted from its checkpoint, not from scratch.
    tracker.set_tags(
        run_id,
        {
            "hairseg.node_id": ray.get_runtime_context().get_node_id(),
            "hairseg.node_ip": ray.util.get_node_ip_address(),
            "hairseg.restored_from_epoch": trainer.epoch,
        },
    )
    if measured:  # a restored attempt reports the first attempt's measurement, already logged
        tracker.log_metrics(run_id, cost.metrics(), step=0)
        tracker.set_tags(run_id, _cost_tags(cost))
    monitor = start_system_metrics(run_id, tracking.tracking_uri)
    try:
        if trainer.epoch >= cfg.epochs:
            # Restored from its last epoch's checkpoint: Tune already holds that result, and
            # reporting it again would count an extra iteration. Returning ends the trial.
            return
        best = -math.inf
        for result in trainer.fit():
            tracker.log_metrics(run_id, {k: v for k, v in result.items() if k != "epoch"}, step=result["epoch"])
            score = result["val_miou"]
            if score > best or trainer.epoch == cfg.epochs:
                best = max(best, score)
                for i, (img, mask, prob) in enumerate(trainer.predict_samples(2)):
                    tracker.log_image(
                        run_id,
                        prediction_panel(img, mask, prob),
                        f"predictions/epoch{trainer.epoch:03d}_{i}.png",
                    )
            _report(trainer, result)
    finally:
        if monitor is not None:
            monitor.finish()


#: Tune builds the trial's Trainable class from the function; ``tune.with_parameters`` keeps this.
run_trial.__mixins__ = (RestoreFromSurvivingCheckpoint,)  # type: ignore[attr-defined]


def _epochs_if_ended(tracker: Tracker, run_id: str) -> int | None:
    """Epochs of a trial whose run the driver already closed as FINISHED, else None."""
    run = with_retries(lambda: tracker.client.get_run(run_id), "get trial run")
    epochs = run.data.tags.get("hairseg.epochs_run")
    if run.info.status != "FINISHED" or epochs is None:
        return None
    return int(epochs)


def _catch_up(trainer: Trainer, epochs: int) -> None:
    """Bring Tune's restored view of an already-ended trial up to the epoch it ended at.

    Tune's saved state may predate the trial's last epochs (it is written every few seconds).
    Those epochs are trained again from the restored checkpoint and reported to Tune, which
    needs their results and checkpoints, but not logged to MLflow, which already has them
    (training is reseeded per epoch, so the values are the same). Usually there is nothing to
    do: the checkpoint Tune restored is the trial's last.
    """
    while trainer.epoch < epochs:
        _report(trainer, trainer.run_epoch())


def _model_cost(trainer: Trainer, settings: LatencySettings) -> tuple[ModelCost, bool]:
    """The trial's measured latency / params / MACs, and whether it was measured just now.

    Measured once per trial, on its first attempt, and kept in the checkpoint (``trainer.extra``): a
    retry on another node reports the same numbers, from the machine they were measured on, instead
    of changing a trial's latency half-way through. A checkpoint measured with other settings (or
    from before latency was measured) is measured again.
    """
    stored = trainer.extra.get("model_cost")
    size = settings.input_size(trainer.cfg)
    if isinstance(stored, dict):
        cost = ModelCost.from_dict(stored)
        if (cost.input_size, cost.threads, cost.repeats) == (size, settings.threads, settings.repeats):
            return cost, False
    cost = measure_model_cost(trainer.model, size, threads=settings.threads, repeats=settings.repeats)
    trainer.extra["model_cost"] = cost.to_dict()
    logger.info(
        "latency %.2f ms (p90 %.2f) at %d px, %.2f M params, %.2f GMACs on %s",
        cost.latency_ms,
        cost.latency_p90_ms,
        size,
        cost.params_m,
        cost.gmacs,
        describe_machine(cost.machine),
    )
    return cost, True


#: Tune result key naming the machine a trial's latency was measured on (a string, not a metric).
LATENCY_MACHINE_KEY = "latency_machine"


def _cost_tags(cost: ModelCost) -> dict[str, Any]:
    return {
        "hairseg.latency_machine": describe_machine(cost.machine),
        "hairseg.latency_input_size": cost.input_size,
        "hairseg.latency_threads": cost.threads,
        "hairseg.latency_repeats": cost.repeats,
        **{f"hairseg.latency_{k}": v for k, v in cost.machine.items() if k not in {"threads"}},
    }


def _report(trainer: Trainer, result: dict[str, float]) -> None:
    """One epoch to Tune, with its checkpoint and the trial's measured cost (the same every epoch)."""
    cost = ModelCost.from_dict(trainer.extra["model_cost"])
    with tempfile.TemporaryDirectory(prefix="hairseg-ckpt-") as tmp:
        trainer.save_checkpoint(Path(tmp) / CHECKPOINT_FILE)
        tune.report(
            {
                **result,
                **cost.metrics(),
                LATENCY_MACHINE_KEY: describe_machine(cost.machine),
                "mlflow_run_id": trainer.extra["mlflow_run_id"],
            },
            checkpoint=Checkpoint.from_directory(tmp),
        )


class MlflowStatusCallback(Callback):
    """Driver side: closes each trial's MLflow run with the right status.

    A trial stopped by ASHA is killed between epochs, so it cannot close its own run; the
    driver sees every ending (complete, early-stopped, errored) and records it.
    """

    def __init__(self, tracking: TrackingSettings, max_t: int) -> None:
        self.tracking = tracking
        self.max_t = max_t
        self._tracker: Tracker | None = None

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.tracking.tracking_uri, self.tracking.experiment)
        return self._tracker

    def _close(self, trial: Any, status: str) -> None:
        hint = (trial.last_result or {}).get("mlflow_run_id")
        run_id = self.tracker.current_trial_run(self.tracking.sweep, trial.trial_id, hint)
        if not run_id:
            return
        epochs = int((trial.last_result or {}).get("training_iteration", 0))
        self.tracker.set_tags(
            run_id,
            {
                "hairseg.epochs_run": epochs,
                "hairseg.early_stopped": status == "FINISHED" and epochs < self.max_t,
            },
        )
        # The UI's table and bar charts show a metric's last value; a trial is ranked by its best epoch.
        self.tracker.log_best_metrics(run_id)
        self.tracker.end_run(run_id, status)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FAILED")

    def __getstate__(self) -> dict[str, Any]:  # the MLflow client is not picklable; rebuild lazily
        return {**self.__dict__, "_tracker": None}


# ----------------------------------------------------------------------------- the sweep
@dataclass
class SweepSettings:
    """Where a sweep runs and records; see ``pipelines/sweep.py`` for the command-line flags."""

    experiment: str
    storage_path: str
    tracking_uri: str
    name: str | None = None
    verbose: int = 1
    callbacks: list[Callback] = field(default_factory=list)


def new_sweep_name(experiment: str) -> str:
    return f"{experiment}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


#: Written into a sweep's Tune folder when it starts, so ``--resume`` needs only the run name:
#: the search space (fixed settings included) and the MLflow experiment come back from it.
SWEEP_MANIFEST = "hairseg_sweep.json"


def latest_sweep(storage_path: str, experiment: str | None = None) -> str | None:
    """The newest restorable, unfinished sweep under ``storage_path`` (local, s3://, gs://).

    With ``experiment``, only that experiment's sweeps (``<experiment>-<timestamp>``) count;
    without, any folder that holds a hairseg sweep manifest.
    """
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(storage_path)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return None
    folders = [i for i in infos if i.type == pyarrow.fs.FileType.Directory]
    if experiment is not None:
        folders = [i for i in folders if i.base_name.startswith(experiment + "-")]
    # newest first: by modification time where the filesystem has it, then by the timestamped name
    folders.sort(key=lambda i: (i.mtime_ns or 0, i.base_name), reverse=True)
    for info in folders:
        manifest = _read_manifest(storage_path, info.base_name)
        if manifest is None and experiment is None:
            continue  # not a hairseg sweep
        if manifest is not None and sweep_done(manifest):
            continue  # every trial ended and the final stage ran: nothing to resume
        if tune.Tuner.can_restore(_join(storage_path, info.base_name)):
            return info.base_name
    return None


def save_sweep_manifest(
    storage_path: str, name: str, experiment: str, space: SearchSpace, space_file: str | None
) -> None:
    """Record what a sweep runs beside Tune's state (same storage: survives a lost head node)."""
    payload = {
        "experiment": experiment,
        "space_file": space_file,
        "space": space.model_dump(mode="json"),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "finalize_pending": True,  # until the final stage completes or is skipped
    }
    _write_manifest(storage_path, name, payload)


def _manifest_location(storage_path: str, name: str) -> tuple[Any, str]:
    """(pyarrow filesystem, sweep folder) for local paths, s3:// and gs:// alike."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(_join(storage_path, name))


def _read_manifest(storage_path: str, name: str) -> dict[str, Any] | None:
    import pyarrow.fs

    fs, folder = _manifest_location(storage_path, name)
    path = f"{folder}/{SWEEP_MANIFEST}"
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read().decode())


def _write_manifest(storage_path: str, name: str, payload: dict[str, Any]) -> None:
    fs, folder = _manifest_location(storage_path, name)
    fs.create_dir(folder, recursive=True)
    with fs.open_output_stream(f"{folder}/{SWEEP_MANIFEST}") as stream:
        stream.write(json.dumps(payload, indent=2).encode())


def load_sweep_manifest(storage_path: str, name: str) -> dict[str, Any] | None:
    """The manifest ``save_sweep_manifest`` wrote, or None (sweeps started before manifests existed)."""
    payload = _read_manifest(storage_path, name)
    if payload is not None:
        source = f"{_join(storage_path, name)}/{SWEEP_MANIFEST}"
        payload["space"] = search_space_from_dict(payload["space"], source=source)
    return payload


def mark_sweep_finished(storage_path: str, name: str) -> None:
    """Every trial ran to its end: ``--resume`` has no trial left to run (maybe the final stage)."""
    _stamp_manifest(storage_path, name, "finished")


def mark_sweep_finalized(storage_path: str, name: str, skipped: bool = False) -> None:
    """The final stage completed (or was skipped with ``--no-finalize``): nothing is left to resume."""
    _stamp_manifest(storage_path, name, "finalize_skipped" if skipped else "finalized")


def sweep_done(manifest: Mapping[str, Any]) -> bool:
    """Whether ``--resume`` has nothing to do: every trial ended and the final stage ran or was skipped.

    Manifests from before the final stage was recorded count as done once their trials ended.
    """
    if not manifest.get("finished"):
        return False
    recorded = {"finalized", "finalize_skipped", "finalize_pending"} & set(manifest)
    return not recorded or bool({"finalized", "finalize_skipped"} & recorded)


def _stamp_manifest(storage_path: str, name: str, key: str) -> None:
    payload = _read_manifest(storage_path, name)
    if payload is not None:
        payload[key] = _dt.datetime.now(_dt.timezone.utc).isoformat()
        _write_manifest(storage_path, name, payload)


def _join(storage_path: str, name: str) -> str:
    return storage_path.rstrip("/") + "/" + name


def share_data(space: SearchSpace) -> TrialData | None:
    """Decode the data once for all trials, unless the search space varies what data is read."""
    if {"dataset", "data_root", "dataset_options", "sources"} & set(space.params):
        return None
    return load_trial_data(space.trial_config({}), progress=True)


def build_tuner(
    space: SearchSpace,
    settings: SweepSettings,
    parent_run_id: str,
    resume: bool = False,
    data: TrialData | None = None,
    weights: WeightsFiles | None = None,
) -> tune.Tuner:
    """A Tuner for a new sweep, or one restored from ``settings.storage_path/settings.name``.

    ``data`` and ``weights`` go into Ray's object store once and reach every trial from there.
    """
    assert settings.name is not None
    tracking = TrackingSettings(settings.tracking_uri, settings.experiment, settings.name, parent_run_id)
    trainable = tune.with_parameters(
        run_trial,
        fixed=dict(space.fixed),
        tracking=tracking,
        data=data,
        weights=dict(weights or {}),
        latency=LatencySettings.from_space(space),
    )
    trainable = tune.with_resources(trainable, {"cpu": space.resources.cpu, "gpu": space.resources.gpu})
    callbacks = [
        MlflowStatusCallback(tracking, space.scheduler.max_t or space.epochs),
        FailOnceCallback(settings.name),
        *settings.callbacks,
    ]
    if resume:
        path = _join(settings.storage_path, settings.name)
        if not tune.Tuner.can_restore(path):
            raise FileNotFoundError(f"no restorable sweep at {path}")
        # The callbacks come back from the pickled run config; their actor handles are rebuilt lazily.
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    run_config = tune.RunConfig(
        name=settings.name,
        storage_path=settings.storage_path,
        failure_config=tune.FailureConfig(max_failures=space.max_failures),
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=space.keep_checkpoints,
            # the epoch a trial's Pareto point and export come from (latency ties across epochs)
            checkpoint_score_attribute=space.epoch_objective.metric,
            checkpoint_score_order=space.epoch_objective.mode,
        ),
        callbacks=callbacks,
        verbose=settings.verbose,
    )
    tune_config = tune.TuneConfig(
        search_alg=build_searcher(space),
        scheduler=build_scheduler(space),
        num_samples=space.num_samples,
        max_concurrent_trials=space.max_concurrent_trials,
        trial_name_creator=lambda trial: f"trial_{trial.trial_id}",
        trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


@dataclass
class BestTrial:
    """What the final stage needs of the winning trial."""

    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    checkpoint_path: str
    mlflow_run_id: str | None


@dataclass(frozen=True)
class SweepProgress:
    """How many of a sweep's trials ended, and how.

    Tune's own counts cannot tell a stop signal from a finished sweep: on Ctrl-C it saves its
    state, then marks the trials that were still running TERMINATED while stopping their
    actors. A trial that really ended has ``done`` in its last result (its function returned
    or ASHA stopped it) or an error; anything else is unfinished, as are trials never started.
    """

    completed: int
    errored: int
    unfinished: int

    @property
    def ended(self) -> int:
        return self.completed + self.errored


def sweep_progress(results: tune.ResultGrid, num_samples: int) -> SweepProgress:
    """Count completed / errored / unfinished trials of a sweep of ``num_samples`` trials."""
    completed = errored = 0
    for result in results:
        if result.error is not None:
            errored += 1
        elif (result.metrics or {}).get("done") is True:
            completed += 1
    return SweepProgress(completed, errored, max(0, num_samples - completed - errored))


def best_trial(results: tune.ResultGrid, space: SearchSpace, pick: TrialPoint | None = None) -> BestTrial:
    """The trial to export, with its best checkpoint.

    ``pick`` (a point ``pareto.select`` chose) names the trial, and its checkpoint is the one of the
    pick's epoch where Tune kept it; without ``pick``, the best trial by the epoch objective (the first
    one that changes per epoch, see ``SearchSpace.epoch_objective``) over each trial's best epoch.
    """
    objective = space.epoch_objective
    if pick is None:
        best = results.get_best_result(metric=objective.metric, mode=objective.mode, scope="all")
    else:
        best = next((r for r in results if str((r.metrics or {}).get("trial_id")) == pick.trial_id), None)
    if best is None or best.metrics is None:
        which = f"trial {pick.trial_id} is not among the results" if pick else "the sweep produced no successful trial"
        raise RuntimeError(f"{which}: see the errors above")
    # A checkpoint Tune lists may be gone (see RestoreFromSurvivingCheckpoint): only files that exist.
    ckpts = [(c, m) for c, m in best.best_checkpoints if objective.metric in m and _holds_checkpoint_file(c)]
    if not ckpts:
        raise RuntimeError(f"trial {best.metrics.get('trial_id')} kept no checkpoint")
    sign = 1 if objective.mode == "max" else -1
    at_epoch = [cm for cm in ckpts if pick is not None and cm[1].get(TRAINING_ITERATION) == pick.epoch]
    checkpoint, metrics = at_epoch[-1] if at_epoch else max(ckpts, key=lambda cm: sign * cm[1][objective.metric])
    return BestTrial(
        trial_id=str(best.metrics.get("trial_id")),
        config=TrainConfig(**{**space.fixed, **sampled_settings(best.config)}).model_dump(),
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        checkpoint_path=checkpoint.path,
        mlflow_run_id=metrics.get("mlflow_run_id"),
    )


@dataclass
class SweepFront:
    """A finished sweep's trials in objective space, their Pareto front and the trial ``select:`` picked.

    ``selection`` is None when no trial satisfies the rule; ``error`` then says why (rule, closest trial).
    """

    points: list[TrialPoint]
    front: list[TrialPoint]
    selection: Selection | None
    error: str | None = None


def sweep_front(results: tune.ResultGrid, space: SearchSpace) -> SweepFront:
    """Points, front and pick of a sweep (``hairseg_core.pareto`` does the work, on Tune's results)."""
    points = trial_points(results, space)
    front = pareto_front(points, space.objectives)
    try:
        return SweepFront(points, front, select(points, space.objectives, space.select))
    except SelectionError as exc:
        return SweepFront(points, front, None, str(exc))


#: Shown beside the objectives in the front table when a trial reported them.
FRONT_EXTRA_METRICS = ("val_miou", "latency_ms", "latency_p90_ms", "params_m", "gmacs")


def trial_points(results: tune.ResultGrid, space: SearchSpace) -> list[TrialPoint]:
    """Each trial as a point in objective space: the metrics of its best epoch by the epoch objective.

    That epoch is the one whose checkpoint the trial keeps and an export would use (ties: the latest,
    which Tune keeps), so a point is a model that exists. Latency, params and MACs are the same in
    every epoch. A trial that reported nothing gets a point without values (listed, not comparable).
    """
    objective = space.epoch_objective
    wanted = list(dict.fromkeys([*(o.metric for o in space.objectives), *FRONT_EXTRA_METRICS]))
    points = []
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id is None and result.path:
            trial_id = Path(result.path).name.removeprefix("trial_")
        info = {k: v for k, v in sampled_settings(result.config or {}).items() if isinstance(v, (int, float, str))}
        frame = result.metrics_dataframe
        if frame is None or objective.metric not in frame or frame[objective.metric].dropna().empty:
            points.append(TrialPoint(str(trial_id), {}, None, info))
            continue
        rows = frame[frame[objective.metric].notna()]
        column = rows[objective.metric].astype(float)
        target = column.max() if objective.mode == "max" else column.min()
        row = rows[column == target].iloc[-1]
        values = {}
        for metric in wanted:
            try:
                number = float(row.get(metric))
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                values[metric] = number
        points.append(TrialPoint(str(trial_id), values, int(row[TRAINING_ITERATION]), info))
    return points


def latency_machines(results: tune.ResultGrid) -> list[str]:
    """The machines the trials' latencies were measured on (one line each, see ``latency.describe_machine``)."""
    seen: dict[str, None] = {}
    for result in results:
        frame = result.metrics_dataframe
        if frame is not None and LATENCY_MACHINE_KEY in frame:
            seen.update(dict.fromkeys(str(v) for v in frame[LATENCY_MACHINE_KEY].dropna().unique()))
    return list(seen)


def optuna_study_from_results(results: tune.ResultGrid, space: SearchSpace) -> optuna.Study:
    """Rebuild an in-memory Optuna study from Tune's results (works after a resume too)."""
    sampler = SpaceSampler(space.params)
    study = optuna.create_study(direction="maximize" if space.mode == "max" else "minimize")
    for result in results:
        if result.error is not None or not result.metrics or result.metrics_dataframe is None:
            continue
        frame = result.metrics_dataframe
        if space.metric not in frame:
            continue
        values = frame[space.metric].dropna()
        if values.empty:
            continue
        best_value = float(values.max() if space.mode == "max" else values.min())
        dists = sampler.distributions(result.config)
        params = {k: result.config[k] for k in dists}
        intermediate = {
            int(i): float(v)
            for i, v in zip(frame["training_iteration"], frame[space.metric], strict=False)
            if not math.isnan(v)
        }
        study.add_trial(
            optuna.trial.create_trial(
                params=params, distributions=dists, value=best_value, intermediate_values=intermediate
            )
        )
    return study


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_summary(error: BaseException) -> str:
    """The line of a trial's error that says what went wrong (Ray's first line only names the actor)."""
    lines = [_ANSI.sub("", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line]
    return (lines[-1] if lines else type(error).__name__)[:200]


def results_rows(results: tune.ResultGrid, space: SearchSpace) -> list[dict[str, Any]]:
    """One row per trial, best first: its sampled settings, epochs run, and final/best metrics."""
    rows = []
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id is None and result.path:  # an errored trial reported nothing: its folder names it
            trial_id = Path(result.path).name.removeprefix("trial_")
        row: dict[str, Any] = {"trial_id": trial_id}
        row.update(sampled_settings(result.config or {}))
        frame = result.metrics_dataframe
        if frame is not None and space.metric in frame:
            values = frame[space.metric].dropna()
            row[f"best_{space.metric}"] = float(values.max() if space.mode == "max" else values.min())
            row["epochs_run"] = int(frame["training_iteration"].max())
        keys = ["val_miou", "val_fwiou", "val_acc", "val_acc_class", "val_boundary_f", "val_loss"]
        keys += sorted(k for k in (result.metrics or {}) if k.startswith("val_") and k.endswith("_miou"))
        for key in dict.fromkeys(keys):  # a source's mIoU per validation set, after the combined ones
            if result.metrics and key in result.metrics:
                row[f"last_{key}"] = result.metrics[key]
        for key in ("latency_ms", "latency_p90_ms", "gmacs"):  # measured once per trial: no best / last
            if result.metrics and key in result.metrics:
                row[key] = result.metrics[key]
        row["error"] = error_summary(result.error) if result.error else ""
        rows.append(row)
    key = f"best_{space.metric}"
    sign = -1 if space.mode == "max" else 1
    rows.sort(key=lambda r: sign * r[key] if key in r else math.inf)
    return rows


def default_storage_path() -> str:
    return str((Path.cwd() / "ray_results").resolve())


def normalize_storage_path(storage: str | None) -> str:
    """``--storage`` as Tune and pyarrow need it: URIs unchanged, local paths absolute."""
    if not storage:
        return default_storage_path()
    if "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())
