"""A corpus of bad inputs: every one ends its command with exit 2, one line naming what is wrong, no traceback,
and nothing left behind (no new file or folder, no sqlite store, no MLflow experiment).

The entry points run in this process (``hairseg_core.cli.main``, ``pipelines/sweep.py``'s and
``pipelines/finalize.py``'s ``main``) with the test's stderr captured: the same code a shell runs, without
paying a torch + Ray import per case on a 2-core CI machine. Each case builds its inputs in a fresh folder that
is also the working directory (so the default ``./mlruns.db`` and ``./ray_results`` would land there), and
the folder's listing and the store's experiments are compared before and after.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from sweep_helpers import REPO, TINY_SPACE, free_port

from hairseg_core import cli

PIPELINES = REPO / "pipelines"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bad_inputs_{name}", PIPELINES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Case:
    """``build(folder)`` writes the inputs and returns (entry point, argv, text the error line must hold)."""

    name: str
    build: Callable[[Path], tuple[str, list[str], str]]
    store: bool = False  # an MLflow sqlite store exists in the folder beforehand


def _space(folder: Path, text: str | bytes, name: str = "space.yaml") -> str:
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


TINY_YAML = yaml.safe_dump(TINY_SPACE, sort_keys=False)
WHEN_SPACE = """\
name: when
fixed: {epochs: 2}
params:
  loss: {type: categorical, choices: [ce, focal]}
  focal_gamma: {type: float, low: 0.5, high: 3.0, when: {loss: [focall]}}
