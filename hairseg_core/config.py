"""Typed configuration: one trial's settings and a sweep's search space.

Everything a sweep does is data. A search space YAML is validated here, before Ray starts,
so that a typo'd key or an empty choice list fails in a second on the laptop instead of an
hour into a GPU cluster run. Errors name the file, the key path and what was expected.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# The registries a name in a config is checked against. Imported at module level: every TrainConfig or
# SearchSpace validates its names on construction, so deferring these imports would only move their cost
# to the first validation (none of these packages imports this module: the import graph stays a DAG).
from hairseg_core.data.datasets import DATASETS
from hairseg_core.models.backbones import BACKBONES
from hairseg_core.postprocess.pipeline import build_table5_variants
from hairseg_core.scaling import DEFAULT_SIZE

#: Metrics every trial reports (see ``hairseg_core.train.trainer``); a search space may optimise any.
REPORTED_METRICS = (
    "val_miou",
    "val_fwiou",
    "val_acc",
    "val_acc_class",
    "val_boundary_f",
    "val_loss",
    "train_loss",
    # measured once per trial on its network (hairseg_core.deploy.latency) and reported with every epoch
    "latency_ms",
    "latency_p90_ms",
    "params_m",
    "gmacs",
)

#: Reported metrics that depend on the architecture alone: the same value in every epoch of a trial.
ARCHITECTURE_METRICS = ("latency_ms", "latency_p90_ms", "params_m", "gmacs")


class ConfigError(ValueError):
    """A configuration file or dict is invalid; the message names the source and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class DataSource(_Strict):
    """One data set of a study that trains or validates on several (paper §5: LFW + CelebA).

    ``name`` labels its metrics (``val_<name>_miou``) and final-stage rows. ``train`` adds its
    training split to the pooled training set; ``val`` reports its validation split on its own and
    counts it in the combined ``val_*`` metrics; ``test`` makes the final stage evaluate its test
    split too. ``weight`` sets the source's share of the pooled training draws relative to the other
    training sources (``hairseg_core.data.sampling``); left out everywhere, the pool is drawn in
    proportion to size. Every image is resized to the run's ``base_size`` (short side) before cropping,
    so sources stored at different resolutions (512 px celeb1k, 256 px celebamask4k) train at one scale.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")]
    dataset: str = "folder"
    data_root: str | None = None
    dataset_options: dict[str, Any] = Field(default_factory=dict)
    train: bool = True
    val: bool = True
    test: bool = True
    weight: Annotated[float, Field(gt=0)] | None = None

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        return _check_dataset_name(value)

    @model_validator(mode="after")
    def _known_options(self) -> DataSource:
        _check_dataset_options(self.dataset, self.dataset_options, f"sources.{self.name}.dataset_options")
        return self


def _check_dataset_name(value: str) -> str:
    if value not in DATASETS:
        raise ValueError(f"unknown dataset {value!r}; expected one of {DATASETS.names()}")
    return value


def _check_dataset_options(dataset: str, options: dict[str, Any], where: str = "dataset_options") -> None:
    """An option the dataset's builder does not take would only fail inside a trial, on the cluster."""
    params = inspect.signature(DATASETS.get(dataset)).parameters.values()
    allowed = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY} | {"on_error"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"{where}: {', '.join(unknown)} not an option of dataset {dataset!r}; expected some of {sorted(allowed)}"
        )


