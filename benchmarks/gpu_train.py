"""GPU settings in one run: AMP x channels-last x cudnn benchmark per backbone, GPU sharing, the ``auto`` probe.

Why: the GPU settings a sweep uses (``amp`` / ``channels_last`` / ``cudnn_benchmark``, ``resources.gpu``) and
its cost estimate come from measurement (``hairseg_core/train/gpu_measurements/``), and a new GPU model needs new
figures. One command measures everything on one CUDA device, in under 7 minutes on an H200:

1. ``settings``: training images/s and peak memory of every AMP x channels-last x cudnn-benchmark combination
   for the shipped spaces' backbones, crops and batches (MobileNetV2 with the 128- and 256-channel head,
   ResNet-101 and Xception-65 at output stride 16, DRN-D-54; 193 / 257 / 512 px; batch 8 / 16 / 32);
2. ``share``: N processes (torch.multiprocessing's forkserver, no Ray: what ``resources.gpu = 1/N`` does to N trials)
   training the same configuration on the one GPU at once, N = 1, 2, 4, 8: aggregate images/s and peak
   memory per process;
3. ``probe``: what ``auto`` picks (``hairseg_core.train.gpu_settings``, through a real settings cache) against the
   best combination of section 1, and how long the probe and a cache hit take.

The step is the Trainer's (``hairseg_core.train.gpu_settings.time_training``: its model, loss, optimizer and
GradScaler on random tensors already on the GPU), so the figure is the GPU's, not the data loader's. Networks
are built without pretrained weights (they change no timing). One JSON line per configuration goes to stdout
and, with ``--out FILE``, to FILE, flushed as it goes: a run stopped by a time limit keeps its lines. Each
section has a time box (a share of ``--budget-s``); what does not fit is reported as skipped.

Only torch, torchvision, timm and numpy are needed (plus OpenCV, which ``hairseg_core.train.losses`` imports): no
pydantic, albumentations, Ray, MLflow or Optuna, so it runs on a bare GPU machine.

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_train.py --all --out $OUT/gpu.jsonl    # on the GPU machine
    python benchmarks/gpu_train.py --dry-run       # CPU, tiny sizes, every section once (a test runs this)

Without CUDA (and without ``--dry-run``) it prints "skipped: no CUDA device" and a JSON line, exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: Shares of ``--budget-s`` per section, in the order they run.
SECTION_SHARES = {"settings": 0.52, "share": 0.26, "probe": 0.22}


@dataclass(frozen=True)
class Config:
    """One training configuration: the network and the step's shape."""

    label: str
    backbone: str
    crop: int
    batch: int
    head: int = 256
    output_stride: int = 16

    def fields(self) -> dict[str, Any]:
        return {
            "config": self.label,
            "backbone": self.backbone,
            "aspp_channels": self.head,
            "decoder_channels": self.head,
            "output_stride": self.output_stride,
            "crop": self.crop,
            "batch": self.batch,
        }

    def model_kwargs(self) -> dict[str, Any]:
        return {
            "backbone": self.backbone,
            "output_stride": self.output_stride,
            "num_classes": 2,
            "pretrained": "none",
            "aspp_channels": self.head,
            "decoder_channels": self.head,
        }

    def train_config(self, **knobs: Any) -> SimpleNamespace:
        """The attributes ``hairseg_core.train.gpu_settings`` reads from a ``TrainConfig`` (no pydantic here)."""
        return SimpleNamespace(
            backbone=self.backbone,
            output_stride=self.output_stride,
            aspp_channels=self.head,
            decoder_channels=self.head,
            crop_size=self.crop,
            batch_size=self.batch,
            model_kwargs=self.model_kwargs(),
            loss="ce",
            gc_weight=0.0,
            focal_gamma=2.0,
            focal_alpha=0.5,
            lovasz_weight=0.0,
            optimizer="adam",
            lr_backbone=1e-4,
            lr_head=1e-3,
            weight_decay=1e-4,
            **knobs,
        )


#: Section 1, most wanted first (a time box cuts from the end): the issue's table, then the spaces' shapes.
SETTINGS_CONFIGS = (
    Config("celeb1k-b8", "mobilenet_v2", 193, 8, head=128),
    Config("celeb1k-b32", "mobilenet_v2", 193, 32, head=128),
    Config("paper-resnet101-b16", "resnet101", 257, 16),
    Config("paper-resnet101-b8", "resnet101", 257, 8),
    Config("paper-drn-b16", "drn_d_54", 257, 16),
    Config("paper-xception-b16", "xception", 257, 16),
    Config("paper-mobilenet-b16", "mobilenet_v2", 257, 16),
    Config("paper-mobilenet-b32", "mobilenet_v2", 257, 32),
    Config("paper-drn-b8", "drn_d_54", 257, 8),
    Config("512-resnet101-b16", "resnet101", 512, 16),
    Config("512-mobilenet-b16", "mobilenet_v2", 512, 16),
    Config("512-xception-b16", "xception", 512, 16),
)