"""


def _evil_pickle(folder: Path) -> str:
    """A pickle whose loading would run a shell command creating ``pwned`` (it must never run)."""

    class Evil:
        def __reduce__(self):  # noqa: D401 - the classic pickle payload
            return (os.system, (f"touch {folder / 'pwned'}",))

    path = folder / "evil.pt"
    path.write_bytes(pickle.dumps(Evil()))
    return str(path)


def _manifest_sweep(folder: Path, name: str, content: bytes) -> None:
    sweep = folder / "ray_results" / name
    sweep.mkdir(parents=True)
    (sweep / "hairseg_sweep.json").write_bytes(content)


def _plain_run(folder: Path) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlruns.db'}")
    exp = client.create_experiment("other", artifact_location=(folder / "art").as_uri())
    return client.create_run(exp, run_name="not-a-sweep").info.run_id


def _closed_port() -> str:
    return f"http://127.0.0.1:{free_port()}"


CASES = [
    # ------------------------------------------------------------------ search spaces (hairseg validate)
    Case(
        "space-duplicate-key",
        lambda d: ("cli", ["validate", _space(d, TINY_YAML + "seed: 3\n")], "duplicate key 'seed'"),
    ),
    Case("space-not-utf8", lambda d: ("cli", ["validate", _space(d, b"name: t\xe9st\n")], "not UTF-8")),
    Case("space-when-unknown-choice", lambda d: ("cli", ["validate", _space(d, WHEN_SPACE)], "when.loss")),
    Case("space-unknown-key", lambda d: ("cli", ["validate", _space(d, TINY_YAML + "num_sample: 3\n")], "num_sample")),
    Case("space-missing-file", lambda d: ("cli", ["validate", str(d / "nope.yaml")], "not found")),
    Case("space-yaml-syntax", lambda d: ("cli", ["validate", _space(d, "name: [unclosed\n")], "not valid YAML")),
    Case("space-top-level-list", lambda d: ("cli", ["validate", _space(d, "- a\n- b\n")], "expected a mapping")),
    Case(
        "space-empty-choices",
        lambda d: ("cli", ["validate", _space(d, "params:\n  loss: {type: categorical, choices: []}\n")], "empty"),
    ),
    Case(
        "space-low-above-high",
        lambda d: ("cli", ["validate", _space(d, "params:\n  lr: {type: float, low: 1, high: 0.1}\n")], "params.lr"),
    ),
    Case(
        "space-duplicate-nested-key",
        lambda d: ("cli", ["validate", _space(d, "fixed:\n  epochs: 2\n  epochs: 3\n")], "duplicate key 'epochs'"),
    ),
    # ------------------------------------------------------------------ sweeps (pipelines/sweep.py)
    Case("sweep-duplicate-key", lambda d: ("sweep", ["--space", _space(d, TINY_YAML + "seed: 1\n")], "duplicate key")),
    Case("sweep-not-utf8", lambda d: ("sweep", ["--space", _space(d, b"\xff\xfe")], "not UTF-8")),
    Case("sweep-bad-set", lambda d: ("sweep", ["--space", _space(d, TINY_YAML), "--set", "epochs"], "--set")),
    Case(
        "sweep-set-unknown-setting",
        lambda d: ("sweep", ["--space", _space(d, TINY_YAML), "--set", "epochz=2"], "epochz"),
    ),
    Case(
        "sweep-resume-typo-empty-storage",
        lambda d: ("sweep", ["--resume", "--run-name", "hairseg-tiny-typo"], "hairseg-tiny-typo"),
    ),
    Case(
        "sweep-resume-typo-lists-sweeps",
        lambda d: (
            _manifest_sweep(d, "hairseg-tiny-20260101-000000", json.dumps({"experiment": "x", "space": {}}).encode())
            or ("sweep", ["--resume", "--run-name", "hairseg-tiny-2026"], "hairseg-tiny-20260101-000000")
        ),
    ),
    Case(
        "sweep-resume-truncated-manifest",
        lambda d: (
            _manifest_sweep(d, "s1", b'{"experiment": "hairseg-tiny", "spa')
            or ("sweep", ["--resume", "--run-name", "s1"], "s1/hairseg_sweep.json is corrupt")
        ),
    ),
    Case(
        "sweep-resume-manifest-not-object",
        lambda d: _manifest_sweep(d, "s2", b"[1, 2]") or ("sweep", ["--resume", "--run-name", "s2"], "corrupt"),
    ),
    Case(
        "sweep-resume-manifest-not-utf8",
        lambda d: _manifest_sweep(d, "s3", b"\xff\x00") or ("sweep", ["--resume", "--run-name", "s3"], "corrupt"),
    ),
    Case(
        "sweep-resume-with-set",
        lambda d: ("sweep", ["--resume", "--run-name", "x", "--set", "epochs=2"], "--set would change"),
    ),
    Case(
        "sweep-cluster-config-missing",
        lambda d: ("sweep", ["--cluster-config", str(d / "nope.yaml")], "--cluster-config"),
    ),
    Case(
        "sweep-tracking-server-down",
        lambda d: ("sweep", ["--space", _space(d, TINY_YAML), "--tracking-uri", _closed_port()], "cannot reach"),
    ),
    # ------------------------------------------------------------------ the final stage (pipelines/finalize.py)
    Case("finalize-run-id-unknown", lambda d: ("finalize", ["--run-id", "0" * 32], "no such MLflow run"), store=True),
    Case("finalize-run-id-no-store", lambda d: ("finalize", ["--run-id", "0" * 32], "no MLflow store")),
    Case(
        "finalize-experiment-typo", lambda d: ("finalize", ["--experiment", "hairseg-tyop"], "hairseg-tyop"), store=True
    ),
    Case(
        "finalize-experiment-no-store", lambda d: ("finalize", ["--experiment", "hairseg-default"], "no MLflow store")
    ),
    Case(
        "finalize-run-not-a-sweep",
        lambda d: ("finalize", ["--run-id", _plain_run(d)], "not a hairseg sweep"),
        store=True,
    ),
    Case("finalize-malicious-pickle", lambda d: ("finalize", ["--checkpoint", _evil_pickle(d)], "refused")),
    Case(
        "finalize-truncated-checkpoint",
        lambda d: ("finalize", ["--checkpoint", _space(d, b"PK\x03\x04trunc", "ckpt.pt")], "cannot read checkpoint"),
    ),
    Case("finalize-checkpoint-missing", lambda d: ("finalize", ["--checkpoint", str(d / "none.pt")], "no such file")),
    Case(
        "finalize-space-missing",
        lambda d: ("finalize", ["--run-id", "0" * 32, "--space", str(d / "nope.yaml")], "nope.yaml"),
        store=True,
    ),
    Case(
        "finalize-space-not-utf8",
        lambda d: ("finalize", ["--run-id", "0" * 32, "--space", _space(d, b"\xff")], "not UTF-8"),
        store=True,
    ),
    Case("finalize-server-down", lambda d: ("finalize", ["--tracking-uri", _closed_port()], "cannot reach")),
    # ------------------------------------------------------------------ models and data (hairseg evaluate / train)
    Case(
        "evaluate-model-uri-no-store",
        lambda d: ("cli", ["evaluate", "--model", "models:/hairseg@champion", "--data", str(d)], "no MLflow store"),
    ),
    Case(
        "evaluate-model-uri-unknown",
        lambda d: ("cli", ["evaluate", "--model", "models:/nosuch@champion", "--data", str(d)], "models:/nosuch"),
        store=True,
    ),
    Case(
        "evaluate-model-missing",
        lambda d: ("cli", ["evaluate", "--model", str(d / "m.onnx"), "--data", str(d)], "does not exist"),
    ),
    Case(
        "evaluate-model-corrupt-onnx",
        lambda d: ("cli", ["evaluate", "--model", _space(d, b"\x00junk", "m.onnx"), "--data", str(d)], "m.onnx"),
    ),
    Case(
        "train-config-duplicate-key",
        lambda d: ("cli", ["train", "--config", _space(d, "epochs: 1\nepochs: 2\n", "c.yaml")], "duplicate key"),
    ),
    Case(
        "train-config-not-utf8",
        lambda d: ("cli", ["train", "--config", _space(d, b"epochs: \xff\n", "c.yaml")], "not UTF-8"),
    ),
    # ------------------------------------------------------------------ flags of the tracking server
    Case("tracking-server-public-host", lambda d: ("cli", ["tracking-server", "--host", "0.0.0.0"], "0.0.0.0")),
    Case(
        "tracking-server-no-admin-password",
        lambda d: ("cli", ["tracking-server", "--state-dir", str(d / "state"), "--print-only"], "ADMIN_PASSWORD"),
    ),
    Case(
        "tracking-server-env-file-readable-by-others",
        lambda d: (
            _space(d, "MLFLOW_AUTH_ADMIN_PASSWORD=x\n", "server.env")
            and ("cli", ["tracking-server", "--env-file", str(d / "server.env"), "--print-only"], "readable by others")
        ),
    ),
]


@pytest.fixture(scope="module")
def entry_points() -> dict[str, Callable[[list[str]], int]]:
    return {"cli": cli.main, "sweep": _load("sweep").main, "finalize": _load("finalize").main}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow sqlite store with its schema (migrations take seconds: made once, copied per case)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlruns.db"
    MlflowClient(f"sqlite:///{path}").search_experiments(max_results=1)
    return path


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def _experiments(folder: Path) -> list[str] | None:
    if not (folder / "mlruns.db").is_file():
        return None
    from mlflow import MlflowClient

    return sorted(e.name for e in MlflowClient(f"sqlite:///{folder / 'mlruns.db'}").search_experiments())


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_fails_in_one_line_and_leaves_nothing(
    case: Case,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    entry_points: dict[str, Callable[[list[str]], int]],
    empty_store: Path,
) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HAIRSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HAIRSEG_TRACKING_RETRY_S", "0")
    if case.store:
        shutil.copyfile(empty_store, folder / "mlruns.db")
    entry, argv, expected = case.build(folder)
    for path in folder.rglob("*"):  # inputs are the user's: make them look that way (0644), except where tested
        if path.name != "server.env" and path.is_file():
            path.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    before, experiments = _listing(folder), _experiments(folder)
    capsys.readouterr()

    try:
        status = entry_points[entry](argv)
    except SystemExit as exc:  # argparse's own exit would be a bug in the corpus, not a pass
        status = exc.code
    out, err = capsys.readouterr()

    lines = [line for line in err.splitlines() if line.strip() and "Warning" not in line]
    assert status == 2, f"{case.name}: exit {status}\n--- stderr\n{err}\n--- stdout\n{out}"
    assert "Traceback" not in err + out, err
    assert len(lines) == 1, f"{case.name}: expected one error line, got:\n{err}"
    assert expected in lines[0], f"{case.name}: {expected!r} not in {lines[0]!r}"
    assert _listing(folder) == before, f"{case.name} left files behind: {set(_listing(folder)) - set(before)}"
    assert _experiments(folder) == experiments
    assert not (folder / "pwned").exists()


def test_corpus_runs_a_real_entry_point_as_a_subprocess(tmp_path: Path) -> None:
    """One case through the console script, as a shell runs it: the in-process calls above stand for these."""
    import subprocess

    space = tmp_path / "space.yaml"
    space.write_text(WHEN_SPACE)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run(
        [sys.executable, "-m", "hairseg_core.cli", "validate", str(space)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "when.loss" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]
