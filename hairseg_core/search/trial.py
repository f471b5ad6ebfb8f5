"""The Tune trial: ``train.Trainer`` driven one epoch at a time, reported to Tune and logged to MLflow.

Each epoch is reported to Tune (``ray.tune.report`` with a ``tune.Checkpoint``), so ASHA can stop it
early, and logged to the trial's own MLflow run. The decoded dataset and the pretrained weights come
through ``tune.with_parameters`` (``hairseg_core.search.tuner``): put into Ray's object store once and
read by every trial on a node.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune
from ray.tune import Checkpoint

from hairseg_core.artifact import CHECKPOINT_FILE
from hairseg_core.config import DataSettings, SearchSpace, TrainConfig, sampled_settings, trial_config
from hairseg_core.data.fingerprint import fingerprint_config
from hairseg_core.deploy.latency import MIN_REPEATS, ModelCost, describe_machine, measure_model_cost
from hairseg_core.scaling import deploy_input_size, inference_scale
from hairseg_core.search.checkpoints import RestoreFromSurvivingCheckpoint
from hairseg_core.search.fail_once import fail_once
from hairseg_core.search.trial_errors import NonRetriableTrialError, is_deterministic
from hairseg_core.search.weights import WeightsFiles, install_weights
from hairseg_core.threads import configure_threads
from hairseg_core.track.client import apply_tracking_credentials
from hairseg_core.track.retry import with_retries
from hairseg_core.track.runs import Tracker
from hairseg_core.track.tags import (
    TAG_EPOCHS_RUN,
    TAG_ERROR,
    TAG_LATENCY_INPUT_SIZE,
    TAG_LATENCY_MACHINE,
    TAG_LATENCY_PREFIX,
    TAG_LATENCY_REPEATS,
    TAG_LATENCY_THREADS,
    TAG_NODE_ID,
    TAG_NODE_IP,
    TAG_RESTORED_FROM_EPOCH,
    TAG_RETRIED,
)
from hairseg_core.track.trials import start_system_metrics
from hairseg_core.train.gpu_settings import SettingsCache, resolve_gpu_settings
from hairseg_core.train.trainer import Trainer, TrialData, load_trial_data, resolve_device
from hairseg_core.visualize import prediction_panel, stack_rows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackingSettings:
    tracking_uri: str
    experiment: str
    sweep: str
    parent_run_id: str


@dataclass(frozen=True)
class LatencySettings:
    """How each trial measures its network's CPU latency (``hairseg_core.deploy.latency.measure_model_cost``).

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
        return int(deploy_input_size(self.export_size, inference_scale(cfg)))  # type: ignore[arg-type]


def _trial_resources() -> int:
    """Whole CPUs Ray gave this trial (at least one): the trial's torch and loader threads."""
    resources = tune.get_context().get_trial_resources()
    if resources is None:  # not inside a Tune trial (a direct call in a test)
        return 1
    return max(1, int(resources.required_resources.get("CPU", 1)))


def run_trial(
    config: dict[str, Any],
    fixed: dict[str, Any],
    tracking: TrackingSettings,
    data: TrialData | None = None,
    weights: WeightsFiles | None = None,
    latency: LatencySettings | None = None,
    gpu_cache: str | None = None,
    data_settings: DataSettings | None = None,
    credentials: dict[str, str] | None = None,
) -> None:
    """Tune function trainable: one DeepLabv3+ configuration, reported once per epoch.

    Before training, the network's CPU latency, parameters and MACs are measured once (``latency``);
    they depend on the architecture alone and go into every epoch's result, so each result Tune,
    Optuna and ASHA see holds every objective. An error that would repeat on every attempt (see
    :mod:`hairseg_core.search.trial_errors`) ends the trial at once, recorded on its MLflow run; anything
    else is left to Tune's ``max_failures``. ``gpu_cache``: the sweep's folder of GPU-settings choices
    (:class:`hairseg_core.train.gpu_settings.SettingsCache`) for ``auto`` AMP / channels-last / cudnn benchmark.
    ``credentials``: the driver's MLflow login, used where this worker's environment has none.
    """
    apply_tracking_credentials(credentials)
    # One "Checkpoint successfully created" line per epoch per trial drowns Tune's status table.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    context = tune.get_context()
    trial_id = context.get_trial_id()
    try:
        _train_trial(config, fixed, tracking, data, weights, latency or LatencySettings(), gpu_cache, data_settings)
    except Exception as exc:
        if not is_deterministic(exc):
            raise
        error = NonRetriableTrialError(exc)
        _record_error(tracking, trial_id, error)
        fail_once(trial_id, tracking.sweep, exc)
        raise error from exc