class TrainConfig(_Strict):
    """Settings of one training run (one Tune trial).

    Field names are the names a search space uses, so ``params:`` keys in a YAML file are
    checked against this class.
    """

    # model
    backbone: str = "mobilenet_v2"
    output_stride: Literal[8, 16] = 16
    pretrained: str = Field("none", description='"none", "imagenet" or a path to a weights file')
    aspp_channels: Annotated[int, Field(ge=8)] = 256
    decoder_channels: Annotated[int, Field(ge=8)] = 256
    # optimisation (paper: Adam, 1e-4 backbone, 1e-3 head)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr_backbone: Annotated[float, Field(gt=0)] = 1e-4
    lr_head: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-4
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    lr_schedule: Literal["poly", "cosine", "constant"] = "poly"
    # fine-tuning a pretrained backbone: its learning rate stays 0 for the first steps while the new
    # head learns (random head gradients would otherwise disturb the ImageNet filters), and every
    # group's rate ramps up linearly over warmup_steps
    freeze_backbone_steps: Annotated[int, Field(ge=0)] = 0
    warmup_steps: Annotated[int, Field(ge=0)] = 0
    batch_size: Annotated[int, Field(ge=1)] = 8
    epochs: Annotated[int, Field(ge=1)] = 10
    max_steps_per_epoch: Annotated[int, Field(ge=1)] | None = None
    # "precise BN": before each validation, re-estimate BatchNorm running statistics from this
    # many training batches (0 = off). Short runs from scratch need it: the running averages lag
    # the weights and eval mode then predicts all background.
    precise_bn_batches: Annotated[int, Field(ge=0)] = 0
    # loss: L = L_M + gc_weight * L_C + lovasz_weight * L_Lovasz (the IoU surrogate; hairseg_core/train/losses.py)
    loss: Literal["ce", "focal"] = "ce"
    gc_weight: Annotated[float, Field(ge=0)] = 0.0
    lovasz_weight: Annotated[float, Field(ge=0)] = 0.0
    focal_gamma: Annotated[float, Field(ge=0)] = 2.0
    # α weights the hair class (1 - α background). The paper's 0.5, not RetinaNet's 0.25: with
    # hair the minority class, 0.25 makes short runs predict all background (measured).
    focal_alpha: Annotated[float, Field(ge=0, le=1)] = 0.5
    # augmentation (paper §4.3, §5.3)
    rsc: bool = False
    blur: bool = False
    mixup: bool = False
    mixup_alpha: Annotated[float, Field(ge=0)] = 0.2
    crop_size: Annotated[int, Field(ge=32)] = DEFAULT_SIZE
    base_size: Annotated[int, Field(ge=32)] = DEFAULT_SIZE
    eval_size: Annotated[int, Field(ge=32)] | None = None
    # data
    dataset: str = "synthetic"
    data_root: str | None = None
    dataset_options: dict[str, Any] = Field(default_factory=dict)
    # several data sets at once (instead of dataset / data_root / dataset_options)
    sources: list[DataSource] = Field(default_factory=list)
    # the combined val_* metrics of several validation sources: one confusion matrix over all
    # their images ("pooled"), or the mean of each source's metric ("mean": each set counts alike)
    val_combine: Literal["pooled", "mean"] = "mean"
    # runtime
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # GPU step settings; "auto" times each combination on the GPU once per configuration and sweep
    # (hairseg_core/train/gpu_settings.py). On a CPU AMP is always off and "auto" means off.
    amp: bool | Literal["auto"] = True
    num_workers: Annotated[int, Field(ge=0)] | None = None
    channels_last: bool | Literal["auto"] = False
    cudnn_benchmark: bool | Literal["auto"] = False

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        if value not in BACKBONES:
            raise ValueError(f"unknown backbone {value!r}; expected one of {BACKBONES.names()}")
        return value

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        return _check_dataset_name(value)

    @model_validator(mode="after")
    def _known_dataset_options(self) -> TrainConfig:
        _check_dataset_options(self.dataset, self.dataset_options)
        return self

    @model_validator(mode="after")
    def _one_way_to_name_data(self) -> TrainConfig:
        """Data comes either from dataset / data_root / dataset_options or from sources."""
        if not self.sources:
            return self
        single = [k for k in ("data_root", "dataset_options") if getattr(self, k)]
        if self.dataset != TrainConfig.model_fields["dataset"].default:
            single.insert(0, "dataset")
        if single:
            raise ValueError(
                f"sources: given together with {', '.join(single)}; name the data either with sources "
                "or with dataset / data_root / dataset_options"
            )
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"sources: names must differ, got {names}")
        for role in ("train", "val"):
            if not any(getattr(s, role) for s in self.sources):
                raise ValueError(f"sources: no source has {role}: true")
        unused = [s.name for s in self.sources if s.weight is not None and not s.train]
        if unused:
            raise ValueError(f"sources: weight given on {unused}, which do not train (train: false); remove it")
        weighted = [s.name for s in self.sources if s.train and s.weight is not None]
        unweighted = [s.name for s in self.sources if s.train and s.weight is None]
        if weighted and unweighted:
            raise ValueError(
                f"sources: weight given on {weighted} but not on {unweighted}; give every training source a "
                "weight (its share of the draws), or none (drawn in proportion to size)"
            )
        return self

    @property
    def data_sources(self) -> list[DataSource]:
        """The data sets of this run: ``sources``, or the single one dataset / data_root name."""
        if self.sources:
            return list(self.sources)
        name = Path(self.data_root).name if self.data_root else self.dataset
        name = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "data"
        return [
            DataSource(name=name, dataset=self.dataset, data_root=self.data_root, dataset_options=self.dataset_options)
        ]

    @property
    def effective_mixup_alpha(self) -> float:
        """Mixup's Beta(α, α) parameter, 0 when mixup is off (α = 0 disables it)."""
        return self.mixup_alpha if self.mixup else 0.0

    @property
    def model_kwargs(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "output_stride": self.output_stride,
            "num_classes": 2,
            "pretrained": self.pretrained,
            "aspp_channels": self.aspp_channels,
            "decoder_channels": self.decoder_channels,
        }


