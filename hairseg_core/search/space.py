"""The search space as Optuna sees it, and the searcher and scheduler Tune runs it with.

A validated ``SearchSpace`` becomes an Optuna define-by-run function (:class:`SpaceSampler`), so
conditional and backbone-dependent parameters are sampled only where they apply; OptunaSearch drives
it and ASHA (or FIFO) decides which trials go on.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import optuna
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from hairseg_core.config import BY_SEPARATOR, ParamSpec, SearchSpace


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


#: The type ``threading.Lock()`` returns (``threading.Lock`` itself is a factory function, not a class).
_LOCK_TYPE = type(threading.Lock())


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """NSGA-II that survives pickling: Tune pickles the searcher into its experiment state (and for
    ``--resume``), and Optuna 5's genetic samplers hold a ``threading.Lock``, which cannot be pickled.
    The lock only guards the sampler's generation cache within one process, so a fresh one is made on
    unpickling.

    Optuna (5.1) offers no public way to pickle these samplers or to hand them a lock, so the state is
    handled generically: every attribute holding a lock is left out of the pickle and re-created on
    loading. No private attribute is named, so a renamed or added lock in a later Optuna still pickles.
    """

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if not isinstance(v, _LOCK_TYPE)}
        state["_hairseg_locks"] = [k for k, v in self.__dict__.items() if isinstance(v, _LOCK_TYPE)]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        locks = state.pop("_hairseg_locks", [])
        self.__dict__.update(state)
        for name in locks:
            setattr(self, name, threading.Lock())


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
        sampler = PicklableNSGAIISampler(seed=space.seed, **population)
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
        points_to_evaluate=[dict(point) for point in sampler_cfg.points_to_evaluate] or None,
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
