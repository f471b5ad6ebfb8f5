"""The GPU measurements the platform plans with: training images/s and peak memory per configuration.

Why a table and not a formula: on one H200 no fixed rule fits AMP, channels-last or cudnn benchmark
(benchmarks/README.md, "GPU settings"): AMP slows ResNet-101 at 257 px / batch 8 and speeds it up at
512 px / batch 16. The sweep's cost estimate and the GPU memory guard therefore read what was measured,
and scale from the nearest measured configuration only where nothing was measured.

The figures are the JSON lines ``benchmarks/gpu_train.py`` writes, kept as they came from the GPU in
``hairseg_core/train/gpu_measurements/*.jsonl`` (refresh: run the benchmark on a GPU and add its file there).
Two line formats are read: the 2026-12-04 H200 file (``model``: ``celeb1k`` = MobileNetV2 with a 128-channel
head at 193 px, else the backbone with the 256-channel head, output stride 16) and the benchmark's current
one (explicit ``backbone``, ``aspp_channels``, ``decoder_channels``, ``output_stride``).

Only the standard library: ``benchmarks/gpu_train.py`` runs on GPU machines without pydantic or Ray.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

MEASUREMENTS_DIR = Path(__file__).resolve().parent / "gpu_measurements"

#: Backbones never measured, planned with a measured one of the same family that costs at least as much
#: per image (a conservative stand-in: the estimate and the memory guard err towards "more").
PROXY_BACKBONES = {"mobilenet_v3_large": "mobilenet_v2", "resnet50": "resnet101"}

#: GPU memory (GiB, what torch reports as total) by Ray's accelerator type (the ``accelerator_type:<X>``
#: resource Ray gives GPU nodes). Where a name covers several sizes, the smaller (A100: 40 GB, V100: 16 GB).
GPU_MEMORY_GIB = {
    "H200": 139.8,
    "H100": 79.1,
    "H20": 94.5,
    "B200": 178.4,
    "A100-80G": 79.1,
    "A100-40G": 39.4,
    "A100": 39.4,
    "L40S": 44.4,
    "L4": 22.0,
    "A10G": 22.0,
    "T4": 14.6,
    "V100": 15.8,
    "P100": 15.9,
}

#: ``part`` values of benchmark lines that are not one configuration's measurement.
NOT_MEASUREMENTS = {"meta", "settings_summary", "probe", "section_end", "summary"}

#: Memory a CUDA process holds outside torch's allocator (context, cuBLAS/cuDNN handles); torch's
#: ``max_memory_reserved`` does not count it. About 0.5 GiB with torch 2.x on Hopper.
CUDA_CONTEXT_GIB = 0.6


@dataclass(frozen=True)
class Measurement:
    """One measured training configuration on one GPU."""

    gpu: str
    backbone: str
    head: int  # ASPP channels (= decoder channels in every measured configuration)
    output_stride: int
    crop: int
    batch: int
    amp: bool
    channels_last: bool
    cudnn_benchmark: bool
    images_per_s: float
    peak_reserved_gib: float | None
    source: str

    @property
    def pixels(self) -> int:
        """Pixels per step: what activation memory and step time grow with."""
        return self.crop * self.crop * self.batch


@dataclass(frozen=True)
class ShareMeasurement:
    """N processes training the same configuration on one GPU: what ``resources.gpu = 1/N`` does."""

    gpu: str
    backbone: str
    head: int
    crop: int
    batch: int
    processes: int
    aggregate_images_per_s: float
    peak_reserved_gib_per_process: float | None
    source: str


@dataclass(frozen=True)
class Estimate:
    """A figure read from the table: measured, or scaled from the nearest measured configuration."""

    value: float
    basis: str  # what it was read or scaled from, for messages and the MLflow tags
    measured: bool


def _gpu_of(path: Path, row: Mapping[str, Any]) -> str:
    if row.get("gpu"):
        return str(row["gpu"])
    return "NVIDIA H200" if "h200" in path.name.lower() else "unknown GPU"


def _arch(row: Mapping[str, Any]) -> tuple[str, int, int]:
    """(backbone, head channels, output stride) of a line in either format."""
    if "backbone" in row:
        return str(row["backbone"]), int(row.get("aspp_channels", 256)), int(row.get("output_stride", 16))
    model = str(row["model"])
    if model == "celeb1k":  # configs/celeb1k_mobilenet_v2.yaml: 128-channel ASPP and decoder
        return "mobilenet_v2", 128, 16
    return model, 256, 16


def parse_lines(lines: Iterable[str], path: Path) -> tuple[list[Measurement], list[ShareMeasurement]]:
    """Measurements and GPU-share rows of one JSON-lines file; other lines (errors, summaries) are skipped."""
    single: list[Measurement] = []
    shared: list[ShareMeasurement] = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        row = json.loads(line)
        if row.get("error") or row.get("skipped") or row.get("part") in NOT_MEASUREMENTS:
            continue
        if "model" not in row and "backbone" not in row:
            continue
        backbone, head, stride = _arch(row)
        gpu = _gpu_of(path, row)
        if row.get("part") == "share" or "processes" in row:
            if "aggregate_images_per_s" not in row:
                continue
            shared.append(
                ShareMeasurement(
                    gpu=gpu,
                    backbone=backbone,
                    head=head,
                    crop=int(row["crop"]),
                    batch=int(row["batch"]),
                    processes=int(row["processes"]),
                    aggregate_images_per_s=float(row["aggregate_images_per_s"]),
                    peak_reserved_gib_per_process=row.get("peak_reserved_gib_per_process"),
                    source=path.name,
                )
            )
        elif "images_per_s" in row and "amp" in row:
            single.append(
                Measurement(
                    gpu=gpu,
                    backbone=backbone,
                    head=head,
                    output_stride=stride,
                    crop=int(row["crop"]),
                    batch=int(row["batch"]),
                    amp=bool(row["amp"]),
                    channels_last=bool(row["channels_last"]),
                    cudnn_benchmark=bool(row.get("cudnn_benchmark", False)),
                    images_per_s=float(row["images_per_s"]),
                    peak_reserved_gib=row.get("peak_reserved_gib"),
                    source=path.name,
                )
            )
    return single, shared


@dataclass(frozen=True)
class GpuTable:
    """Every measurement of every file, and the lookups the planners need."""

    single: tuple[Measurement, ...]
    shared: tuple[ShareMeasurement, ...]

    @classmethod
    def load(cls, folder: Path = MEASUREMENTS_DIR) -> GpuTable:
        single: list[Measurement] = []
        shared: list[ShareMeasurement] = []
        for path in sorted(folder.glob("*.jsonl")):
            s, sh = parse_lines(path.read_text().splitlines(), path)
            single += s
            shared += sh
        return cls(tuple(single), tuple(shared))

    @property
    def sources(self) -> list[str]:
        return sorted({m.source for m in self.single} | {m.source for m in self.shared})

    def _rows(self, backbone: str, output_stride: int | None) -> tuple[str, list[Measurement]]:
        """Rows of ``backbone`` (or of its proxy) at ``output_stride`` (None: any); the name actually used."""
        for name in (backbone, PROXY_BACKBONES.get(backbone)):
            rows = [m for m in self.single if m.backbone == name]
            rows = [m for m in rows if output_stride is None or m.output_stride == output_stride]
            if name and rows:
                return name, rows
        return backbone, []

    @staticmethod
    def _nearest(rows: list[Measurement], crop: int, batch: int, head: int, same_batch: bool) -> list[Measurement]:
        """The measured configuration nearest to (crop, batch, head), all its setting rows.

        ``same_batch`` (rates): the fewest of crop / batch differing first, so a rate is scaled over the
        crop only. Otherwise (memory): the closest pixels per step, preferring a smaller measured
        configuration: scaling up from it counts the fixed part (weights, optimizer state) as if it grew
        too, which errs towards more memory, the safe side for a guard.
        """

        def distance(m: Measurement) -> float:
            ratio = (crop * crop * batch) / m.pixels
            return ratio - 1 if ratio >= 1 else 2 * (1 / ratio - 1)

        def rank(m: Measurement) -> tuple[float, ...]:
            mismatches = (m.crop != crop) + (m.batch != batch)
            if same_batch:
                return (mismatches, m.head != head, distance(m), m.batch)
            return (m.head != head, distance(m), mismatches, m.batch)

        best = min(rows, key=rank)
        key = (best.crop, best.batch, best.head)
        return [m for m in rows if (m.crop, m.batch, m.head) == key]

    def train_rate(
        self,
        backbone: str,
        crop: int,
        batch: int,
        head: int = 256,
        settings: Mapping[str, bool] | None = None,
        output_stride: int = 16,
    ) -> Estimate | None:
        """Training images/s of one trial alone on the GPU: measured, or scaled by pixels per image.

        ``settings`` fixes some of amp / channels_last / cudnn_benchmark; the others take their fastest
        measured value (what ``auto`` picks). An output stride never measured takes the other stride's rate,
        said in the basis (output stride 8 is slower than 16). None when neither the backbone nor a proxy was
        measured.
        """
        used, rows = self._rows(backbone, output_stride)
        stride_note = ""
        if not rows:
            used, rows = self._rows(backbone, None)
            stride_note = f"; output stride {output_stride} never measured, rate of stride {{}}"
        if not rows:
            return None
        near = self._nearest(rows, crop, batch, head, same_batch=True)
        wanted = {k: v for k, v in (settings or {}).items() if isinstance(v, bool)}
        fitting = [m for m in near if all(getattr(m, k) == v for k, v in wanted.items())] or near
        best = max(fitting, key=lambda m: m.images_per_s)
        exact = used == backbone and (best.crop, best.batch, best.head) == (crop, batch, head)
        value = best.images_per_s * (best.crop * best.crop) / (crop * crop)
        basis = _describe(best, used != backbone, exact) + stride_note.format(best.output_stride)
        return Estimate(value, basis, exact and not stride_note)

    def peak_gib(
        self,
        backbone: str,
        crop: int,
        batch: int,
        head: int = 256,
        amp: bool | None = None,
        output_stride: int = 16,
    ) -> Estimate | None:
        """Peak GPU memory torch reserves for one trial: measured, or scaled by crop² × batch.

        ``amp`` None or False: the fp32 peak (the larger; ``auto`` may pick fp32); True: the AMP peak. None
        when the backbone (or a proxy) was never measured at this output stride: its feature maps, hence its
        memory, differ by stride, so no other stride stands in.
        """
        used, rows = self._rows(backbone, output_stride)
        rows = [m for m in rows if m.peak_reserved_gib is not None]
        if not rows:
            return None
        near = self._nearest(rows, crop, batch, head, same_batch=False)
        fitting = [m for m in near if m.amp == bool(amp)] or near
        best = max(fitting, key=lambda m: m.peak_reserved_gib or 0.0)
        exact = used == backbone and (best.crop, best.batch, best.head) == (crop, batch, head)
        value = float(best.peak_reserved_gib or 0.0) * (crop * crop * batch) / best.pixels
        return Estimate(value, _describe(best, used != backbone, exact), exact)

    def share_speedup(self, backbone: str, crop: int, batch: int, trials_per_gpu: int) -> Estimate:
        """Aggregate images/s of ``trials_per_gpu`` trials on one GPU over one trial alone.

        Measured for the configuration itself, or for one within 2x its pixels per step on the same backbone;
        anything else is assumed to gain nothing from sharing (1.0): a large model already fills the GPU.
        """
        if trials_per_gpu <= 1:
            return Estimate(1.0, "one trial per GPU", True)
        rows = [s for s in self.shared if s.backbone == backbone]
        rows = [s for s in rows if 0.5 <= (crop * crop * batch) / (s.crop * s.crop * s.batch) <= 2.0]
        alone = {(s.crop, s.batch): s for s in rows if s.processes == 1}
        candidates = [s for s in rows if (s.crop, s.batch) in alone and s.processes <= trials_per_gpu]
        if not candidates:
            return Estimate(1.0, "sharing not measured for this configuration: assumed no gain", False)
        best = max(candidates, key=lambda s: (s.processes, -abs(s.crop - crop)))
        speedup = best.aggregate_images_per_s / alone[(best.crop, best.batch)].aggregate_images_per_s
        basis = f"{best.processes} processes of {best.backbone} {best.crop} px b{best.batch} ({best.source})"
        return Estimate(speedup, basis, best.processes == trials_per_gpu)


def _describe(m: Measurement, proxy: bool, exact: bool) -> str:
    what = f"{m.backbone} head {m.head}, {m.crop} px, batch {m.batch}"
    how = "measured" if exact else ("proxy, scaled from" if proxy else "scaled from")
    return f"{how} {what} on {m.gpu} ({m.source})"


@lru_cache(maxsize=1)
def default_table() -> GpuTable:
    """The shipped measurements (read once per process)."""
    return GpuTable.load()


def gpu_memory_gib(accelerator_type: str | None) -> float | None:
    """Total memory of a GPU named by Ray's accelerator type (``A10G``) or torch's name (``NVIDIA H200``)."""
    if not accelerator_type:
        return None
    name = accelerator_type.upper().replace("NVIDIA", "").strip()
    if name in GPU_MEMORY_GIB:
        return GPU_MEMORY_GIB[name]
    if "A100" in name:  # torch's "NVIDIA A100-SXM4-80GB"; plain "A100" is the smaller one
        return GPU_MEMORY_GIB["A100-80G" if "80G" in name else "A100"]
    for key in sorted(GPU_MEMORY_GIB, key=len, reverse=True):  # "Tesla T4", "H100 80GB HBM3"
        if key in name.replace(" ", "-").split("-") or name.startswith(key):
            return GPU_MEMORY_GIB[key]
    return None