# --------------------------------------------------------------------------- search space

#: Optuna names a backbone-dependent choice ``batch_size@resnet101`` (see ``ParamSpec.by``): a categorical's
#: choices may not change between trials under one name, so each parent value gets its own name.
BY_SEPARATOR = "@"


class ParamSpec(_Strict):
    """One searched parameter.

    ``when`` makes it conditional: ``{"loss": ["focal"]}`` means the parameter is sampled only
    for trials whose earlier-sampled ``loss`` is one of those values (otherwise the trial uses
    the fixed value or the TrainConfig default). ``by`` makes a categorical's choices depend on
    an earlier parameter, e.g. a backbone-dependent batch size: ``choices`` is then a mapping
    from that parameter's value to a list.
    """

    type: Literal["categorical", "float", "int"]
    choices: list[Any] | dict[str, list[Any]] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    when: dict[str, Any] | None = None
    by: str | None = None

    @model_validator(mode="after")
    def _check_shape(self) -> ParamSpec:
        if self.type == "categorical":
            if self.choices is None:
                raise ValueError("categorical parameter needs 'choices'")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("categorical parameter takes 'choices', not low/high/log/step")
            if self.by is None:
                if not isinstance(self.choices, list):
                    raise ValueError("'choices' must be a list (a mapping needs 'by: <param>')")
                if not self.choices:
                    raise ValueError("'choices' is empty: give at least one value")
            else:
                if not isinstance(self.choices, dict) or not self.choices:
                    raise ValueError(f"with 'by: {self.by}', 'choices' must map each {self.by} value to a list")
                for key, values in self.choices.items():
                    if not values:
                        raise ValueError(f"'choices' for {self.by}={key!r} is empty")
        else:
            if self.choices is not None or self.by is not None:
                raise ValueError(f"{self.type} parameter takes low/high, not choices/by")
            if self.low is None or self.high is None:
                raise ValueError(f"{self.type} parameter needs both 'low' and 'high'")
            if not self.low < self.high:
                raise ValueError(f"'low' ({self.low}) must be below 'high' ({self.high})")
            if self.log and self.low <= 0:
                raise ValueError("log-scale parameter needs low > 0")
            if self.log and self.step is not None:
                raise ValueError("'step' cannot be combined with 'log'")
            if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
                raise ValueError("int parameter needs whole-number low/high")
        return self

    def values(self) -> list[Any]:
        """Every value a categorical can take (for type checks); bounds for numeric ones."""
        if self.type == "categorical":
            if isinstance(self.choices, dict):
                return [v for vs in self.choices.values() for v in vs]
            return list(self.choices or [])
        return [self.low, self.high]


class Objective(_Strict):
    """One objective of the search: a reported metric and whether more or less is better."""

    metric: str
    mode: Literal["max", "min"]

    @field_validator("metric")
    @classmethod
    def _reported(cls, value: str) -> str:
        if value not in REPORTED_METRICS:
            raise ValueError(f"metric {value!r} is not reported by trials; expected one of {REPORTED_METRICS}")
        return value


