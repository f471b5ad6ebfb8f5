"""Before Ray Tune starts: can a trial ever be placed, and do the trials sharing a GPU fit in its memory?

Why: Ray Tune does not fail a trial whose resources no node has; it logs that they are unavailable and waits
for ever. A space that asks for GPUs on a laptop, a CPU-only cluster or a GPU node whose driver torch cannot
use would hang the sweep instead of failing, and a GPU share too small for its trials' memory fails trials
hours in with CUDA out-of-memory. Both are decided here in seconds, from what the space asks and what the
cluster has, with one line that says what to change.

Nothing here calls Ray: the entry point (``pipelines/sweep.py``) reads the live nodes from Ray after
``ray.init`` and passes them in a :class:`ClusterView`, together with the node types an autoscaler could add
(read from the cluster's YAML by :func:`node_types_from_file`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hairseg_core.config import SearchSpace, TrainConfig
from hairseg_core.train.gpu_table import CUDA_CONTEXT_GIB, GpuTable, default_table, gpu_memory_gib

#: What a GPU share may fill of the GPU's memory: the rest absorbs fragmentation and the peak's noise.
MEMORY_HEADROOM = 0.95

CPU_HINT = "--set resources.gpu=0 device=cpu"


class PlacementError(Exception):
    """The sweep could never run as asked; the message is the one line the user reads."""


class ClusterConfigUnreadable(ValueError):
    """A cluster YAML given for its node types cannot be read as one."""


@dataclass(frozen=True)
class NodeShape:
    """Resources of one live node, or of one node type an autoscaler can start ``count`` of."""

    name: str
    resources: Mapping[str, float]
    count: int = 1

    @property
    def gpus(self) -> float:
        return float(self.resources.get("GPU", 0) or 0)

    @property
    def cpus(self) -> float:
        return float(self.resources.get("CPU", 0) or 0)

    @property
    def accelerator(self) -> str | None:
        """Ray's ``accelerator_type:<X>`` resource (set on GPU nodes), e.g. ``A10G``."""
        for key in self.resources:
            if key.startswith("accelerator_type:"):
                return key.split(":", 1)[1]
        return None


@dataclass(frozen=True)
class ClusterView:
    """What the sweep's Ray cluster has and could have, as the entry point read it.

    ``nodes``: live nodes (``ray.nodes()``). ``node_types`` / ``node_types_source``: what an autoscaler could
    add and where that was read; empty when nothing says the cluster scales. ``torch_gpus`` /
    ``torch_gpu_name`` / ``torch_gpu_memory_gib`` / ``torch_problem``: what torch can use on the driver's
    node (for a local cluster, the node the trials run on).
    """

    address: str
    nodes: tuple[NodeShape, ...]
    node_types: tuple[NodeShape, ...] = ()
    node_types_source: str | None = None
    torch_gpus: int = 0
    torch_gpu_name: str | None = None
    torch_gpu_memory_gib: float | None = None
    torch_problem: str | None = None

    @property
    def local(self) -> bool:
        return self.address == "local"

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for node in self.nodes:
            for key, value in node.resources.items():
                if isinstance(value, (int, float)):
                    out[key] = out.get(key, 0.0) + float(value)
        return out

    def max_gpus(self) -> float:
        """GPUs the cluster can reach: the live ones, or every autoscaler node type at its maximum (which
        includes the live workers of those types), whichever is more."""
        return max(sum(n.gpus for n in self.nodes), sum(t.gpus * t.count for t in self.node_types))

    def describe(self) -> str:
        totals = self.totals()
        where = "this machine (local Ray)" if self.local else f"the Ray cluster at {self.address}"
        text = f"{where} has {_num(totals.get('CPU', 0))} CPU, {_num(totals.get('GPU', 0))} GPU"
        if self.node_types_source:
            gpu_types = [t for t in self.node_types if t.gpus > 0]
            text += f"; its autoscaler ({self.node_types_source}) can add " + (
                ", ".join(f"{t.name} ({_num(t.gpus)} GPU, up to {t.count})" for t in gpu_types) or "no GPU node"
            )
        return text


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# --------------------------------------------------------------------------- what the space asks


def setting_values(space: SearchSpace, name: str) -> list[Any]:
    """Every value ``name`` can take in a trial: its choices, the top of its range, or the fixed value."""
    spec = space.params.get(name)
    if spec is None:
        return [space.fixed.get(name, TrainConfig.model_fields[name].default)]
    if spec.type == "categorical":
        return spec.values()
    return [int(spec.high) if spec.type == "int" else spec.high]  # type: ignore[arg-type]


