"""The ``tune.Tuner`` of a sweep, new or restored: trainable, searcher, scheduler, callbacks, storage."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from ray import tune
from ray.tune import Callback

from hairseg_core.config import SearchSpace
from hairseg_core.search.callbacks import MlflowStatusCallback
from hairseg_core.search.fail_once import FailOnceCallback
from hairseg_core.search.restore_state import align_searcher_with_trials
from hairseg_core.search.space import build_scheduler, build_searcher
from hairseg_core.search.state import sweep_dir
from hairseg_core.search.trial import LatencySettings, TrackingSettings, run_trial
from hairseg_core.search.weights import WeightsFiles
from hairseg_core.track.client import tracking_credentials
from hairseg_core.train.trainer import TrialData

#: The sweep's GPU-settings choices (``auto`` AMP / channels-last / cudnn benchmark), beside Tune's state: one
#: probe per GPU model and configuration for the whole sweep, on any node, and kept across ``--resume``.
GPU_SETTINGS_DIR = "gpu_settings"

#: Keep a trial's worker process for the next trial on the same resources (Tune's ``reuse_actors``):
#: a new trial then skips the process start and the torch/Ray imports (benchmarks/README.md, "Sweep
#: overhead"). Safe here because a trial keeps no state in its process between trials: the trainer,
#: the MLflow run and the thread count are set up again by every ``run_trial`` call, and Tune only
#: reuses an actor whose previous trial's thread has ended.
REUSE_ACTORS = True


@dataclass
class SweepSettings:
    """Where a sweep runs and records; see ``pipelines/sweep.py`` for the command-line flags."""

    experiment: str
    storage_path: str
    tracking_uri: str
    name: str | None = None
    verbose: int = 1
    callbacks: list[Callback] = field(default_factory=list)


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
        data_settings=space.data,
        weights=dict(weights or {}),
        latency=LatencySettings.from_space(space),
        gpu_cache=sweep_dir(settings.storage_path, settings.name) + "/" + GPU_SETTINGS_DIR,
        # The driver's MLflow login (MLFLOW_TRACKING_USERNAME / _PASSWORD ...), through the object store: a node
        # started without it (a `ray job submit` to a cluster whose raylets lack it) logs in all the same. Not a
        # runtime_env: Ray shows and logs a job's runtime_env; not the run config: Tune pickles it into storage.
        credentials=tracking_credentials(),
    )
    trainable = tune.with_resources(trainable, {"cpu": space.resources.cpu, "gpu": space.resources.gpu})
    callbacks = [
        MlflowStatusCallback(tracking, space.scheduler.max_t or space.epochs),
        FailOnceCallback(settings.name),
        *settings.callbacks,
    ]
    if resume:
        path = sweep_dir(settings.storage_path, settings.name)
        if not tune.Tuner.can_restore(path):
            raise FileNotFoundError(f"no restorable sweep at {path}")
        repair = align_searcher_with_trials(path)
        if repair is not None and repair.changed:
            print(f"warning: {repair.describe()}", file=sys.stderr)
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
        reuse_actors=REUSE_ACTORS,
        trial_name_creator=lambda trial: f"trial_{trial.trial_id}",
        trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)