class SelectSpec(_Strict):
    """Which trial of the sweep the final stage exports (``hairseg_core.search.pareto.select``).

    ``best``: the best by the first objective (ties: by the next ones). ``fastest_within``: the lowest
    ``latency_ms`` among trials whose ``metric`` is within ``max_drop`` of the best value of it.
    ``best_under``: the best by the first other objective among trials whose ``metric`` (one to
    minimise, e.g. ``latency_ms``) is at most ``limit``.
    """

    rule: Literal["best", "fastest_within", "best_under"] = "best"
    metric: str | None = None
    max_drop: Annotated[float, Field(ge=0)] | None = None
    limit: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _keys_of_rule(self) -> SelectSpec:
        needs = {"best": set(), "fastest_within": {"metric", "max_drop"}, "best_under": {"metric", "limit"}}[self.rule]
        for key in ("metric", "max_drop", "limit"):
            given = getattr(self, key) is not None
            if key in needs and not given:
                raise ValueError(f"rule {self.rule} needs {key}")
            if key not in needs and given:
                raise ValueError(f"rule {self.rule} takes no {key} (it takes {sorted(needs) or 'nothing else'})")
        return self


class SchedulerSpec(_Strict):
    """ASHA early stopping. ``max_t`` defaults to the trials' epoch count.

    ``metric`` is the one objective ASHA compares trials on at each rung (default: the first
    objective); it must be one of the objectives.
    """

    type: Literal["asha", "fifo"] = "asha"
    max_t: Annotated[int, Field(ge=1)] | None = None
    grace_period: Annotated[int, Field(ge=1)] = 1
    reduction_factor: Annotated[float, Field(gt=1)] = 2
    metric: str | None = None


class SearcherSpec(_Strict):
    """Optuna settings. ``storage`` (e.g. ``sqlite:///optuna.db``) keeps the study on disk.

    ``tpe`` and ``random`` take one or several objectives; ``nsga2`` (NSGA-II) is built for several:
    its first generation (``population_size`` trials, Optuna's default 50) is random, later ones
    are bred from the non-dominated trials.
    """

    sampler: Literal["tpe", "random", "nsga2"] = "tpe"
    n_startup_trials: Annotated[int, Field(ge=0)] = 4
    population_size: Annotated[int, Field(ge=2)] | None = None
    storage: str | None = None
    study_name: str | None = None
    #: Configurations tried first, before the sampler's own (Optuna ``enqueue_trial``): a recipe
    #: already measured to work, so a short study starts from it instead of from chance. Each maps
    #: searched parameter names to values inside their ranges; one left out is sampled.
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _population_for_nsga2(self) -> SearcherSpec:
        if self.population_size is not None and self.sampler != "nsga2":
            raise ValueError(f"population_size is an NSGA-II setting; sampler {self.sampler} does not use it")
        return self


