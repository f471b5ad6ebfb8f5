"""One thread policy for every CPU entry point: as many threads as CPUs this process was given.

Oversubscribed intra-op threads collapse rather than degrade: on a loaded 2-core machine
``hairseg train`` ran at 8-9 s per step with torch's default two threads and at 1.1 s per step with
one (issue #20; ``benchmarks/README.md``, "Threads"). So a trial takes the CPUs Ray gave it, and a
single run takes ``--threads`` or what :func:`available_cpus` finds: the smallest of the cgroup CPU
quota (a container limited to 2 CPUs on a 64-core host), the affinity mask (``taskset``, a Slurm
cpuset) and the host's count. torch, OpenCV and ONNX Runtime are set from the same number, and the
OpenMP / MKL environment follows it so subprocesses inherit it.

This module imports neither torch nor OpenCV at import time: ``hairseg --help`` shows the default
from :func:`available_cpus` without loading them.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

#: Environment variables the OpenMP / BLAS runtimes of a child process read at start-up.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

CGROUP_ROOT = Path("/sys/fs/cgroup")

# torch.set_num_interop_threads may be called once, before any inter-op work: remember what we set.
_interop_threads: int | None = None


def _quota_cpus(quota: float, period: float) -> int | None:
    """A CFS quota in CPUs, rounded up (1.5 CPUs of quota keep two threads busy part of the time)."""
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def _own_cgroup_paths(root: Path, controller: str | None) -> list[Path]:
    """This process's cgroup directories, deepest first, then the mount root (a container's view)."""
    paths: list[Path] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controller is None and controllers == "":
            paths.append(root / rel.lstrip("/"))
        elif controller is not None and controller in controllers.split(","):
            paths.append(root / rel.lstrip("/"))
    paths.append(root)
    return paths


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> int | None:
    """CPUs allowed by the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); None if unlimited.

    The smallest quota on this process's cgroup path and the mount root counts: a container sees its
    own limit at the root, a systemd slice may set it one level up.
    """
    limits: list[int] = []
    for directory in _own_cgroup_paths(root, None):
        try:
            fields = (directory / "cpu.max").read_text().split()
        except OSError:
            continue
        if len(fields) == 2 and fields[0] != "max":
            limit = _quota_cpus(float(fields[0]), float(fields[1]))
            if limit is not None:
                limits.append(limit)
    for base in (root / "cpu", root / "cpu,cpuacct"):
        for directory in _own_cgroup_paths(base, "cpu"):
            try:
                quota = float((directory / "cpu.cfs_quota_us").read_text())
                period = float((directory / "cpu.cfs_period_us").read_text())
            except (OSError, ValueError):
                continue
            limit = _quota_cpus(quota, period)
            if limit is not None:
                limits.append(limit)
    return min(limits) if limits else None


def available_cpus() -> int:
    """CPUs this process may use: the smallest of the cgroup quota, the affinity mask and ``os.cpu_count()``."""
    counts = [os.cpu_count() or 1]
    if hasattr(os, "sched_getaffinity"):
        counts.append(len(os.sched_getaffinity(0)))
    limit = cgroup_cpu_limit()
    if limit is not None:
        counts.append(limit)
    return max(1, min(counts))


def thread_env(n: int) -> dict[str, str]:
    """OpenMP / MKL / OpenBLAS variables for ``n`` threads: merge into a subprocess's environment."""
    return {name: str(int(n)) for name in THREAD_ENV_VARS}


def ort_thread_options(n: int | None) -> tuple[int, int]:
    """``(intra_op_num_threads, inter_op_num_threads)`` for an ONNX Runtime ``SessionOptions``.

    ``None`` means the process's :func:`available_cpus`. Inter-op stays 1: the exported graphs are
    one sequential chain (``ORT_SEQUENTIAL``), so a second pool would only compete for the same cores.
    """
    return (max(1, int(n)) if n is not None else available_cpus()), 1


def configure_threads(n: int | None = None) -> int:
    """Set torch, OpenCV and the OpenMP/MKL environment to ``n`` threads (default :func:`available_cpus`).

    torch's inter-op pool can be sized only once per process and only before it first ran parallel
    work; a later call (a second configuration in one test process, a trial after model building)
    keeps the pool it has, which does not matter here since the trainer runs no inter-op work of its
    own. Returns the thread count used.
    """
    global _interop_threads
    threads = max(1, int(n)) if n is not None else available_cpus()
    os.environ.update(thread_env(threads))

    import torch  # deferred: torch-free module (docstring); loads after the OMP/MKL variables are set

    torch.set_num_threads(threads)
    if _interop_threads is None:
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # parallel work already started, or set earlier by someone else
            pass
        _interop_threads = torch.get_num_interop_threads()
    import cv2  # the data pipeline and the app read images with it: its pool must fit too

    cv2.setNumThreads(threads)
    return threads