#: Section 2: (configuration, settings, process counts). The first repeats the 2026-12-04 measurement; the
#: second is webcam.yaml's largest trial (batch 32 at 225 px, fp32), which decides gpu: 0.5 against 0.25.
SHARE_RUNS = (
    (Config("celeb1k-b8", "mobilenet_v2", 193, 8, head=128), {"amp": True, "channels_last": False}, (1, 2, 4, 8)),
    (Config("webcam-b32", "mobilenet_v2", 225, 32), {"amp": False, "channels_last": False}, (1, 2, 4)),
    (Config("paper-resnet101-b8", "resnet101", 257, 8), {"amp": False, "channels_last": False}, (1, 2)),
)

#: Section 3: configurations whose ``auto`` pick is checked against section 1's best.
PROBE_CONFIGS = ("paper-resnet101-b8", "paper-drn-b16", "paper-mobilenet-b16", "512-resnet101-b16", "celeb1k-b32")


@dataclass(frozen=True)
class Plan:
    """How long each measurement runs (the full run, or the tiny CPU dry run)."""

    device: str
    warmup: int
    steps: int
    max_seconds: float | None
    share_steps: int
    share_warmup: int
    settings_configs: tuple[Config, ...]
    share_runs: tuple[tuple[Config, dict[str, bool], tuple[int, ...]], ...]
    probe_configs: tuple[str, ...]


def full_plan() -> Plan:
    return Plan("cuda", 5, 40, 1.0, 100, 10, SETTINGS_CONFIGS, SHARE_RUNS, PROBE_CONFIGS)


def dry_plan() -> Plan:
    """Every code path once on the CPU, on an 8-channel-head MobileNetV2 at 49 px: seconds."""
    tiny = Config("dry-mobilenet", "mobilenet_v2", 49, 2, head=8)
    return Plan(
        "cpu", 1, 2, None, 2, 1, (tiny,), ((tiny, {"amp": False, "channels_last": False}, (2,)),), ("dry-mobilenet",)
    )


class Output:
    """JSON lines to stdout and (``--out``) a file, flushed line by line."""

    def __init__(self, path: str | None, common: dict[str, Any]) -> None:
        self.file: TextIO | None = None
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a")  # noqa: SIM115 - closed in close(); one line at a time
        self.common = common

    def line(self, **row: Any) -> dict[str, Any]:
        row = {**row, **{k: v for k, v in self.common.items() if k not in row}}
        text = json.dumps(row, default=_plain)
        print(text, flush=True)
        if self.file is not None:
            self.file.write(text + "\n")
            self.file.flush()
            os.fsync(self.file.fileno())
        return row

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    return str(value)


def _round(figures: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}