class ResourcesSpec(_Strict):
    """Resources one trial asks Ray for; ``gpu`` may be fractional (0.5 = two trials per GPU)."""

    cpu: Annotated[float, Field(gt=0)] = 1
    gpu: Annotated[float, Field(ge=0)] = 0
    # memory of the cluster's GPUs when the driver cannot see it (hairseg_core/search/gpu_plan.py's memory guard)
    gpu_memory_gib: Annotated[float, Field(gt=0)] | None = None

    @field_validator("gpu")
    @classmethod
    def _gpu_fraction(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError("a GPU request above 1 must be a whole number")
        return value


class DataSettings(_Strict):
    """The ``data:`` block of a search space: how trials get their training and validation data.

    ``input``: ``auto`` holds the decoded data in memory (one copy per node, in Ray's object store) when
    it fits ``memory_budget_gib``, else streams it from a memory-mapped cache on each node's local disk
    (``cache_dir``; default ``$HAIRSEG_DATA_CACHE`` or ``~/.cache/hairseg/data``). ``memory`` / ``stream``
    force a path. See :mod:`hairseg_core.data.input_path`; the choice never changes what a trial learns.
    ``cache_workers``: decode threads when a node builds its cache (default: the CPUs the process may use).
    """

    input: Literal["auto", "memory", "stream"] = "auto"
    memory_budget_gib: Annotated[float, Field(gt=0)] = 2.0
    cache_dir: str | None = None
    cache_workers: Annotated[int, Field(ge=1)] | None = None


class FinalizeSettings(_Strict):
    """The ``finalize:`` block of a search space."""

    test_split: str = "test"
    max_test_images: Annotated[int, Field(ge=1)] | None = None
    promote_metric: Literal["acc", "acc_class", "miou", "fwiou", "boundary_f"] = "miou"
    promote_margin: float = 0.0
    # Promotion needs the paired bootstrap interval of (new - champion) above promote_margin at this
    # confidence: a point estimate on a few dozen test images moves by more than typical gains.
    promote_confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    bootstrap_resamples: Annotated[int, Field(ge=1000)] = 2000
    bootstrap_seed: int = 0
    # letterbox size of the exported webcam model; None: the short side the model was trained at
    # (hairseg_core.scaling.deploy_input_size)
    export_size: Annotated[int, Field(ge=32)] | None = None
    # int8: the export's ONNX model (model.json's "onnx" entry, which the webcam app, the browser page and
    # `hairseg evaluate` read) is a static int8 QDQ graph calibrated on calibration_images training images,
    # and its accuracy on every test source is measured; "none": fp32 (hairseg_core.deploy.quantize)
    quantize: Literal["none", "int8"] = "none"
    calibration_images: Annotated[int, Field(ge=1)] = 32
    # every trial's latency_ms: median of latency_repeats CPU passes at export_size, batch 1, with
    # latency_threads torch threads (fixed, so trials given different CPU counts compare)
    latency_threads: Annotated[int, Field(ge=1)] = 1
    latency_repeats: Annotated[int, Field(ge=20)] = 20
    export_dir: str = "exports"
    crf: dict[str, Any] = Field(default_factory=dict)
    matting: dict[str, Any] = Field(default_factory=lambda: {"method": "mishima", "trimap_width": 10})
    registered_model: str = "hairseg"

    @model_validator(mode="after")
    def _postprocessors_build(self) -> FinalizeSettings:
        """A bad CRF or matting setting would only surface after the whole sweep has trained."""
        try:
            build_table5_variants(self.crf, self.matting)
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"crf / matting settings: {exc}") from None
        return self


#: Settings that only matter when another one is on: searching them otherwise is a silent no-op.
INERT_UNLESS: dict[str, tuple[str, set[Any]]] = {
    "mixup_alpha": ("mixup", {True}),
    "focal_gamma": ("loss", {"focal"}),
    "focal_alpha": ("loss", {"focal"}),
}