def _record_error(tracking: TrackingSettings, trial_id: str, error: BaseException) -> None:
    """Put the error's message on the trial's MLflow run (the driver closes it FAILED)."""
    tracker = Tracker(tracking.tracking_uri, tracking.experiment)
    run_id = tracker.find_trial(tracking.sweep, trial_id, tracking.parent_run_id)
    if run_id is None:  # failed before its run existed (e.g. while building the model)
        run_id = tracker.start_trial(
            tracking.sweep, tracking.parent_run_id, trial_id, tune.get_context().get_trial_name(), params={}
        )
    tracker.set_tags(run_id, {TAG_ERROR: str(error)[:4000], TAG_RETRIED: False})


def _train_trial(
    config: dict[str, Any],
    fixed: dict[str, Any],
    tracking: TrackingSettings,
    data: TrialData | None,
    weights: WeightsFiles | None,
    latency: LatencySettings,
    gpu_cache: str | None = None,
    data_settings: DataSettings | None = None,
) -> None:
    """Build (or restore) the trial's trainer, open its MLflow run and train it epoch by epoch."""
    sampled = sampled_settings(config)
    cfg = trial_config(fixed, sampled)
    cpus = configure_threads(_trial_resources())  # torch, OpenCV, OMP: the CPUs Ray gave the trial
    # The driver resolved every pretrained file before Ray started: a trial never downloads.
    os.environ["HAIRSEG_OFFLINE"] = "1"
    install_weights(weights)
    shared = data is not None  # the driver prepared the data for every trial (memory or stream path)
    if data is None:  # the space varies the data: this trial reads its own, by the space's input path
        data = load_trial_data(cfg, settings=data_settings, workers=cpus)
    trainer = _trainer(cfg, data, cpus, gpu_cache)
    cost, measured = _model_cost(trainer, latency)

    tracker = Tracker(tracking.tracking_uri, tracking.experiment)
    trial_id = tune.get_context().get_trial_id()
    known_run = tracker.current_trial_run(
        tracking.sweep, trial_id, trainer.extra.get("mlflow_run_id"), tracking.parent_run_id
    )
    ended = _epochs_if_ended(tracker, known_run) if known_run else None
    if ended is not None:
        # The driver closed this trial's run (completed or stopped by ASHA) and then died
        # before Tune's experiment state recorded the end: do not train it again.
        trainer.extra["mlflow_run_id"] = known_run
        _catch_up(trainer, ended)
        return
    run_id = _open_run(tracker, tracking, trainer, cfg, sampled, known_run, shared)
    if measured:  # a restored attempt reports the first attempt's measurement, already logged
        tracker.log_metrics(run_id, cost.metrics(), step=0)
        tracker.set_tags(run_id, _cost_tags(cost))
    monitor = start_system_metrics(run_id, tracking.tracking_uri)
    try:
        if trainer.epoch >= cfg.epochs:
            # Restored from its last epoch's checkpoint: Tune already holds that result, and
            # reporting it again would count an extra iteration. Returning ends the trial.
            return
        _fit(trainer, tracker, run_id, cfg.epochs)
    finally:
        if monitor is not None:
            monitor.finish()