@dataclass(frozen=True)
class TrialShape:
    """What a trial's GPU memory and speed depend on."""

    backbone: str
    head: int
    crop: int
    batch: int
    output_stride: int = 16

    def describe(self) -> str:
        return (
            f"{self.backbone} OS{self.output_stride} (head {self.head}) trial at batch {self.batch}, crop {self.crop}"
        )


def trial_shapes(space: SearchSpace) -> list[TrialShape]:
    """Every (backbone, head, crop, batch, stride) a trial of the space can get (batch may depend on the backbone)."""
    batch_spec = space.params.get("batch_size")
    shapes = []
    for backbone in setting_values(space, "backbone"):
        if batch_spec is not None and batch_spec.by == "backbone" and isinstance(batch_spec.choices, dict):
            batches = list(batch_spec.choices.get(str(backbone), batch_spec.choices.get(backbone, [])))
        else:
            batches = setting_values(space, "batch_size")
        for head in setting_values(space, "aspp_channels"):
            for crop in setting_values(space, "crop_size"):
                for stride in setting_values(space, "output_stride"):
                    for batch in batches:
                        shapes.append(TrialShape(str(backbone), int(head), int(crop), int(batch), int(stride)))
    return sorted(set(shapes), key=lambda s: (s.backbone, s.head, s.crop, s.batch, s.output_stride))


def trial_device(space: SearchSpace) -> str:
    values = setting_values(space, "device")
    return "cuda" if "cuda" in values else ("cpu" if values == ["cpu"] else "auto")


def fixed_amp(space: SearchSpace) -> bool | None:
    """True when every trial trains with AMP (its lower memory peak applies); None when ``auto`` or searched."""
    values = setting_values(space, "amp")
    return True if values == [True] else None


# --------------------------------------------------------------------------- placement


def _fits(node: NodeShape, gpu: float, cpu: float) -> bool:
    return node.gpus + 1e-9 >= gpu and node.cpus + 1e-9 >= cpu


def check_placement(space: SearchSpace, cluster: ClusterView, space_file: str) -> list[str]:
    """Raise :class:`PlacementError` when no trial could ever start or use its GPU; return warnings."""
    gpu, cpu = space.resources.gpu, space.resources.cpu
    device = trial_device(space)
    warnings: list[str] = []
    if device == "cuda" and gpu == 0:
        raise PlacementError(
            f"error: {space_file}: device: cuda but resources.gpu is 0, so Ray gives the trials no GPU; "
            f"set resources.gpu (e.g. 1 or 0.25), or run on CPU with {CPU_HINT}"
        )
    if gpu == 0:
        return warnings
    if device == "cpu":
        warnings.append(
            f"warning: {space_file}: resources.gpu={_num(gpu)} but device: cpu: each trial holds a GPU share "
            "it does not use"
        )
    shapes = list(cluster.nodes) + list(cluster.node_types)
    if not any(_fits(node, gpu, cpu) for node in shapes):
        if not any(node.gpus > 0 for node in shapes):
            what = f"asks each trial for {_num(gpu)} GPU"
            why = f"but {cluster.describe()}"
            if not cluster.local:
                why += " and no autoscaler node type that could add one"
                if not cluster.node_types_source:
                    why += " is known (for an autoscaling cluster pass its YAML with --cluster-config)"
        else:
            most = max(shapes, key=lambda n: (n.gpus, n.cpus))
            what = f"asks each trial for {_num(gpu)} GPU and {_num(cpu)} CPU"
            why = (
                f"but no node offers both ({cluster.describe()}; the largest GPU node, {most.name}, has "
                f"{_num(most.gpus)} GPU and {_num(most.cpus)} CPU)"
            )
        raise PlacementError(
            f"error: {space_file}: resources.gpu={_num(gpu)} {what} {why}; no trial could ever start. "
            f"To run on CPU: {CPU_HINT}"
        )
    if cluster.local and device != "cpu" and cluster.torch_gpus == 0:
        raise PlacementError(
            f"error: {space_file}: resources.gpu={_num(gpu)}: Ray sees {_num(cluster.totals().get('GPU', 0))} GPU "
            f"on this machine but torch cannot use any ({cluster.torch_problem or 'CUDA unavailable'}); "
            f"trials would hold the GPU and train on the CPU. Fix the driver / torch build, or run on CPU: {CPU_HINT}"
        )
    return warnings


# --------------------------------------------------------------------------- GPU memory guard


