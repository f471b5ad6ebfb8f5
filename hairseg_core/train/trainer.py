"""One training run (one Tune trial) without Ray: build, train, evaluate, checkpoint.

``Trainer`` is driven epoch by epoch so that the caller decides what to do with each
epoch's metrics: the CLI prints them, the Tune glue reports them to ASHA and MLflow. A
checkpoint holds everything needed to continue *identically*: model, optimiser, LR schedule,
AMP scaler, epoch and RNG states, plus the history and caller-owned ``extra`` data (the Tune
glue keeps the trial's MLflow run id there so a restored trial continues its own run).

Determinism: every epoch reseeds torch / numpy / random, the DataLoader's shuffling and the
augmentation RNG from ``(seed, epoch)``, so epoch k after a resume sees the same batches and
the same augmentations as epoch k of an uninterrupted run.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler

from hairseg_core.artifact import TRAINING_CHECKPOINT_FORMAT, CheckpointError, check_training_format, load_model
from hairseg_core.config import DataSettings, DataSource, TrainConfig, train_config_from_dict
from hairseg_core.data.input_path import (
    cache_sources,
    choose_mode,
    estimate_decoded_bytes,
    needed_short_side,
    source_dataset,
    val_parts,
)
from hairseg_core.data.memory import MaterializedSplit
from hairseg_core.data.mixup import mixup_batch
from hairseg_core.data.sampling import sample_weights, train_part_sizes
from hairseg_core.data.splits import RawSplit, TransformedDataset, pool
from hairseg_core.data.transforms import build_eval_transform, build_train_transform, denormalize
from hairseg_core.models import build_model, param_groups
from hairseg_core.progress import progress_bar
from hairseg_core.scaling import effective_eval_size
from hairseg_core.train.gpu_settings import GpuSettings, resolve_gpu_settings
from hairseg_core.train.losses import build_loss, mixed_loss
from hairseg_core.train.metrics import SegmentationMetrics


@dataclass
class TrialData:
    """The train and validation splits a trial trains on (shareable across trials).

    With several data sources, ``train`` and ``val`` pool their images and ``val_parts`` maps each
    validation source's name to its ``[start, stop)`` range in ``val``, so each is also scored on its
    own. A single source has no parts. The splits are any :class:`~hairseg_core.data.splits.RawSplit`:
    decoded in memory, in Ray's object store, or streamed from a node cache
    (:mod:`hairseg_core.data.input_path`); :meth:`open` readies them in the process that trains.
    """

    train: RawSplit
    val: RawSplit
    val_parts: dict[str, tuple[int, int]] = field(default_factory=dict)

    def open(self, workers: int = 1, progress: bool = False) -> TrialData:
        """Map / fetch every split's storage in this process, before any DataLoader worker forks.

        A streamed split builds this node's cache first when the node has none (``workers`` decode
        threads); an object-store split fetches its chunks (zero-copy). In-memory splits need nothing.
        """
        for split in (self.train, self.val):
            for part in getattr(split, "parts", [(None, split)]):
                opener = getattr(part[1], "open", None)
                if opener is not None:
                    opener(workers=workers, progress=progress)
        return self

    @property
    def input_path(self) -> str:
        """How the samples are held (``memory``, ``object store``, ``stream``), for logs and run tags."""
        return "+".join(sorted({self.train.input_path, self.val.input_path}))

    @classmethod
    def from_parts(cls, train: list[tuple[str, RawSplit]], val: list[tuple[str, RawSplit]]) -> TrialData:
        """Pool each role's per-source splits (one source: unprefixed names, no parts)."""
        return cls(train=pool(train), val=pool(val), val_parts=val_parts(val))


def load_source_split(source: DataSource, split: str, progress: bool = False) -> MaterializedSplit:
    """Decode one split of one data source into memory; an empty split is an error naming it."""
    ds = source_dataset(source, split)
    if len(ds) == 0:
        raise ValueError(
            f"dataset {source.dataset!r} ({source.name}) split {split!r} is empty (root: {source.data_root})"
        )
    desc = f"loading {source.name}/{split}" if progress else None
    return MaterializedSplit.from_dataset(ds, desc=desc)