def _trainer(cfg: TrainConfig, data: TrialData, cpus: int, gpu_cache: str | None) -> Trainer:
    """The trial's trainer: restored from Tune's checkpoint on a retry or resume, else a new one."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            return Trainer.from_checkpoint(Path(ckpt_dir) / CHECKPOINT_FILE, data=data, cpus=cpus)
    cache = SettingsCache(gpu_cache) if gpu_cache else None
    gpu_settings = resolve_gpu_settings(cfg, resolve_device(cfg.device), cache)
    return Trainer(cfg, data=data, cpus=cpus, gpu_settings=gpu_settings)


def _open_run(
    tracker: Tracker,
    tracking: TrackingSettings,
    trainer: Trainer,
    cfg: TrainConfig,
    sampled: dict[str, Any],
    known_run: str | None,
    shared: bool,
) -> str:
    """The trial's MLflow run (new, reopened, or a copy cut back to the restored epoch), tagged with where
    this attempt runs; its id is kept in the trainer's checkpoint."""
    context = tune.get_context()
    # The run's dataset inputs: those of the sweep's run when the driver decoded the data for every
    # trial (this node may not even hold the files), else the files this trial reads itself.
    run_id = tracker.start_trial(
        tracking.sweep,
        tracking.parent_run_id,
        context.get_trial_id(),
        context.get_trial_name(),
        params={**cfg.model_dump(), "sampled": sampled},
        run_id=known_run,
        sampled=sampled,
        datasets=fingerprint_config(cfg) if known_run is None and not shared else (),
    )
    if known_run is None and shared:
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
            TAG_NODE_ID: ray.get_runtime_context().get_node_id(),
            TAG_NODE_IP: ray.util.get_node_ip_address(),
            TAG_RESTORED_FROM_EPOCH: trainer.epoch,
            **trainer.gpu_settings.tags(),  # AMP / channels-last / cudnn benchmark used, and why
        },
    )
    return run_id


def _fit(trainer: Trainer, tracker: Tracker, run_id: str, epochs: int) -> None:
    """Train the remaining epochs: each logged to MLflow (with a prediction panel when it is the best so far
    or the last) and reported to Tune."""
    best = -math.inf
    for result in trainer.fit():
        tracker.log_metrics(run_id, {k: v for k, v in result.items() if k != "epoch"}, step=result["epoch"])
        score = result["val_miou"]
        if score > best or trainer.epoch == epochs:
            best = max(best, score)
            # One image per epoch, a row per validation sample: one artifact write, not one per sample.
            panels = [prediction_panel(img, mask, prob) for img, mask, prob in trainer.predict_samples(2)]
            tracker.log_image(run_id, stack_rows(panels), f"predictions/epoch{trainer.epoch:03d}.png")
        _report(trainer, result)


#: Tune builds the trial's Trainable class from the function; ``tune.with_parameters`` keeps this.
run_trial.__mixins__ = (RestoreFromSurvivingCheckpoint,)  # type: ignore[attr-defined]


def _epochs_if_ended(tracker: Tracker, run_id: str) -> int | None:
    """Epochs of a trial whose run the driver already closed as FINISHED, else None."""
    run = with_retries(lambda: tracker.client.get_run(run_id), "get trial run")
    epochs = run.data.tags.get(TAG_EPOCHS_RUN)
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


#: Costs measured in this worker process, by network architecture and measurement settings. With Tune's
#: ``reuse_actors`` one process runs many trials, and trials that share an architecture (most of a
#: fine-tuning study: one backbone, learning rates and augmentation sampled) get one measurement
#: instead of one each: ~0.4 s a trial saved, and identical networks report identical latency
#: instead of two noisy samples of it.
_MEASURED: dict[tuple[str, int, int, int], ModelCost] = {}


def _architecture_key(model: torch.nn.Module) -> str:
    """What a forward pass's cost depends on: the module tree (layers, shapes, strides, dilations) and the
    weights' dtype and memory format, not their values."""
    conv = next((p for p in model.parameters() if p.dim() == 4), None)
    layout = "" if conv is None else f"{conv.dtype}:{conv.is_contiguous(memory_format=torch.channels_last)}"
    return hashlib.sha1(f"{model!r}|{layout}".encode()).hexdigest()


def _model_cost(trainer: Trainer, settings: LatencySettings) -> tuple[ModelCost, bool]:
    """The trial's measured latency / params / MACs, and whether it is new to this trial (to be logged).

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
    key = (_architecture_key(trainer.model), size, settings.threads, settings.repeats)
    cost = _MEASURED.get(key)
    if cost is not None:  # the same network measured by an earlier trial in this worker (reuse_actors)
        trainer.extra["model_cost"] = cost.to_dict()
        return cost, True
    cost = measure_model_cost(trainer.model, size, threads=settings.threads, repeats=settings.repeats)
    _MEASURED[key] = cost
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
        TAG_LATENCY_MACHINE: describe_machine(cost.machine),
        TAG_LATENCY_INPUT_SIZE: cost.input_size,
        TAG_LATENCY_THREADS: cost.threads,
        TAG_LATENCY_REPEATS: cost.repeats,
        **{f"{TAG_LATENCY_PREFIX}{k}": v for k, v in cost.machine.items() if k not in {"threads"}},
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