class TimeBox:
    """A section's deadline."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def _combos() -> list[dict[str, bool]]:
    from hairseg_core.train.gpu_settings import candidates

    return candidates({"amp": "auto", "channels_last": "auto", "cudnn_benchmark": "auto"})


def _device(plan: Plan) -> Any:
    import torch

    return torch.device(plan.device)


def _free(device: Any) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- section 1: settings


def section_settings(plan: Plan, out: Output, box: TimeBox) -> dict[str, dict[str, float | None]]:
    """Every combination for every configuration; returns images/s by configuration label and combination."""
    from hairseg_core.train.gpu_settings import build_train_parts, combo_name, is_out_of_memory, time_training

    device = _device(plan)
    rates: dict[str, dict[str, float | None]] = {}
    for config in plan.settings_configs:
        if box.left() < 5:
            out.line(part="settings", skipped="section time box", **config.fields())
            continue
        rates[config.label] = {}
        try:
            parts = build_train_parts(config.model_kwargs(), device)
        except Exception as exc:
            out.line(part="settings", error=f"{type(exc).__name__}: {exc}", **config.fields())
            continue
        for combo in _combos():
            name = combo_name(combo)
            if box.left() < 1:
                out.line(part="settings", skipped="section time box", **config.fields(), **combo)
                rates[config.label][name] = None
                continue
            try:
                figures = time_training(
                    parts, combo, config.batch, config.crop, device, plan.warmup, plan.steps, plan.max_seconds
                )
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                _free(device)
                out.line(part="settings", error="out of memory", **config.fields(), **combo)
                rates[config.label][name] = None
                continue
            rates[config.label][name] = figures["images_per_s"]
            out.line(part="settings", **config.fields(), **combo, warmup=plan.warmup, **_round(figures))
        done = {k: v for k, v in rates[config.label].items() if v}
        if done:
            best = max(done, key=done.__getitem__)
            default = done.get("amp")  # today's default: AMP on, channels-last off, cudnn benchmark off
            out.line(
                part="settings_summary",
                **config.fields(),
                best=best,
                best_images_per_s=round(done[best], 1),
                default_images_per_s=None if default is None else round(default, 1),
                default_over_best=None if default is None else round(default / done[best], 3),
            )
        del parts
        _free(device)
    return rates


# --------------------------------------------------------------------------- section 2: GPU sharing


def _share_worker(
    rank: int, config: Config, settings: dict[str, bool], plan: Plan, ready: Any, go: Any, results: Any
) -> None:
    """One "trial" of a shared GPU: build, warm up, wait for the others, time ``plan.share_steps`` steps."""
    try:
        import torch

        from hairseg_core.train.gpu_settings import build_train_parts, time_training

        torch.set_num_threads(1)
        device = _device(plan)
        parts = build_train_parts(config.model_kwargs(), device)
        combo = {"amp": settings["amp"], "channels_last": settings["channels_last"], "cudnn_benchmark": False}
        time_training(parts, combo, config.batch, config.crop, device, plan.share_warmup, 1, None)
        ready.put(rank)
        go.wait()
        start = time.time()
        figures = time_training(parts, combo, config.batch, config.crop, device, 0, plan.share_steps, None)
        figures["start"] = start
        figures["end"] = time.time()
        results.put((rank, figures))
    except BaseException as exc:  # reported, not raised: the parent waits for every worker's answer
        ready.put(rank)
        results.put((rank, {"error": f"{type(exc).__name__}: {exc}"}))


def share_run(config: Config, settings: dict[str, bool], processes: int, plan: Plan, timeout: float) -> dict[str, Any]:
    """``processes`` workers training ``config`` on the one device at once; aggregate images/s over the span
    from the first timed step's start to the last one's end."""
    import torch.multiprocessing as mp

    # forkserver: CUDA-safe like spawn (the server never touches CUDA), but torch and the model code are
    # imported once, in the server, and each worker forks from it in a fraction of a second
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["torch", "torchvision", "hairseg_core.train.gpu_settings", "hairseg_core.train.losses", "hairseg_core.models"]
    )
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    workers = [
        ctx.Process(target=_share_worker, args=(r, config, settings, plan, ready, go, results), daemon=True)
        for r in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        deadline = time.monotonic() + timeout
        for _ in workers:
            ready.get(timeout=max(1.0, deadline - time.monotonic()))
        go.set()
        answers = dict(results.get(timeout=max(1.0, deadline - time.monotonic())) for _ in workers)
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    errors = [a["error"] for a in answers.values() if "error" in a]
    if errors:
        raise RuntimeError(errors[0])
    figures = list(answers.values())
    first = min(f["start"] for f in figures)
    last = max(f["end"] for f in figures)
    images = sum(f["images_per_s"] * f["seconds"] for f in figures)
    peaks = [f.get("peak_reserved_gib") for f in figures]
    return {
        "processes": processes,
        "gpu_share": round(1 / processes, 4),
        "aggregate_images_per_s": images / (last - first),
        "per_process_images_per_s": [round(f["images_per_s"], 1) for f in figures],
        "start_spread_s": max(f["start"] for f in figures) - first,
        "span_s": last - first,
        "steps_per_process": plan.share_steps,
        "peak_reserved_gib_per_process": None if None in peaks else max(peaks),
    }


def section_share(plan: Plan, out: Output, box: TimeBox) -> None:
    for config, settings, counts in plan.share_runs:
        for processes in counts:
            fields = {**config.fields(), **settings, "cudnn_benchmark": False}
            if box.left() < 10:
                out.line(part="share", skipped="section time box", processes=processes, **fields)
                continue
            try:
                row = share_run(config, settings, processes, plan, timeout=box.left())
            except Exception as exc:
                out.line(part="share", error=f"{type(exc).__name__}: {exc}"[:500], processes=processes, **fields)
                continue
            out.line(part="share", **fields, **_round(row))


# --------------------------------------------------------------------------- section 3: the auto probe


def section_probe(plan: Plan, out: Output, box: TimeBox, rates: dict[str, dict[str, float | None]]) -> None:
    """``auto`` as a sweep's first trial resolves it (real probe, real cache), then as a later trial (cache)."""
    from hairseg_core.train.gpu_settings import (
        ConfigTimer,
        ProbeKey,
        SettingsCache,
        combo_name,
        requested_settings,
        resolve_gpu_settings,
        resolve_settings,
    )

    device = _device(plan)
    by_label = {c.label: c for c in plan.settings_configs}
    with tempfile.TemporaryDirectory(prefix="hairseg-gpu-probe-") as folder:
        for label in plan.probe_configs:
            config = by_label[label]
            if box.left() < 25:
                out.line(part="probe", skipped="section time box", **config.fields())
                continue
            cfg = config.train_config(amp="auto", channels_last="auto", cudnn_benchmark="auto")
            cache = SettingsCache(os.path.join(folder, "gpu_settings"))
            try:
                start = time.perf_counter()
                if device.type == "cuda":
                    first = resolve_gpu_settings(cfg, device, cache)
                else:  # the dry run: the GPU code path, timed on the CPU
                    key = ProbeKey.of(cfg, "cpu (dry run)", "dry")
                    timer = ConfigTimer(cfg, device, warmup=plan.warmup, steps=plan.steps)
                    first = resolve_settings(requested_settings(cfg), "cuda", "cpu (dry run)", key, cache, timer)
                    timer.close()
                first_s = time.perf_counter() - start
                start = time.perf_counter()
                if device.type == "cuda":
                    again = resolve_gpu_settings(cfg, device, cache)
                else:
                    again = resolve_settings(requested_settings(cfg), "cuda", "cpu (dry run)", key, cache, None)
                again_s = time.perf_counter() - start
            except Exception as exc:
                out.line(part="probe", error=f"{type(exc).__name__}: {exc}"[:500], **config.fields())
                _free(device)
                continue
            measured = {k: v for k, v in rates.get(label, {}).items() if v}
            pick = combo_name(first.combo())
            best = max(measured, key=measured.__getitem__) if measured else None
            out.line(
                part="probe",
                **config.fields(),
                pick=pick,
                pick_source=first.source,
                probe_seconds=round(first.probe_seconds or first_s, 2),
                resolve_seconds=round(first_s, 2),
                probe_images_per_s={k: None if v is None else round(v, 1) for k, v in first.images_per_s.items()},
                cache_hit_source=again.source,
                cache_hit_seconds=round(again_s, 4),
                best=best,
                best_images_per_s=None if best is None else round(measured[best], 1),
                pick_images_per_s=None if pick not in measured else round(measured[pick], 1),
                pick_over_best=None
                if best is None or pick not in measured
                else round(measured[pick] / measured[best], 3),
            )
            _free(device)