def cluster_gpu_memory(space: SearchSpace, cluster: ClusterView) -> tuple[float, str] | None:
    """Memory of the GPUs the trials get (the smallest, when they differ) and where the figure comes from."""
    declared = space.resources.gpu_memory_gib
    if declared:
        return float(declared), "resources.gpu_memory_gib"
    if cluster.local and cluster.torch_gpu_memory_gib:
        return cluster.torch_gpu_memory_gib, f"torch on this machine ({cluster.torch_gpu_name})"
    found = []
    for node in list(cluster.nodes) + list(cluster.node_types):
        memory = gpu_memory_gib(node.accelerator) if node.gpus > 0 else None
        if memory:
            found.append((memory, f"Ray accelerator type {node.accelerator}"))
    return min(found) if found else None


@dataclass
class MemoryCheck:
    """The guard's verdict: notes to print; ``error`` (one line) when a share cannot fit."""

    notes: list[str] = field(default_factory=list)
    error: str | None = None


def check_gpu_memory(
    space: SearchSpace, cluster: ClusterView, space_file: str, table: GpuTable | None = None
) -> MemoryCheck:
    """Peak memory per trial x trials per GPU against the GPU's memory, for every trial shape of the space."""
    result = MemoryCheck()
    share = space.resources.gpu
    if share == 0 or trial_device(space) == "cpu":
        return result
    per_gpu = max(1, math.floor(1 / share + 1e-9)) if share < 1 else 1
    memory = cluster_gpu_memory(space, cluster)
    if memory is None:
        result.notes.append(
            "note: GPU memory not checked: the cluster's GPU memory is unknown; declare it with "
            "--set resources.gpu_memory_gib=N"
        )
        return result
    capacity, source = memory
    table = table or default_table()
    amp = fixed_amp(space)
    unknown = []
    for shape in trial_shapes(space):
        peak = table.peak_gib(shape.backbone, shape.crop, shape.batch, shape.head, amp, shape.output_stride)
        if peak is None:
            unknown.append(f"{shape.backbone} OS{shape.output_stride}")
            continue
        need = per_gpu * (peak.value + CUDA_CONTEXT_GIB)
        if need > capacity * MEMORY_HEADROOM:
            fit = math.floor(capacity * MEMORY_HEADROOM / (peak.value + CUDA_CONTEXT_GIB))
            fix = (
                f"use resources.gpu: {_num(round(1 / fit, 4))} ({fit} per GPU)"
                if fit >= 1
                else "a smaller batch_size (it does not fit even alone)"
            )
            result.error = (
                f"error: {space_file}: GPU memory: resources.gpu={_num(share)} puts {per_gpu} trial(s) on one "
                f"{capacity:.0f} GiB GPU ({source}), but a {shape.describe()} peaks at ~{peak.value:.1f} GiB "
                f"({peak.basis}) + {CUDA_CONTEXT_GIB} GiB CUDA context: {per_gpu} x "
                f"{peak.value + CUDA_CONTEXT_GIB:.1f} = {need:.1f} GiB > {MEMORY_HEADROOM:.0%} of {capacity:.0f} "
                f"GiB; {fix}, or lower batch_size for {shape.backbone}"
            )
            return result
    if unknown:
        result.notes.append(f"note: GPU memory of {', '.join(sorted(set(unknown)))} never measured: not checked")
    return result


# --------------------------------------------------------------------------- node types from cluster YAML


def _quantity(value: Any) -> float:
    """A Kubernetes quantity or a number: ``"4"``, ``"4000m"``, 4."""
    text = str(value).strip()
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    return float(text)


def _kuberay_group(group: Mapping[str, Any], name: str, count: int) -> NodeShape:
    params = group.get("rayStartParams") or {}
    containers = (((group.get("template") or {}).get("spec") or {}).get("containers")) or [{}]
    limits = ((containers[0].get("resources") or {}).get("limits")) or {}
    cpus = params.get("num-cpus", limits.get("cpu", 0))
    gpus = params.get("num-gpus", limits.get("nvidia.com/gpu", 0))
    resources = {"CPU": _quantity(cpus or 0), "GPU": _quantity(gpus or 0)}
    return NodeShape(name, resources, count)


