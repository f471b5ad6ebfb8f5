"""AMP, channels-last and cudnn benchmark for one training run, chosen by measurement when asked ``auto``.

Why measure instead of a rule: on one H200 (benchmarks/README.md, "GPU settings") AMP speeds ResNet-101 up
1.4x at 512 px / batch 16 and slows it down 1.3x at 257 px / batch 8; channels-last helps DRN-D-54 1.5x and
slows MobileNetV2 at batch 16; cudnn benchmark helps one configuration and costs 28 % in another. What is
fastest depends on the GPU model, the backbone, the crop and the batch, so ``amp: auto`` (likewise
``channels_last`` and ``cudnn_benchmark``) times a few training steps of each combination the first time a
(GPU model, architecture, crop, batch) appears in a sweep — seconds, against trials of minutes — and stores
the choice in the sweep's storage (:class:`SettingsCache`), so every later trial of that configuration, on
any node, reuses it without measuring.

On a CPU ``auto`` means what the CPU path has always done: AMP off (autocast is CUDA-only here), channels-last
off, cudnn untouched; ``true``/``false`` keep their meaning everywhere, so nothing on a CPU changes.

Imports torch lazily and never pydantic, albumentations, Ray or MLflow: the Trainer, the Tune trial and
``benchmarks/gpu_train.py`` (which runs on GPU machines without those) share the step and its timing here.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hairseg_core.track.tags import (
    TAG_GPU_KNOB_PREFIX,
    TAG_GPU_PROBE_IMAGES_PER_S,
    TAG_GPU_PROBE_SECONDS,
    TAG_GPU_SETTINGS_KEY,
    TAG_GPU_SETTINGS_SOURCE,
    TAG_TRAIN_DEVICE,
)

logger = logging.getLogger(__name__)

#: The settings ``auto`` applies to, in the order combinations are named and tried.
KNOBS = ("amp", "channels_last", "cudnn_benchmark")
AUTO = "auto"

#: A combination must be this much faster than one with fewer settings on to be picked: AMP changes the
#: numerics and cudnn benchmark makes runs non-deterministic, so neither is worth a gain within the noise of
#: a few timed steps.
TOLERANCE = 0.03

#: Steps the probe times per combination: ``PROBE_STEPS`` after ``PROBE_WARMUP`` (cudnn's autotuning runs in
#: the first ones), fewer once ``PROBE_SECONDS`` have passed. Eight combinations of the paper's largest
#: trial (Xception-65, 512 px, batch 16: 0.15 s a step in fp32) take about 15 s.
PROBE_WARMUP = 3
PROBE_STEPS = 8
PROBE_SECONDS = 2.0

Combo = dict[str, bool]
#: ``timer(combo) -> (images/s or None when it failed, e.g. out of memory; peak GiB or None)``.
Timer = Callable[[Combo], tuple[float | None, float | None]]


def combo_name(combo: Mapping[str, bool]) -> str:
    """``fp32``, ``amp``, ``amp+cl``, ``cl+bench``...: a combination as the JSON lines and tags name it."""
    short = {"amp": "amp", "channels_last": "cl", "cudnn_benchmark": "bench"}
    parts = [short[k] for k in KNOBS if combo.get(k)]
    return "+".join(parts) if parts else "fp32"


def requested_settings(cfg: Any) -> dict[str, bool | str]:
    """amp / channels_last / cudnn_benchmark of a config object (``TrainConfig`` or anything alike)."""
    return {knob: getattr(cfg, knob, False) for knob in KNOBS}


def candidates(requested: Mapping[str, bool | str]) -> list[Combo]:
    """Every combination the ``auto`` settings can take; the fixed ones keep their value."""
    auto = [k for k in KNOBS if requested.get(k) == AUTO]
    fixed = {k: bool(requested.get(k, False)) for k in KNOBS if k not in auto}
    combos = []
    for values in itertools.product((False, True), repeat=len(auto)):
        combos.append({**fixed, **dict(zip(auto, values, strict=True))})
    return [{k: c[k] for k in KNOBS} for c in combos]


def choose(timings: Mapping[str, float | None], combos: Sequence[Combo], tolerance: float = TOLERANCE) -> Combo:
    """The fastest combination; among those within ``tolerance`` of it, the one with the fewest settings on.

    ``timings`` maps :func:`combo_name` to images/s (None: it failed, e.g. ran out of memory). Raises
    ``RuntimeError`` when every combination failed.
    """
    measured = [(c, timings.get(combo_name(c))) for c in combos]
    ok = [(c, rate) for c, rate in measured if rate]
    if not ok:
        raise RuntimeError(f"every combination failed to train: {dict(timings)}")
    best = max(rate for _, rate in ok)
    close = [c for c, rate in ok if rate >= best * (1 - tolerance)]
    # fewest settings on, then AMP last (numerics), then the fastest
    return min(close, key=lambda c: (sum(c.values()), c["amp"], c["cudnn_benchmark"], -(timings[combo_name(c)] or 0)))


@dataclass(frozen=True)
class GpuSettings:
    """The settings a run trains with, and where they came from (recorded on the trial's MLflow run).

    ``source``: ``cpu`` (on a CPU: AMP off, as always), ``fixed`` (no ``auto`` asked), ``probe`` (this run
    timed the combinations), ``cache`` (another trial of the sweep did), ``checkpoint`` (a restored run keeps
    the settings it trained with).
    """

    amp: bool
    channels_last: bool
    cudnn_benchmark: bool
    source: str
    device: str = "cpu"
    key: str | None = None
    probe_seconds: float | None = None
    images_per_s: dict[str, float | None] = field(default_factory=dict)
    peak_gib: dict[str, float | None] = field(default_factory=dict)

    def combo(self) -> Combo:
        return {k: bool(getattr(self, k)) for k in KNOBS}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GpuSettings:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})

    def tags(self) -> dict[str, str]:
        """MLflow tags of a trial run: what it trained with and why."""
        tags = {f"{TAG_GPU_KNOB_PREFIX}{k}": str(getattr(self, k)).lower() for k in KNOBS}
        tags[TAG_GPU_SETTINGS_SOURCE] = self.source
        tags[TAG_TRAIN_DEVICE] = self.device
        if self.key:
            tags[TAG_GPU_SETTINGS_KEY] = self.key
        if self.probe_seconds is not None:
            tags[TAG_GPU_PROBE_SECONDS] = f"{self.probe_seconds:.1f}"
        if self.images_per_s:
            rates = {k: None if v is None else round(v, 1) for k, v in self.images_per_s.items()}
            tags[TAG_GPU_PROBE_IMAGES_PER_S] = json.dumps(rates, sort_keys=True)
        return tags


# --------------------------------------------------------------------------- the cache in the sweep's storage


@dataclass(frozen=True)
class ProbeKey:
    """What the fastest settings depend on: the GPU model, the software, the network and the step's shape."""

    gpu: str
    torch: str
    backbone: str
    output_stride: int
    aspp_channels: int
    decoder_channels: int
    crop: int
    batch: int
    fixed: str  # the settings not asked ``auto``, e.g. "cudnn_benchmark=false"

    @classmethod
    def of(cls, cfg: Any, gpu: str, torch_version: str) -> ProbeKey:
        requested = requested_settings(cfg)
        fixed = ",".join(f"{k}={str(v).lower()}" for k, v in requested.items() if v != AUTO)
        return cls(
            gpu=gpu,
            torch=torch_version,
            backbone=str(cfg.backbone),
            output_stride=int(cfg.output_stride),
            aspp_channels=int(cfg.aspp_channels),
            decoder_channels=int(cfg.decoder_channels),
            crop=int(cfg.crop_size),
            batch=int(cfg.batch_size),
            fixed=fixed,
        )

    def slug(self) -> str:
        """A file name: readable start, hash of every field for uniqueness."""
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]
        return f"{self.backbone}-c{self.crop}-b{self.batch}-{digest}"

    def describe(self) -> str:
        return (
            f"{self.gpu}, {self.backbone} OS{self.output_stride} head {self.aspp_channels}/{self.decoder_channels}, "
            f"crop {self.crop}, batch {self.batch}" + (f", {self.fixed}" if self.fixed else "")
        )


