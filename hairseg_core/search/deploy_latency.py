"""Latency for the Pareto pick, measured by the driver after every trial ended: nothing else trains then.

Each trial measures its network's latency before it trains (``search.trial``), which is what the
searcher learns from during the sweep; but with two trials per node, that figure is taken while the other
trial trains, and two identical networks read 232 and 243 ms in one sweep (benchmarks/README.md,
"Accuracy x latency"). The pick must not depend on that. So once Tune returns, the driver times every
distinct architecture of the finished trials again, the way the webcam app will run the export: the
network exported to ONNX at the export size (and quantised to int8 when ``finalize.quantize`` says so),
``HairPredictor`` on 640x480 frames (letterbox, network, probability back to the frame) with one ONNX
Runtime thread, all architectures interleaved round by round so that any background load hits each alike.

Latency depends on the architecture and the input size, not on the weight values, so a network of the
trial's architecture with fresh weights is timed (int8 calibration on synthetic portraits: this is a
timing, not an accuracy figure; the export's own int8 graph is calibrated on training images and its
accuracy measured by the final stage). The trial's own in-sweep figure stays beside it as
``latency_trial_ms``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hairseg_core.config import FinalizeSettings, TrainConfig
from hairseg_core.scaling import deploy_input_size, inference_scale

#: Webcam-sized synthetic portraits each architecture is timed on (cycled), and int8 calibration images.
FRAMES = 6
FRAME_HW = (480, 640)


@dataclass(frozen=True)
class DeployLatency:
    """Median / p90 ms per frame of one architecture as the app would run its export, on this machine."""

    latency_ms: float
    latency_p90_ms: float
    input_size: int
    form: str  # "onnx fp32" or "onnx int8"


def architecture_key(cfg: TrainConfig, settings: FinalizeSettings) -> tuple[Any, ...]:
    """What the export's per-frame cost depends on: the network's arguments (not its weights), the letterbox
    size and the quantisation."""
    kwargs = {k: v for k, v in cfg.model_kwargs.items() if k not in {"pretrained", "weights_dir"}}
    size = deploy_input_size(settings.export_size, inference_scale(cfg))
    return (tuple(sorted((k, repr(v)) for k, v in kwargs.items())), size, settings.quantize)


def _predictor(cfg: TrainConfig, settings: FinalizeSettings, frames: Sequence[Any], work: Path) -> Any:
    """The app's predictor for an export of ``cfg``'s architecture (fresh weights) in ``work``."""
    from hairseg_core.artifact import ModelMetadata
    from hairseg_core.deploy.inference import HairPredictor, OnnxRunner
    from hairseg_core.deploy.quantize import calibration_batches, quantize_static_int8
    from hairseg_core.final.export import export_onnx
    from hairseg_core.models import build_model

    size = int(deploy_input_size(settings.export_size, inference_scale(cfg)))  # type: ignore[arg-type]
    model = build_model(**{**cfg.model_kwargs, "pretrained": "none"})
    path = export_onnx(model, work / "model.onnx", example_size=size).path
    if settings.quantize == "int8":
        path = quantize_static_int8(path, work / "model.int8.onnx", calibration_batches(frames, size))
    return HairPredictor(OnnxRunner(path, intra_op_threads=1), ModelMetadata(input_size=size))


def measure_deploy_latency(configs: Mapping[str, TrainConfig], settings: FinalizeSettings) -> dict[str, DeployLatency]:
    """Per trial id: its architecture's per-frame latency, measured once per distinct architecture,
    interleaved (``deploy.latency.interleaved_times``, ``settings.latency_repeats`` rounds)."""
    from hairseg_core.artifact import synthetic_portrait
    from hairseg_core.deploy.latency import interleaved_times, latency_stats

    groups: dict[tuple[Any, ...], list[str]] = {}
    for trial_id, cfg in configs.items():
        groups.setdefault(architecture_key(cfg, settings), []).append(trial_id)
    if not groups:
        return {}
    frames = [synthetic_portrait(*FRAME_HW, seed=s) for s in range(FRAMES)]
    form = "onnx int8" if settings.quantize == "int8" else "onnx fp32"
    with tempfile.TemporaryDirectory(prefix="hairseg-latency-") as tmp:
        predictors = {}
        for index, (key, trial_ids) in enumerate(groups.items()):
            work = Path(tmp) / str(index)
            work.mkdir()
            predictors[key] = _predictor(configs[trial_ids[0]], settings, frames, work)
        calls = {key: (lambda i, p=p: p(frames[i % len(frames)])) for key, p in predictors.items()}
        times = interleaved_times(calls, rounds=settings.latency_repeats)
    measured = {}
    for key, trial_ids in groups.items():
        stats = latency_stats(times[key])
        latency = DeployLatency(round(stats.median_ms, 4), round(stats.p90_ms, 4), int(key[1]), form)
        measured.update(dict.fromkeys(trial_ids, latency))
    return measured