def node_types_from_config(config: Mapping[str, Any]) -> list[NodeShape]:
    """Node types of a `ray up` autoscaler config or a KubeRay RayJob / RayCluster document.

    Autoscaler configs: every ``available_node_types`` entry with its declared ``resources`` and
    ``max_workers`` (the head counts once). KubeRay: the head group and each worker group at ``maxReplicas``,
    CPUs and GPUs from ``rayStartParams`` or the Ray container's limits.
    """
    if "available_node_types" in config:
        head = config.get("head_node_type")
        default_max = int(config.get("max_workers", 0) or 0)
        shapes = []
        for name, node in (config.get("available_node_types") or {}).items():
            if not isinstance(node, Mapping):
                continue
            count = 1 if name == head else int(node.get("max_workers", default_max) or 0)
            resources = {k: float(v) for k, v in (node.get("resources") or {}).items() if isinstance(v, (int, float))}
            shapes.append(NodeShape(str(name), resources, count))
        return shapes
    spec = config.get("spec") or {}
    cluster = spec.get("rayClusterSpec") or spec  # RayJob or RayCluster
    shapes = []
    if isinstance(cluster.get("headGroupSpec"), Mapping):
        shapes.append(_kuberay_group(cluster["headGroupSpec"], "head", 1))
    for group in cluster.get("workerGroupSpecs") or []:
        if isinstance(group, Mapping):
            count = int(group.get("maxReplicas", group.get("replicas", 0)) or 0)
            shapes.append(_kuberay_group(group, str(group.get("groupName", "workers")), count))
    return shapes


def node_types_from_file(path: str | Path) -> list[NodeShape]:
    """:func:`node_types_from_config` of a YAML file (the first document that describes a cluster)."""
    try:
        docs = list(yaml.safe_load_all(Path(path).expanduser().read_text()))
        for doc in docs:
            if isinstance(doc, Mapping) and (
                "available_node_types" in doc or doc.get("kind") in {"RayJob", "RayCluster"}
            ):
                return node_types_from_config(doc)
    except (OSError, yaml.YAMLError, TypeError, ValueError, AttributeError) as exc:
        raise ClusterConfigUnreadable(f"{path}: {exc}") from None
    raise ClusterConfigUnreadable(
        f"{path}: neither a `ray up` config (available_node_types) nor a KubeRay RayJob / RayCluster"
    )


def node_types_from_max_resources(resources: Mapping[str, float] | None) -> list[NodeShape]:
    """Ray's own view of an autoscaling cluster's ceiling (all node types together) as one pseudo node."""
    if not resources:
        return []
    clean = {k: float(v) for k, v in resources.items() if isinstance(v, (int, float))}
    return [NodeShape("autoscaler maximum", clean, 1)] if clean else []


def live_nodes(nodes: Sequence[Mapping[str, Any]]) -> tuple[NodeShape, ...]:
    """``ray.nodes()`` entries that are alive, as :class:`NodeShape`."""
    out = []
    for node in nodes:
        if not node.get("Alive", node.get("alive", False)):
            continue
        resources = {k: float(v) for k, v in (node.get("Resources") or {}).items() if isinstance(v, (int, float))}
        out.append(NodeShape(str(node.get("NodeManagerAddress", "node")), resources, 1))
    return tuple(out)


def iter_gpu_names(cluster: ClusterView) -> Iterator[str]:
    """GPU models the cluster has or can add (Ray's accelerator types; torch's name on a local GPU)."""
    seen = set()
    if cluster.local and cluster.torch_gpu_name:
        seen.add(cluster.torch_gpu_name)
        yield cluster.torch_gpu_name
    for node in list(cluster.nodes) + list(cluster.node_types):
        name = node.accelerator
        if name and name not in seen and node.gpus > 0:
            seen.add(name)
            yield name


def torch_gpus() -> tuple[int, str | None, float | None, str | None]:
    """(GPUs torch can use on this node, the first one's name, its memory in GiB, why none when none)."""
    import torch  # deferred: the checks above need no torch

    try:
        if torch.cuda.is_available():
            memory = torch.cuda.get_device_properties(0).total_memory / 2**30
            return torch.cuda.device_count(), torch.cuda.get_device_name(0), memory, None
        why = f"torch {torch.__version__} (CUDA {torch.version.cuda}): torch.cuda.is_available() is False"
        return 0, None, None, why
    except Exception as exc:  # a broken driver raises instead of answering False
        return 0, None, None, f"torch {torch.__version__}: {type(exc).__name__}: {exc}"


def this_machine(num_cpus: int | None = None) -> ClusterView:
    """The local Ray cluster before it starts: this machine's CPUs and the GPUs torch can use on it."""
    import os

    gpus, name, memory, problem = torch_gpus()
    node = NodeShape("this machine", {"CPU": float(num_cpus or os.cpu_count() or 1), "GPU": float(gpus)})
    return ClusterView("local", (node,), (), None, gpus, name, memory, problem)
