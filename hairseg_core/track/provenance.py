"""Tags that say which machine and which code made a run: a sweep's timings and scores mean little without them."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import mlflow

from hairseg_core.track.tags import (
    TAG_CPU,
    TAG_CPU_COUNT,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_GPU,
    TAG_HOST,
    TAG_MLFLOW,
    TAG_OPTUNA,
    TAG_PLATFORM,
    TAG_PYTHON,
    TAG_RAY,
    TAG_SOURCE_GIT_COMMIT,
    TAG_SOURCE_NAME,
    TAG_SOURCE_TYPE,
    TAG_TORCH,
)


def machine_description() -> dict[str, str]:
    """CPU model, logical cores, GPU and OS of this machine: a sweep's timings mean little without them."""
    import optuna  # deferred: Optuna only for its version tag
    import torch  # deferred: most tracking calls never need torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        TAG_CPU: cpu,
        TAG_CPU_COUNT: str(os.cpu_count()),
        TAG_GPU: gpu,
        TAG_PLATFORM: platform.platform(),
        TAG_OPTUNA: optuna.__version__,
    }


def source_tags() -> dict[str, str]:
    """MLflow's source tags (the UI's Source column): the sweep entry point, run locally or on a cluster."""
    return {TAG_SOURCE_NAME: "pipelines/sweep.py", TAG_SOURCE_TYPE: "LOCAL"}


def environment_tags() -> dict[str, str]:
    """Versions and git commit, so a result can be traced to the code that made it."""
    import ray  # deferred: Ray only for its version tag
    import torch  # deferred: most tracking calls never need torch

    tags = {
        TAG_PYTHON: platform.python_version(),
        TAG_TORCH: torch.__version__,
        TAG_RAY: ray.__version__,
        TAG_MLFLOW: mlflow.__version__,
        TAG_HOST: platform.node(),
        **machine_description(),
    }
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        tags[TAG_SOURCE_GIT_COMMIT] = commit
        tags[TAG_GIT_DIRTY] = str(bool(dirty))
    except (OSError, subprocess.SubprocessError):
        tags[TAG_GIT_COMMIT] = "unknown (not a git checkout)"
    return tags