class SearchSpace(_Strict):
    """A sweep: fixed settings, searched parameters, objective, scheduler, budget, resources."""

    name: str
    description: str = ""
    # one objective: metric / mode; several: objectives (metric / mode are then the first of them)
    metric: str = "val_miou"
    mode: Literal["max", "min"] = "max"
    objectives: list[Objective] = Field(default_factory=list)
    select: SelectSpec = Field(default_factory=SelectSpec)
    num_samples: Annotated[int, Field(ge=1)] = 8
    max_concurrent_trials: Annotated[int, Field(ge=1)] | None = None
    seed: int = 0
    fixed: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    searcher: SearcherSpec = Field(default_factory=SearcherSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    max_failures: Annotated[int, Field(ge=0)] = 2
    keep_checkpoints: Annotated[int, Field(ge=1)] = 2
    data: DataSettings = Field(default_factory=DataSettings)
    finalize: FinalizeSettings = Field(default_factory=FinalizeSettings)

    def _check_points_to_evaluate(self) -> None:
        """Each start point names searched parameters only, with a value each one can take."""
        points = self.searcher.points_to_evaluate
        if len(points) > self.num_samples:
            raise ValueError(f"searcher.points_to_evaluate: {len(points)} points but num_samples is {self.num_samples}")
        for i, point in enumerate(points):
            where = f"searcher.points_to_evaluate[{i}]"
            for name, value in point.items():
                spec = self.params.get(name)
                if spec is None:
                    raise ValueError(f"{where}.{name}: not a searched parameter; expected one of {sorted(self.params)}")
                if spec.type == "categorical":
                    if value not in spec.values():
                        raise ValueError(f"{where}.{name}: {value!r} is not one of its choices {spec.values()!r}")
                elif isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{where}.{name}: expected a number in [{spec.low}, {spec.high}], got {value!r}")
                elif not spec.low <= value <= spec.high:  # type: ignore[operator]
                    raise ValueError(f"{where}.{name}: {value} is outside [{spec.low}, {spec.high}]")

    def _check_no_inert_params(self) -> None:
        """A searched setting that no trial can use spends the budget on noise (e.g. mixup_alpha, mixup off)."""
        for name, (switch, enabling) in INERT_UNLESS.items():
            if name not in self.params:
                continue
            if switch in self.params:
                values = self.params[switch].values()
                where = f"params.{switch} only takes {values!r}"
            else:
                value = self.fixed.get(switch, TrainConfig.model_fields[switch].default)
                values = [value]
                where = f"{switch} is {value!r} in every trial"
            if not any(v in enabling for v in values):
                raise ValueError(
                    f"params.{name}: has no effect, {where}; set {switch} to one of {sorted(enabling, key=str)} "
                    f"(fixed or searched) or drop {name}"
                )

    @model_validator(mode="after")
    def _check_objectives(self) -> SearchSpace:
        """One objective list for everything downstream; ``metric`` / ``mode`` stay its first entry."""
        if not self.objectives:
            if "objectives" in self.model_fields_set:
                raise ValueError("objectives: empty; list at least one {metric, mode} (or leave it out)")
            if self.metric not in REPORTED_METRICS:
                raise ValueError(
                    f"metric {self.metric!r} is not reported by trials; expected one of {REPORTED_METRICS}"
                )
            self.objectives = [Objective(metric=self.metric, mode=self.mode)]
        first = self.objectives[0]
        for key in ("metric", "mode"):
            if key in self.model_fields_set and getattr(self, key) != getattr(first, key):
                raise ValueError(
                    f"{key}: {getattr(self, key)!r} contradicts objectives[0].{key} {getattr(first, key)!r}; "
                    f"with objectives, leave {key} out (it is the first objective's)"
                )
        self.metric, self.mode = first.metric, first.mode
        metrics = [o.metric for o in self.objectives]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"objectives: each metric may appear once, got {metrics}")
        if self.scheduler.metric is not None and self.scheduler.metric not in metrics:
            raise ValueError(
                f"scheduler.metric: {self.scheduler.metric!r} is not an objective; ASHA stops trials on one of "
                f"{metrics}"
            )
        select = self.select
        if select.metric is not None:
            if select.metric not in metrics:
                raise ValueError(f"select.metric: {select.metric!r} is not among the objectives {metrics}")
            if select.rule == "fastest_within":
                if "latency_ms" not in metrics:
                    raise ValueError(f"select: rule fastest_within needs latency_ms among the objectives {metrics}")
                if select.metric == "latency_ms":
                    raise ValueError("select.metric: fastest_within bounds an accuracy metric, not latency_ms itself")
            if select.rule == "best_under":
                if self.objective(select.metric).mode != "min":
                    raise ValueError(
                        f"select.metric: best_under bounds a metric to minimise (e.g. latency_ms); "
                        f"{select.metric} is maximised"
                    )
                if len(metrics) < 2:
                    raise ValueError("select: best_under needs a second objective to rank the trials under the limit")
        return self

    def objective(self, metric: str) -> Objective:
        """The objective of ``metric`` (KeyError when it is none)."""
        for objective in self.objectives:
            if objective.metric == metric:
                return objective
        raise KeyError(metric)

    @property
    def scheduler_objective(self) -> Objective:
        """What ASHA compares trials on at each rung: ``scheduler.metric``, default the first objective."""
        return self.objective(self.scheduler.metric) if self.scheduler.metric else self.objectives[0]

    @property
    def epoch_objective(self) -> Objective:
        """What picks a trial's best epoch (and checkpoint): the first objective that changes per epoch.

        Latency, parameters and MACs are the same in every epoch of a trial, so they cannot rank its
        epochs; with only such objectives the first one is returned (every epoch ties).
        """
        per_epoch = [o for o in self.objectives if o.metric not in ARCHITECTURE_METRICS]
        return (per_epoch or self.objectives)[0]

    @model_validator(mode="after")
    def _check_semantics(self) -> SearchSpace:
        fields = set(TrainConfig.model_fields)
        if self.metric not in REPORTED_METRICS:
            raise ValueError(f"metric {self.metric!r} is not reported by trials; expected one of {REPORTED_METRICS}")
        for key in self.fixed:
            if key not in fields:
                raise ValueError(f"fixed.{key}: not a training setting; expected one of {sorted(fields)}")
        if "epochs" in self.params:
            raise ValueError("params.epochs: epochs must be fixed (ASHA's max_t is the epoch count)")
        seen: list[str] = []
        for name, spec in self.params.items():
            if name not in fields:
                raise ValueError(f"params.{name}: not a training setting; expected one of {sorted(fields)}")
            if name in self.fixed:
                raise ValueError(f"params.{name}: also set in 'fixed'; a setting is either fixed or searched")
            for dep in [*(spec.when or {}), *([spec.by] if spec.by else [])]:
                if dep not in seen:
                    raise ValueError(
                        f"params.{name}: depends on {dep!r}, which must be a searched parameter listed before it"
                    )
            for dep, allowed in (spec.when or {}).items():
                parent = self.params[dep]
                wanted = allowed if isinstance(allowed, list) else [allowed]
                if parent.type == "categorical":
                    unknown = [v for v in wanted if v not in parent.values()]
                    if unknown:
                        raise ValueError(
                            f"params.{name}.when.{dep}: {unknown} is not a choice of {dep} {parent.values()}; "
                            f"{name} would never be sampled for it"
                        )
                elif any(
                    not isinstance(v, (int, float)) or not parent.low <= v <= parent.high  # type: ignore[operator]
                    for v in wanted
                ):
                    raise ValueError(
                        f"params.{name}.when.{dep}: {wanted} is outside {dep}'s range [{parent.low}, {parent.high}]"
                    )
            if spec.by and isinstance(spec.choices, dict):
                parent = self.params[spec.by]
                missing = [v for v in parent.values() if str(v) not in {str(k) for k in spec.choices}]
                if parent.type == "categorical" and missing:
                    raise ValueError(f"params.{name}.choices: no entry for {spec.by} = {missing}")
            seen.append(name)
        self._check_points_to_evaluate()
        # every value that can reach a trial must be a valid TrainConfig value
        base = dict(self.fixed)
        try:
            TrainConfig(**base)
        except ValidationError as exc:
            raise ValueError(f"fixed: {_first_error(exc)}") from None
        for name, spec in self.params.items():
            for value in spec.values():
                probe = value if spec.type == "categorical" else _cast_numeric(spec, value)
                try:
                    TrainConfig(**{**base, name: probe})
                except ValidationError as exc:
                    raise ValueError(f"params.{name}: value {probe!r} is invalid: {_first_error(exc)}") from None
        self._check_no_inert_params()
        if self.scheduler.max_t is not None and self.scheduler.max_t != self.epochs:
            raise ValueError(
                f"scheduler.max_t ({self.scheduler.max_t}) must equal fixed.epochs ({self.epochs}): "
                "trials report once per epoch"
            )
        if self.scheduler.grace_period > self.epochs:
            raise ValueError(f"scheduler.grace_period ({self.scheduler.grace_period}) exceeds epochs ({self.epochs})")
        return self

    @property
    def epochs(self) -> int:
        return int(self.fixed.get("epochs", TrainConfig.model_fields["epochs"].default))

    def trial_config(self, sampled: Mapping[str, Any]) -> TrainConfig:
        """Fixed settings + one trial's sampled values → a validated TrainConfig (see :func:`trial_config`)."""
        return trial_config(self.fixed, sampled)


