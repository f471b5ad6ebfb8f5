"""One front door: ``hairseg sweep|finalize|webcam`` = ``python -m hairseg ...`` = ``python pipelines/X.py``,
parsed before anything heavy is imported; and progress bars that write one line each into a log.

The help and a bad option must answer in well under a second: that holds when neither Ray, torch, MLflow,
OpenCV nor ONNX Runtime is imported by then, which is what the subprocesses below check (their
``sys.modules``, not a wall-clock time that a loaded CI machine would make flaky).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hairseg_core import cli
from hairseg_core.cli import sweep as sweep_cli
from hairseg_core.cli import webcam as webcam_cli
from hairseg_core.progress import LineBar, progress_bar

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("ray", "torch", "mlflow", "cv2", "onnxruntime")


def _env() -> dict[str, str]:
    """This checkout first on the path (``python -m hairseg`` from a clone whose install predates the package)."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path}


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=_env(), timeout=120, check=False)


LOADED = f"""
import json, runpy, sys
how, argv = sys.argv[1], sys.argv[2:]
sys.argv = ["x", *argv]
try:
    if how == "main":
        from hairseg_core.cli import main
        main(argv)
    elif how == "module":
        runpy.run_module("hairseg", run_name="__main__")
    else:
        runpy.run_path(how, run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = None
heavy = [m for m in {HEAVY} if m in sys.modules]
print(json.dumps({{"code": code, "heavy": heavy}}))
"""


def _loaded(how: str, *argv: str) -> dict:
    """Exit code and the heavy modules imported when ``how`` (main / module / a script path) ran ``argv``."""
    result = _run([sys.executable, "-c", LOADED, how, *argv])
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("command", ["sweep", "finalize", "webcam"])
def test_help_imports_nothing_heavy(command: str) -> None:
    assert _loaded("main", command, "--help") == {"code": 0, "heavy": []}
    assert _loaded("module", command, "--help") == {"code": 0, "heavy": []}
    assert _loaded(str(REPO / "pipelines" / f"{command}.py"), "--help") == {"code": 0, "heavy": []}


def test_a_bad_option_is_refused_before_anything_heavy() -> None:
    assert _loaded("main", "sweep", "--num-samples", "many") == {"code": 2, "heavy": []}
    assert _loaded("main", "webcam", "--model", "m", "--smoothing", "kalman") == {"code": 2, "heavy": []}
    assert _loaded("main", "finalize", "--run-id", "a", "--experiment", "b") == {"code": 2, "heavy": []}


def test_console_script_and_python_m_answer() -> None:
    module = _run([sys.executable, "-m", "hairseg", "sweep", "--help"])
    assert module.returncode == 0, module.stderr
    assert "usage: hairseg sweep" in module.stdout and "--cluster-config" in module.stdout
    script = shutil.which("hairseg", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the hairseg console script is not installed next to this Python")
    result = _run([script, "sweep", "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == module.stdout


def test_pipeline_scripts_are_shims_without_path_edits() -> None:
    for name in ("sweep", "finalize", "webcam"):
        text = (REPO / "pipelines" / f"{name}.py").read_text()
        assert "sys.path" not in text and f'hairseg(["{name}", ' in text, name


def test_subcommands_keep_the_pipeline_options() -> None:
    """Exactly the options ``pipelines/sweep.py``, ``finalize.py`` and ``webcam.py`` had before the move."""
    expected = {
        "sweep": "--space --num-samples --max-concurrent --set --experiment --address --storage --tracking-uri "
        "--resume --run-name --break-lease --no-finalize --num-cpus --quiet --cluster-config",
        "finalize": "--experiment --run-id --checkpoint --space --tracking-uri --dry-run --promote-margin "
        "--max-test-images --report-only --threads",
        "webcam": "--model --source --color --strength --smoothing --smooth --backend --output --headless "
        "--max-frames --threads --no-channels-last --camera-timeout --quiet --web --port --host --no-browser "
        "--web-threads",
    }
    subparsers = next(a for a in cli.build_parser()._actions if a.dest == "command").choices
    for command, options in expected.items():
        found = [s for a in subparsers[command]._actions for s in a.option_strings if s not in ("-h", "--help")]
        assert found == options.split(), command


def test_webcam_parser_names_match_the_library() -> None:
    from hairseg_core.deploy.coloring import NAMED_COLORS
    from hairseg_core.deploy.temporal import DEFAULT_SMOOTHER, SMOOTHERS

    assert list(webcam_cli.COLOR_NAMES) == sorted(NAMED_COLORS)
    assert list(webcam_cli.SMOOTHER_NAMES) == SMOOTHERS.names()
    assert webcam_cli.DEFAULT_SMOOTHER == DEFAULT_SMOOTHER


def test_sweep_default_space_is_the_clones(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    assert sweep_cli.DEFAULT_SPACE == REPO / "search_spaces" / "default.yaml"
    assert sweep_cli.DEFAULT_SPACE.is_file()
    monkeypatch.setattr(sweep_cli, "DEFAULT_SPACE", REPO / "no-such-folder" / "default.yaml")
    assert cli.main(["sweep"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no-such-folder" in lines[0] and "--space" in lines[0]


def test_colour_controls_follow_the_window_keys() -> None:
    from hairseg_core.deploy.webcam import ColourControls, colour_cycle

    controls = ColourControls(colour_cycle("blue"), 0.95)
    assert controls.color == "blue" and controls.colors.count("blue") == 1
    assert controls.press(ord("c")) and controls.color == "red"
    assert controls.press(ord("+")) and controls.strength == 1.0
    assert controls.press(ord("-")) and controls.press(ord("-")) and controls.strength == pytest.approx(0.8)
    assert not controls.press(ord("q")) and not controls.press(27)


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_writes_one_line_per_bar_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    err = _Stream(tty=False)
    monkeypatch.setattr(sys, "stderr", err)
    assert sum(1 for _ in progress_bar(range(2000), desc="decoding", unit="file")) == 2000
    with progress_bar(total=4, desc="epoch 1/3", leave=False) as bar:
        for _ in range(4):
            bar.update(1)
            bar.set_postfix(loss="0.4321")
    with progress_bar(total=3 * 2**20, unit="B", unit_scale=True, desc="Figaro1k.zip") as bar:
        bar.update(3 * 2**20)
    list(progress_bar(range(5), desc="quiet", disable=True))
    text = err.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 3, text
    assert lines[0].startswith("decoding: 2000/2000 file in 00:0") and "file/s)" in lines[0]
    assert lines[1].startswith("epoch 1/3: 4/4 it in ") and lines[1].endswith(", loss=0.4321")
    assert lines[2].startswith("Figaro1k.zip: 3.15M/3.15MB in ")


def test_progress_is_tqdm_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", _Stream(tty=True))
    bar = progress_bar(range(3), desc="x")
    assert not isinstance(bar, LineBar)
    bar.close()
    monkeypatch.setattr(sys, "stderr", _Stream(tty=False))
    bar = progress_bar(range(3), desc="x")
    assert isinstance(bar, LineBar)
    bar.close()