class _LocalStore:
    """A folder on a local or shared (NFS) file system: exclusive create and atomic publish are real."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def _path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def read(self, name: str) -> bytes | None:
        try:
            with open(self._path(name), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def create_exclusive(self, name: str, data: bytes) -> bool:
        """Publish ``data`` as ``name`` unless it exists: written to a temporary file, then hard-linked
        (atomic, and it fails when the name exists, so readers never see half a file and the first wins)."""
        os.makedirs(self.folder, exist_ok=True)
        tmp = self._path(f".{name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
        try:
            os.link(tmp, self._path(name))
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(name))


class _ArrowStore:
    """An object store (s3://, gs://) through pyarrow.fs, as Ray Tune stores its state.

    Object stores have no exclusive create: "create unless it exists" is a check then a write, so two trials
    starting within the same instant can both probe and the last write wins. Each trial reads the stored
    record back after writing and trains with what is stored, so at most the racing trials differ, and each
    run records what it used.
    """

    def __init__(self, uri: str) -> None:
        import pyarrow.fs  # deferred: only for URIs

        self.fs, self.folder = pyarrow.fs.FileSystem.from_uri(uri)
        self._types = pyarrow.fs.FileType

    def _path(self, name: str) -> str:
        return f"{self.folder.rstrip('/')}/{name}"

    def read(self, name: str) -> bytes | None:
        if self.fs.get_file_info(self._path(name)).type != self._types.File:
            return None
        with self.fs.open_input_stream(self._path(name)) as stream:
            return stream.read()

    def create_exclusive(self, name: str, data: bytes) -> bool:
        if self.read(name) is not None:
            return False
        self.fs.create_dir(self.folder, recursive=True)
        with self.fs.open_output_stream(self._path(name)) as stream:
            stream.write(data)
        return True

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.delete_file(self._path(name))


class SettingsCache:
    """The sweep's choices, one small JSON file per :class:`ProbeKey` under ``folder`` (a path or a URI).

    One file per configuration instead of one shared JSON: nothing is ever read, modified and written back,
    so concurrent trials on several nodes cannot lose each other's entries. A trial about to probe first
    claims the configuration (``<slug>.probing``); trials of the same configuration that start meanwhile wait
    for its result instead of timing the same thing on the same GPU at the same time (which would also
    disturb each other's timings). A claim older than ``stale_s`` (its trial died) is ignored.
    """

    def __init__(
        self,
        folder: str,
        stale_s: float = 180.0,
        poll_s: float = 0.5,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.folder = folder
        self.store: _LocalStore | _ArrowStore = _ArrowStore(folder) if "://" in folder else _LocalStore(folder)
        self.stale_s = stale_s
        self.poll_s = poll_s
        self.clock = clock
        self.sleep = sleep

    def get(self, key: ProbeKey) -> dict[str, Any] | None:
        data = self.store.read(key.slug() + ".json")
        if data is None:
            return None
        try:
            record = json.loads(data)
        except ValueError:
            return None
        return record if record.get("key") == asdict(key) else None

    def put(self, key: ProbeKey, record: Mapping[str, Any]) -> dict[str, Any]:
        """Store ``record`` unless another trial stored one first; return the record that is stored."""
        payload = {**record, "key": asdict(key)}
        self.store.create_exclusive(key.slug() + ".json", json.dumps(payload, indent=1, sort_keys=True).encode())
        return self.get(key) or payload

    def claim(self, key: ProbeKey) -> bool:
        """Whether this process may probe ``key`` now (no fresh claim by another one exists)."""
        name = key.slug() + ".probing"
        data = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": self.clock()}).encode()
        if self.store.create_exclusive(name, data):
            return True
        if self._claim_age(key) > self.stale_s:  # its trial died while probing: take it over
            self.store.delete(name)
            return self.store.create_exclusive(name, data)
        return False

    def release(self, key: ProbeKey) -> None:
        self.store.delete(key.slug() + ".probing")

    def _claim_age(self, key: ProbeKey) -> float:
        data = self.store.read(key.slug() + ".probing")
        if data is None:
            return float("inf")
        try:
            return self.clock() - float(json.loads(data)["time"])
        except (ValueError, KeyError, TypeError):
            return float("inf")

    def wait(self, key: ProbeKey) -> dict[str, Any] | None:
        """The record another trial is probing, once stored; None when its claim went stale or vanished
        without a record (it failed): the caller then probes itself."""
        while True:
            record = self.get(key)
            if record is not None:
                return record
            if self._claim_age(key) > self.stale_s:
                return None
            self.sleep(self.poll_s)


# --------------------------------------------------------------------------- resolution


def resolve_settings(
    requested: Mapping[str, bool | str],
    device_type: str,
    device_name: str = "cpu",
    key: ProbeKey | None = None,
    cache: SettingsCache | None = None,
    timer: Timer | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> GpuSettings:
    """The settings a run trains with (the logic; :func:`resolve_gpu_settings` wires in torch).

    ``timer`` is called once per combination only when something is ``auto`` on a CUDA device and neither
    the cache nor a concurrent trial has the answer.
    """
    if device_type != "cuda":
        # Today's CPU behaviour: autocast and GradScaler are CUDA-only here, so AMP is off whatever was asked;
        # channels-last only where asked explicitly; the cudnn flag is left alone.
        return GpuSettings(
            amp=False, channels_last=requested.get("channels_last") is True, cudnn_benchmark=False, source="cpu"
        )
    combos = candidates(requested)
    if len(combos) == 1:
        return GpuSettings(**combos[0], source="fixed", device=device_name)
    if key is None:
        raise ValueError("auto GPU settings need a probe key")
    record = cache.get(key) if cache is not None else None
    source = "cache"
    if record is None:
        claimed = cache is None or cache.claim(key)
        if not claimed:
            logger.info("waiting for another trial's GPU settings probe of %s", key.describe())
            record = cache.wait(key) if cache is not None else None
        if record is None:
            if timer is None:
                raise ValueError(f"auto GPU settings of {key.describe()}: nothing cached and no timer to probe with")
            try:
                record = _probe(combos, timer, clock)
                source = "probe"
                if cache is not None:
                    stored = cache.put(key, record)
                    source = "probe" if stored.get("choice") == record["choice"] else "cache"
                    record = stored
            finally:
                if cache is not None and claimed:
                    cache.release(key)
    choice = {k: bool(record["choice"][k]) for k in KNOBS}
    logger.info(
        "GPU settings for %s: %s (%s%s)",
        key.describe(),
        combo_name(choice),
        source,
        f", probed in {record['seconds']:.1f} s" if source == "probe" else "",
    )
    return GpuSettings(
        **choice,
        source=source,
        device=device_name,
        key=key.slug(),
        probe_seconds=record.get("seconds"),
        images_per_s=dict(record.get("images_per_s", {})),
        peak_gib=dict(record.get("peak_gib", {})),
    )


def _probe(combos: Sequence[Combo], timer: Timer, clock: Callable[[], float]) -> dict[str, Any]:
    start = clock()
    rates: dict[str, float | None] = {}
    peaks: dict[str, float | None] = {}
    for combo in combos:
        rates[combo_name(combo)], peaks[combo_name(combo)] = timer(combo)
    choice = choose(rates, combos)
    return {
        "choice": choice,
        "images_per_s": rates,
        "peak_gib": peaks,
        "seconds": clock() - start,
        "host": socket.gethostname(),
        "created": time.time(),
    }


def resolve_gpu_settings(cfg: Any, device: Any, cache: SettingsCache | None = None) -> GpuSettings:
    """The settings of a run of ``cfg`` (a ``TrainConfig`` or alike) on ``device`` (a ``torch.device``).

    Call it before seeding: on a GPU with ``auto`` it builds and trains a throw-away copy of the network.
    """
    import torch

    requested = requested_settings(cfg)
    if device.type != "cuda":
        return resolve_settings(requested, device.type)
    name = torch.cuda.get_device_name(device)
    key = ProbeKey.of(cfg, name, torch.__version__)
    timer = None
    if AUTO in requested.values():
        timer = ConfigTimer(cfg, device)
    try:
        return resolve_settings(requested, "cuda", name, key, cache, timer)
    finally:
        if timer is not None:
            timer.close()


# --------------------------------------------------------------------------- one training step, timed


@dataclass
class TrainParts:
    """What one training step touches, built the way ``Trainer`` builds it."""

    model: Any
    loss_fn: Any
    optimizer_name: str
    groups: Callable[[], list[dict[str, Any]]]
    momentum: float = 0.9


def build_train_parts(
    model_kwargs: Mapping[str, Any],
    device: Any,
    loss: str = "ce",
    gc_weight: float = 0.0,
    focal_gamma: float = 2.0,
    focal_alpha: float = 0.5,
    lovasz_weight: float = 0.0,
    optimizer: str = "adam",
    lr_backbone: float = 1e-4,
    lr_head: float = 1e-3,
    weight_decay: float = 1e-4,
) -> TrainParts:
    """The network (never pretrained weights: they change no timing), loss and optimizer groups."""
    from hairseg_core.models import build_model, param_groups
    from hairseg_core.train.losses import build_loss

    model = build_model(**{**model_kwargs, "pretrained": "none"}).to(device)
    loss_fn = build_loss(
        loss, gc_weight=gc_weight, focal_gamma=focal_gamma, focal_alpha=focal_alpha, lovasz_weight=lovasz_weight
    )
    return TrainParts(
        model=model,
        loss_fn=loss_fn,
        optimizer_name=optimizer,
        groups=lambda: param_groups(model, lr_backbone, lr_head, weight_decay),
    )


def make_optimizer(parts: TrainParts) -> Any:
    import torch

    groups = parts.groups()
    if parts.optimizer_name == "sgd":
        return torch.optim.SGD(groups, momentum=parts.momentum, nesterov=True)
    if parts.optimizer_name == "adamw":
        return torch.optim.AdamW(groups)
    return torch.optim.Adam(groups)


@contextlib.contextmanager
def applied(combo: Mapping[str, bool], parts: TrainParts) -> Iterator[None]:
    """The model in the combination's memory format and cudnn's benchmark flag set, restored afterwards."""
    import torch

    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(combo["cudnn_benchmark"])
    fmt = torch.channels_last if combo["channels_last"] else torch.contiguous_format
    parts.model.to(memory_format=fmt)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous
        parts.model.to(memory_format=torch.contiguous_format)


def time_training(
    parts: TrainParts,
    combo: Mapping[str, bool],
    batch: int,
    crop: int,
    device: Any,
    warmup: int = PROBE_WARMUP,
    steps: int = PROBE_STEPS,
    max_seconds: float | None = PROBE_SECONDS,
    seed: int = 0,
) -> dict[str, float]:
    """Training images/s of ``Trainer.run_epoch``'s step on random tensors already on ``device``.

    The step is the Trainer's: autocast forward, float loss (``mixed_loss`` without mixup), zeroed grads,
    scaled backward, scaler step and update, on a fresh optimizer and GradScaler. Times ``steps`` steps after
    ``warmup``, fewer (at least 2) once ``max_seconds`` have passed. Returns images/s, ms/step, steps timed
    and, on CUDA, the peak memory torch allocated and reserved (GiB).
    """
    import torch

    from hairseg_core.train.losses import mixed_loss

    cuda = device.type == "cuda"
    amp = bool(combo["amp"]) and cuda
    generator = torch.Generator(device=device).manual_seed(seed)
    images = torch.randn(batch, 3, crop, crop, device=device, generator=generator)
    masks = torch.randint(0, 2, (batch, crop, crop), device=device, generator=generator)
    if combo["channels_last"]:
        images = images.contiguous(memory_format=torch.channels_last)
    model = parts.model.train()
    optimizer = make_optimizer(parts)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    def step() -> None:
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            logits = model(images)
        loss = mixed_loss(parts.loss_fn, logits.float(), masks, masks, 1.0, image=images)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    with applied(combo, parts):
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            step()
        sync()
        start = time.perf_counter()
        done = 0
        while done < steps:
            step()
            done += 1
            if max_seconds is not None and done >= 2 and time.perf_counter() - start >= max_seconds:
                break
        sync()
        seconds = time.perf_counter() - start
    result = {
        "images_per_s": done * batch / seconds,
        "ms_per_step": 1000 * seconds / done,
        "steps": float(done),
        "seconds": seconds,
    }
    if cuda:
        result["peak_alloc_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
    return result


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


class ConfigTimer:
    """The probe's timer for one run's configuration: one throw-away network, every combination timed on it."""

    def __init__(self, cfg: Any, device: Any, warmup: int = PROBE_WARMUP, steps: int = PROBE_STEPS) -> None:
        self.cfg = cfg
        self.device = device
        self.warmup = warmup
        self.steps = steps
        self.parts: TrainParts | None = None

    def _parts(self) -> TrainParts:
        if self.parts is None:
            cfg = self.cfg
            self.parts = build_train_parts(
                cfg.model_kwargs,
                self.device,
                loss=cfg.loss,
                gc_weight=cfg.gc_weight,
                focal_gamma=cfg.focal_gamma,
                focal_alpha=cfg.focal_alpha,
                lovasz_weight=cfg.lovasz_weight,
                optimizer=cfg.optimizer,
                lr_backbone=cfg.lr_backbone,
                lr_head=cfg.lr_head,
                weight_decay=cfg.weight_decay,
            )
        return self.parts

    def __call__(self, combo: Combo) -> tuple[float | None, float | None]:
        import torch

        try:
            batch, crop = int(self.cfg.batch_size), int(self.cfg.crop_size)
            figures = time_training(self._parts(), combo, batch, crop, self.device, self.warmup, self.steps)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            logger.warning("GPU settings probe: %s ran out of memory", combo_name(combo))
            torch.cuda.empty_cache()
            return None, None
        return figures["images_per_s"], figures.get("peak_reserved_gib")

    def close(self) -> None:
        """Free the throw-away network before the run builds its own."""
        if self.parts is not None:
            import torch

            self.parts = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