def sampled_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """A Tune trial config without Optuna's internal ``name@parent`` keys (:data:`BY_SEPARATOR`)."""
    return {k: v for k, v in config.items() if BY_SEPARATOR not in k}


def trial_config(fixed: Mapping[str, Any], sampled: Mapping[str, Any]) -> TrainConfig:
    """The one route from a trial's settings to its typed :class:`TrainConfig`.

    A space's ``fixed`` settings with one trial's values over them (a Tune trial config as Ray hands it
    over: Optuna's ``name@parent`` keys are dropped). The trial trains with it, the results name it as the
    winner's config, the final stage evaluates with it: all go through here, so a trial's settings are
    validated and defaulted the same way everywhere.
    """
    return TrainConfig(**{**fixed, **sampled_settings(sampled)})


def _cast_numeric(spec: ParamSpec, value: float | None) -> float | int | None:
    if value is None:
        return None
    return int(value) if spec.type == "int" else float(value)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else err["msg"]


def format_validation_error(exc: ValidationError, source: str) -> str:
    """Turn pydantic's error list into 'file: key.path: message' lines a person can act on."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see hairseg_core/config.py for the schema)"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        lines.append(f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}")
    return "\n".join(lines)


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    """``raw["fixed"]["epochs"] = value`` for key ``fixed.epochs``; intermediate mappings are created."""
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}={value!r}: {'.'.join(parents[: i + 1])} is not a mapping")
        node = child
    node[leaf] = value


def _pin_searched(raw: dict[str, Any], key: str) -> None:
    """An override ``fixed.X`` of a searched ``X`` pins it: ``X`` leaves ``params`` and the start points.

    ``--set crop_size=65`` on a space that searches ``crop_size`` means "every trial at 65" (a quick
    run of a shipped study); refusing it as "fixed and searched" would make a user edit the file.
    """
    prefix, _, name = key.partition(".")
    params = raw.get("params")
    if prefix != "fixed" or "." in name or not isinstance(params, dict) or name not in params:
        return
    del params[name]
    searcher = raw.get("searcher")
    points = searcher.get("points_to_evaluate") if isinstance(searcher, dict) else None
    if isinstance(points, list):
        kept = [{k: v for k, v in p.items() if k != name} if isinstance(p, dict) else p for p in points]
        searcher["points_to_evaluate"] = [p for p in kept if p != {}]


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in one mapping is an error.

    Plain ``yaml.safe_load`` keeps the last of two equal keys silently: a space with ``lr_head`` twice
    (say, an edited copy pasted below the original) would search a range nobody reads in the file.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
                seen.setdefault(key, line)
            except TypeError:  # an unhashable key: let PyYAML report it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {first}, again on line {line})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; a file that is not UTF-8, not YAML or repeats a key is a ConfigError naming it."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = " ".join(filter(None, [exc.context, exc.problem]))
        raise ConfigError(f"{path}: not valid YAML: {where}{what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None


def load_search_space(path: str | Path, overrides: dict[str, Any] | None = None) -> SearchSpace:
    """Read and validate a search-space YAML.

    ``overrides`` replace keys before validation, so they are checked like the file: top-level
    (``num_samples``) or dotted (``fixed.epochs``, ``scheduler.grace_period``).
    """
    path = Path(path)
    if not path.is_file():
        available = sorted(p.name for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        raise ConfigError(f"{path}: search space file not found" + (f"; available: {available}" if available else ""))
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, key, value)
            _pin_searched(raw, key)
    fixed = raw.get("fixed")
    if isinstance(fixed, dict):
        _absolute_roots(fixed)
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("cache_dir"), str):
        data["cache_dir"] = _absolute(data["cache_dir"])
    return search_space_from_dict(raw, source=str(path))


def _absolute_roots(settings: dict[str, Any]) -> None:
    """Make ``data_root`` and every ``sources[].data_root`` absolute (trials run elsewhere)."""
    if settings.get("data_root"):
        settings["data_root"] = _absolute(settings["data_root"])
    for source in settings.get("sources") or []:
        if isinstance(source, dict) and source.get("data_root"):
            source["data_root"] = _absolute(source["data_root"])


def _absolute(path: str) -> str:
    """Relative data paths are relative to where the command runs; trials run elsewhere. URIs stay as given."""
    if "://" in path:  # object storage (s3://, gs://, file://): hairseg_core.data.remote stages it per node
        return path
    return str(Path(path).expanduser().resolve())


def search_space_from_dict(raw: dict[str, Any], source: str = "<dict>") -> SearchSpace:
    try:
        return SearchSpace(**raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_train_config(path: str | Path) -> TrainConfig:
    """Read a single-run YAML (``hairseg train --config``): TrainConfig fields at the top level."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of training settings")
    _absolute_roots(raw)
    return train_config_from_dict(raw, source=str(path))


def train_config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> TrainConfig:
    try:
        return TrainConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
