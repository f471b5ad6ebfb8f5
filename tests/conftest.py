"""Shared pytest setup: keep every test offline, quiet and on the CPU."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sweep_helpers import Workspace, make_workspace

# Tests never reach the internet; make libraries that could try fail fast instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HAIRSEG_OFFLINE", "1")  # pretrained weights: never fetched unless a test serves them
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "slow: long or multi-node test; run in CI, skip with -m 'not slow'")


@pytest.fixture
def ws(tmp_path, tmp_path_factory) -> Iterator[Workspace]:
    """A working folder for one sweep subprocess: sqlite MLflow, Tune storage, a shared data cache."""
    workspace = make_workspace(tmp_path, tmp_path_factory)
    yield workspace
    workspace.cleanup()