# --------------------------------------------------------------------------- main


def environment(plan: Plan) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.node(),
    }
    if plan.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 2))
        info["cudnn"] = torch.backends.cudnn.version()
    else:
        info["gpu"] = "cpu (dry run)"
    return info


def run(plan: Plan, sections: list[str], budget_s: float, out_path: str | None) -> int:
    started = time.monotonic()
    info = environment(plan)
    out = Output(out_path, {"gpu": info["gpu"]})
    out.line(part="meta", sections=sections, budget_s=budget_s, **info)
    rates: dict[str, dict[str, float | None]] = {}
    try:
        for section in sections:
            box = TimeBox(budget_s * SECTION_SHARES[section])
            t0 = time.monotonic()
            try:
                if section == "settings":
                    rates = section_settings(plan, out, box)
                elif section == "share":
                    section_share(plan, out, box)
                elif section == "probe":
                    section_probe(plan, out, box, rates)
            except Exception as exc:  # one section's failure leaves the others' lines
                out.line(part=section, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc()[-2000:])
            out.line(part="section_end", section=section, seconds=round(time.monotonic() - t0, 1), box_s=box.seconds)
        out.line(part="summary", seconds=round(time.monotonic() - started, 1))
    finally:
        out.close()
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="every section (settings, share, probe)")
    parser.add_argument("--section", nargs="+", choices=list(SECTION_SHARES), help="only these sections")
    parser.add_argument("--out", help="also write the JSON lines to this file (appended, flushed line by line)")
    parser.add_argument(
        "--budget-s", type=float, default=320.0, help="time for all sections together (default 320: fits 7 min)"
    )
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, 1-2 steps: checks the code paths")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections = list(args.section or SECTION_SHARES)
    import torch

    if args.dry_run:
        torch.set_num_threads(1)  # a shared CPU: more threads only contend (and each share worker has one)
        return run(dry_plan(), sections, args.budget_s, args.out)

    if not torch.cuda.is_available():
        print("skipped: no CUDA device")
        print(json.dumps({"skipped": True, "reason": "no CUDA device"}))
        return 0
    return run(full_plan(), sections, args.budget_s, args.out)


if __name__ == "__main__":
    sys.exit(main())
