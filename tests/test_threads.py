"""One thread policy: the CPU count a process may use, and torch / OpenCV / OMP set from it.

Real affinity masks and real torch pools: the settings that matter only exist in a fresh process
(torch sizes its inter-op pool once), so those checks run in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hairseg_core.cli import build_parser
from hairseg_core.threads import (
    THREAD_ENV_VARS,
    available_cpus,
    cgroup_cpu_limit,
    ort_thread_options,
    thread_env,
)

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, timeout=120, **kwargs
    )


def test_available_cpus_is_the_smallest_of_affinity_quota_and_count() -> None:
    counts = [os.cpu_count() or 1, len(os.sched_getaffinity(0))]
    limit = cgroup_cpu_limit()
    if limit is not None:
        counts.append(limit)
    assert available_cpus() == min(counts)
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))


def test_available_cpus_follows_a_narrowed_affinity_mask() -> None:
    one = min(os.sched_getaffinity(0))
    out = _run(
        "from hairseg_core.threads import available_cpus; print(available_cpus())",
        preexec_fn=lambda: os.sched_setaffinity(0, {one}),
    )
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs of quota keep two threads partly busy
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_quota_v2_and_v1(tmp_path: Path, files: dict[str, str], expected: int | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == expected


def test_configure_threads_sets_torch_opencv_and_the_child_environment() -> None:
    code = """
import json, os
import torch, cv2
from hairseg_core.threads import configure_threads
first = configure_threads(1)
state = {"first": first, "torch": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
         "cv2": cv2.getNumThreads(), "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}
torch.ones(64, 64) @ torch.ones(64, 64)  # parallel work has run: the inter-op pool can no longer change
state["second"] = configure_threads(2)
state["torch_after"] = torch.get_num_threads()
print(json.dumps(state))
"""
    state = json.loads(_run(code).stdout.strip().splitlines()[-1])
    assert state["first"] == 1 and state["torch"] == 1 and state["interop"] == 1
    assert state["env"] == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert state["cv2"] in (0, 1)  # OpenCV reports 1 thread as 1 (or 0 on a build with threading off)
    assert state["second"] == 2 and state["torch_after"] == 2


def test_default_thread_count_is_the_available_cpus() -> None:
    out = _run("import torch; from hairseg_core.threads import configure_threads; print(configure_threads(None))")
    assert int(out.stdout.strip()) == available_cpus()
    assert ort_thread_options(None) == (available_cpus(), 1)
    assert ort_thread_options(3) == (3, 1)
    assert thread_env(2) == dict.fromkeys(THREAD_ENV_VARS, "2")


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_cli_commands_take_threads(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([command, "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--threads N" in help_text and f"here {available_cpus()}" in help_text
    required = ["--model", "m.onnx", "--data", "d"] if command == "evaluate" else []
    assert parser.parse_args([command, *required, "--threads", "1"]).threads == 1
    assert parser.parse_args([command, *required]).threads is None  # -> available_cpus() when it runs
    with pytest.raises(SystemExit):
        parser.parse_args([command, *required, "--threads", "0"])


def test_finalize_and_webcam_take_threads() -> None:
    code = """
import sys
sys.argv = ["x"]
from hairseg_core.cli import build_parser
parser = build_parser()
print(parser.parse_args(["finalize", "--threads", "1"]).threads, parser.parse_args(["finalize"]).threads)
print(parser.parse_args(["webcam", "--model", "m.onnx", "--threads", "1"]).threads)
"""
    lines = _run(code).stdout.split("\n")
    assert lines[0] == "1 None" and lines[1] == "1"


def test_gpu_benchmark_skips_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the benchmark would measure instead of skipping")
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_train.py")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "skipped: no CUDA device"
    assert json.loads(lines[-1]) == {"skipped": True, "reason": "no CUDA device"}