def load_trial_data(
    cfg: TrainConfig,
    progress: bool = False,
    settings: DataSettings | None = None,
    workers: int = 1,
) -> TrialData:
    """The train and validation splits of every data source of ``cfg``, by the input path ``settings`` choose.

    A single run (``hairseg train``, a test) decides on an estimate from a few decoded samples: within
    the memory budget the splits are decoded into memory, above it they stream from a node cache.
    """
    settings = settings or DataSettings()
    budget = int(settings.memory_budget_gib * 2**30)
    mode = settings.input
    if mode == "auto":
        mode = choose_mode("auto", estimate_decoded_bytes(cfg), budget)
    if mode == "stream":
        store = needed_short_side([cfg])
        cached = cache_sources(cfg, settings.cache_dir, store, workers=workers, progress=progress)
        return TrialData.from_parts(cached["train"], cached["val"])
    sources = cfg.data_sources
    train = [(s.name, load_source_split(s, "train", progress)) for s in sources if s.train]
    val = [(s.name, load_source_split(s, "val", progress)) for s in sources if s.val]
    return TrialData.from_parts(train, val)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was requested but torch sees no CUDA GPU; use device: auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % 2**31


def _seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker its own, reproducible augmentation stream."""
    info = torch.utils.data.get_worker_info()
    worker_seed = torch.initial_seed() % 2**31
    np.random.seed(worker_seed)
    random.seed(worker_seed)
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(worker_seed)


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "mask": torch.stack([torch.as_tensor(b["mask"]).long() for b in batch]),
        "name": [b["name"] for b in batch],
    }


def default_num_workers(cpus: int | None) -> int:
    """Loader workers for the CPUs a trial was given: one CPU stays with the training loop."""
    cpus = cpus or os.cpu_count() or 1
    return max(0, min(4, int(cpus) - 1))


class Trainer:
    """Trains one DeepLabv3+ configuration; iterate :meth:`fit` for per-epoch metrics."""

    def __init__(
        self,
        config: TrainConfig | dict[str, Any],
        data: TrialData | None = None,
        cpus: int | None = None,
        progress: bool = False,
        load_pretrained: bool = True,
        gpu_settings: GpuSettings | None = None,
    ) -> None:
        """``load_pretrained=False`` builds the network without reading its pretrained file: for a
        trainer about to load a checkpoint, whose weights replace them anyway (a trial restored on
        another node then needs no weights file there). ``gpu_settings``: AMP / channels-last / cudnn
        benchmark already resolved (the Tune trial resolves ``auto`` through the sweep's cache); None
        resolves them here (:func:`hairseg_core.train.gpu_settings.resolve_gpu_settings`; on a CPU: AMP off)."""
        self.cfg = config if isinstance(config, TrainConfig) else train_config_from_dict(config)
        cfg = self.cfg
        self.progress = progress
        self.device = resolve_device(cfg.device)
        # before seeding: an ``auto`` probe trains a throw-away network, which must not shift the RNG
        self.gpu_settings = gpu_settings or resolve_gpu_settings(cfg, self.device)
        seed_everything(cfg.seed)
        self.amp = self.gpu_settings.amp and self.device.type == "cuda"
        self.channels_last = self.gpu_settings.channels_last
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = self.gpu_settings.cudnn_benchmark
        self.data = (data if data is not None else load_trial_data(cfg, progress=progress, workers=cpus or 1)).open(
            workers=cpus or 1, progress=progress
        )
        # The network comes first after seeding: its initialisation draws from the seeded torch RNG.
        self._build_model(load_pretrained)
        self._build_optimisation()
        self._build_loaders(cpus)
        self._build_schedule()

        self.epoch = 0  # completed epochs
        self.history: list[dict[str, float]] = []
        self.extra: dict[str, Any] = {}

    def _build_model(self, load_pretrained: bool) -> None:
        """The network on its device (channels-last when the GPU settings say so)."""
        cfg = self.cfg
        model_kwargs = cfg.model_kwargs if load_pretrained else {**cfg.model_kwargs, "pretrained": "none"}
        self.model = build_model(**model_kwargs).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _build_optimisation(self) -> None:
        """Optimiser over the backbone / head parameter groups (their own learning rates), loss, AMP scaler."""
        cfg = self.cfg
        groups = param_groups(self.model, cfg.lr_backbone, cfg.lr_head, cfg.weight_decay)
        if cfg.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, momentum=cfg.momentum, nesterov=True)
        elif cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups)
        else:
            self.optimizer = torch.optim.Adam(groups)
        self.loss_fn = build_loss(
            cfg.loss,
            gc_weight=cfg.gc_weight,
            focal_gamma=cfg.focal_gamma,
            focal_alpha=cfg.focal_alpha,
            lovasz_weight=cfg.lovasz_weight,
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    def _build_loaders(self, cpus: int | None) -> None:
        """Train, validation and precise-BN datasets and loaders; shuffling draws from ``loader_generator``."""
        cfg = self.cfg
        workers = cfg.num_workers if cfg.num_workers is not None else default_num_workers(cpus)
        eval_size = effective_eval_size(cfg)
        self.train_set = TransformedDataset(
            self.data.train, build_train_transform(cfg.crop_size, cfg.base_size, rsc=cfg.rsc, blur=cfg.blur)
        )
        self.val_set = TransformedDataset(self.data.val, build_eval_transform(eval_size))
        # Precise BN reads training images the way validation sees them (no augmentation, no RNG),
        # in a fixed order: recalibration is deterministic and does not disturb resumability.
        self.bn_set = TransformedDataset(self.data.train, build_eval_transform(eval_size))
        if len(self.train_set) < cfg.batch_size:
            raise ValueError(
                f"batch_size {cfg.batch_size} exceeds the {len(self.train_set)} training images of {cfg.dataset!r}"
            )
        self.loader_generator = torch.Generator()
        loader_kw: dict[str, Any] = {
            "num_workers": workers,
            "collate_fn": _collate,
            "pin_memory": self.device.type == "cuda",
        }
        if workers > 0:
            loader_kw.update(worker_init_fn=_seed_worker, prefetch_factor=2)
        # sources[].weight: draw the pool by per-source shares (with replacement); else shuffle it
        weights = sample_weights(cfg.data_sources, train_part_sizes(self.data.train, cfg.data_sources))
        sampler = None
        if weights is not None:
            sampler = WeightedRandomSampler(
                torch.as_tensor(weights, dtype=torch.double),
                len(weights),
                replacement=True,
                generator=self.loader_generator,
            )
        self.train_loader = DataLoader(
            self.train_set,
            batch_size=cfg.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            drop_last=True,
            generator=self.loader_generator,
            **loader_kw,
        )
        self.val_loader = DataLoader(self.val_set, batch_size=max(1, cfg.batch_size), shuffle=False, **loader_kw)
        self.bn_loader = DataLoader(self.bn_set, batch_size=cfg.batch_size, shuffle=False, **loader_kw)

    def _build_schedule(self) -> None:
        """Steps per epoch (capped by ``max_steps_per_epoch``) and the per-group LR schedule over all of them:
        warm-up for every group, and the backbone held at zero for its ``freeze_backbone_steps``."""
        cfg = self.cfg
        self.steps_per_epoch = len(self.train_loader)
        if cfg.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps_per_epoch)
        total = max(1, self.steps_per_epoch * cfg.epochs)
        base = _schedule(cfg.lr_schedule, total)
        lambdas = [
            _warm(base, cfg.warmup_steps, cfg.freeze_backbone_steps if group["name"] == "backbone" else 0)
            for group in self.optimizer.param_groups
        ]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambdas)

    # ------------------------------------------------------------------ training
    def fit(self) -> Iterator[dict[str, float]]:
        """Run the remaining epochs, yielding each epoch's metrics."""
        while self.epoch < self.cfg.epochs:
            yield self.run_epoch()

    def run_epoch(self) -> dict[str, float]:
        cfg = self.cfg
        start = time.perf_counter()
        seed = _epoch_seed(cfg.seed, self.epoch)
        seed_everything(seed)
        self.loader_generator.manual_seed(seed)
        if hasattr(self.train_set.transform, "set_random_seed"):
            self.train_set.transform.set_random_seed(seed)
        mix_rng = torch.Generator().manual_seed(seed)
        self.model.train()
        total_loss, n_batches = 0.0, 0
        bar = progress_bar(
            total=self.steps_per_epoch,
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            disable=not self.progress,
            leave=False,
        )
        for step, batch in enumerate(self.train_loader):
            if step >= self.steps_per_epoch:
                break
            images = batch["image"].to(self.device, non_blocking=True)
            masks = batch["mask"].to(self.device, non_blocking=True)
            images, y_a, y_b, lam = mixup_batch(images, masks, cfg.effective_mixup_alpha, generator=mix_rng)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
                logits = self.model(images)
            logits = logits.float()
            loss = mixed_loss(self.loss_fn, logits, y_a, y_b, lam, image=images)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss.item()} at epoch {self.epoch + 1}, step {step}: "
                    f"lower lr_head ({cfg.lr_head}) / lr_backbone ({cfg.lr_backbone})"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            total_loss += loss.item()
            n_batches += 1
            bar.update(1)
            bar.set_postfix(loss=f"{total_loss / n_batches:.4f}")
        bar.close()
        if cfg.precise_bn_batches:
            self.recalibrate_batchnorm(cfg.precise_bn_batches)
        val = self.evaluate()
        self.epoch += 1
        result = {
            "epoch": self.epoch,
            "train_loss": total_loss / max(1, n_batches),
            **{f"val_{k}": v for k, v in val.items()},
            "lr_head": self.optimizer.param_groups[-1]["lr"],
            "epoch_seconds": time.perf_counter() - start,
        }
        self.history.append(result)
        return result

    def recalibrate_batchnorm(self, batches: int) -> int:
        """Precise BN (:func:`recalibrate_batchnorm`) over ``batches`` batches of ``bn_loader``: training
        images seen the way validation sees them, with the trainer's device, memory format and AMP.
        Returns the number of batches used."""

        def images() -> Iterator[torch.Tensor]:
            for batch in self.bn_loader:
                x = batch["image"].to(self.device)
                yield x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

        def forward(x: torch.Tensor) -> object:
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
                return self.model(x)

        return recalibrate_batchnorm(self.model, images(), max_batches=batches, forward=forward)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss and Acc / Acc_class / mIoU / fwIoU / boundary F on the val split.

        With several validation sources each is scored on its own (``<name>_miou``, ...) and the
        unprefixed metrics combine them as ``val_combine`` says: the mean of the sources' scores,
        or one confusion matrix over all their images ("pooled").
        """
        self.model.eval()
        parts = self.data.val_parts or {"": (0, len(self.val_set))}
        pooled = SegmentationMetrics(num_classes=2)
        per_source: dict[str, dict[str, float]] = {}
        total, count = 0.0, 0
        for name, (start, stop) in parts.items():
            metrics = SegmentationMetrics(num_classes=2)
            loader = self.val_loader
            if self.data.val_parts:
                subset = torch.utils.data.Subset(self.val_set, range(start, stop))
                loader = DataLoader(subset, batch_size=self.val_loader.batch_size, collate_fn=_collate)
            for batch in loader:
                images = batch["image"].to(self.device)
                masks = batch["mask"].to(self.device)
                if self.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
                    logits = self.model(images)
                logits = logits.float()
                total += self.loss_fn(logits, masks, image=images).item() * images.shape[0]
                count += images.shape[0]
                preds, targets = logits.argmax(1).cpu(), masks.cpu()
                metrics.update(preds, targets)
                if self.data.val_parts:
                    pooled.update(preds, targets)
            per_source[name] = {k: float(v) for k, v in metrics.compute().items()}
        if not self.data.val_parts:
            scores = per_source[""]
        elif self.cfg.val_combine == "pooled":
            scores = {k: float(v) for k, v in pooled.compute().items()}
        else:
            keys = per_source[next(iter(per_source))].keys()
            scores = {k: float(np.mean([s[k] for s in per_source.values()])) for k in keys}
        scores["loss"] = total / max(1, count)
        if self.data.val_parts:
            for name, source_scores in per_source.items():
                scores.update({f"{name}_{k}": v for k, v in source_scores.items()})
        return scores

    @torch.no_grad()
    @torch.no_grad()
    def predict_samples(self, n: int = 4) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(image uint8 RGB, mask, hair probability) for the first ``n`` validation images."""
        self.model.eval()
        out = []
        for i in range(min(n, len(self.val_set))):
            sample = self.val_set[i]
            x = sample["image"].unsqueeze(0).to(self.device)
            prob = torch.softmax(self.model(x).float(), 1)[0, 1].cpu().numpy()
            out.append((denormalize(sample["image"]), np.asarray(sample["mask"]), prob))
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        rng: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state_to_tensor(np.random.get_state()),
            "python": random.getstate(),
            "loader": self.loader_generator.get_state(),
        }
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": TRAINING_CHECKPOINT_FORMAT,
            "train_config": self.cfg.model_dump(),
            "model_config": dict(self.model.config),
            "model_state": self.model.state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "scheduler_state": self.scheduler.state_dict(),
            "scaler_state": self.scaler.state_dict(),
            "epoch": self.epoch,
            "rng": rng,
            "history": list(self.history),
            "extra": dict(self.extra),
            "gpu_settings": self.gpu_settings.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_training_format(state, "<state>")
        # a setting added to TrainConfig after the checkpoint was written (e.g. cudnn_benchmark) is its default
        current = self.cfg.model_dump()
        fields = TrainConfig.model_fields
        current = {k: v for k, v in current.items() if k in state["train_config"] or v != fields[k].default}
        if state["train_config"] != current:
            changed = sorted(
                k for k in {*state["train_config"], *current} if state["train_config"].get(k) != current.get(k)
            )
            raise CheckpointError(f"checkpoint was made with different settings: {changed}")
        self.model.load_state_dict(state["model_state"])
        self.optimizer.load_state_dict(state["optimizer_state"])
        self.scheduler.load_state_dict(state["scheduler_state"])
        self.scaler.load_state_dict(state["scaler_state"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.extra = dict(state.get("extra", {}))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(_tensor_to_numpy_state(rng["numpy"]))
        random.setstate(_as_tuple(rng["python"]))
        self.loader_generator.set_state(rng["loader"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename) so a killed process never leaves half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, data: TrialData | None = None, cpus: int | None = None, progress: bool = False
    ) -> Trainer:
        state = load_model(path, "state")
        # A restored run keeps the settings it trained with (its GradScaler state matches its AMP), on the same
        # kind of device; elsewhere (a GPU run restored on a CPU) they are resolved for the new device.
        stored = state.get("gpu_settings")
        device = resolve_device(train_config_from_dict(state["train_config"]).device)
        settings = None
        if stored and (stored.get("device", "cpu") == "cpu") == (device.type != "cuda"):
            settings = replace(GpuSettings.from_dict(stored), source="checkpoint")
        trainer = cls(
            state["train_config"], data=data, cpus=cpus, progress=progress, load_pretrained=False, gpu_settings=settings
        )
        trainer.load_state_dict(state)
        return trainer


def _warm(base: Any, warmup_steps: int, frozen_steps: int) -> Any:
    """``base(step)`` after a linear warm-up, 0 while frozen.

    A closure, not a callable object: ``LambdaLR.state_dict`` would store an object's attributes
    in the checkpoint, and the checkpoint must hold tensors and plain values only.
    """

    def multiplier(step: int) -> float:
        if step < frozen_steps:
            return 0.0
        ramp = min(1.0, (step - frozen_steps + 1) / warmup_steps) if warmup_steps else 1.0
        return ramp * base(step)

    return multiplier


def _schedule(kind: str, total_steps: int):
    if kind == "poly":
        return lambda step: max(0.0, 1.0 - min(step, total_steps) / total_steps) ** 0.9
    if kind == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return lambda step: 1.0


def _numpy_state_to_tensor(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _tensor_to_numpy_state(state: dict[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, state["pos"], state["has_gauss"], state["cached"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    max_batches: int | None = None,
    forward: Callable[[torch.Tensor], object] | None = None,
) -> int:
    """Re-estimate BatchNorm running statistics with the current weights ("precise BN").

    During training the running mean/var are an exponential average over batches seen with *older*
    weights; after a few hundred steps from scratch they lag far behind and eval-mode predictions
    collapse. Resetting them and averaging exactly (momentum=None) over forward passes in train mode
    fixes that without touching the weights. ``batches`` are input tensors (at most ``max_batches`` are
    used), ``forward`` runs one (default ``model``). The model is left in train mode; the momenta are
    restored. Returns the number of batches used. The one implementation: the trainer and
    ``benchmarks/webcam_fps.py`` both call it.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    norms = [m for m in norms if m.track_running_stats]
    if not norms or (max_batches is not None and max_batches <= 0):
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the recalibration batches
    run = forward or model
    used = 0
    model.train()
    try:
        for images in batches:
            if max_batches is not None and used >= max_batches:
                break
            run(images)
            used += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
    return used
