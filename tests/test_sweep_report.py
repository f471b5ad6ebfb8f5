"""The reproduction report: rendering on constructed sweep records (fast), then a real sweep opened in Chromium.

The fast tests build ``SweepRecord`` objects by hand, so each section's content is known; the slow
ones run ``pipelines/sweep.py`` on the tiny space with its final stage, read the report it wrote,
rebuild it with ``finalize.py --report-only`` and open the file in headless Chromium (skipped,
saying why, where Chromium is not installed; ``.ci/run`` installs it).
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
from sweep_helpers import EXPERIMENT, FINALIZE, TINY_SPACE, make_workspace, sweep_runs

from hairseg_core.final.report import SECTIONS, SweepRecord, TrialRecord, parameter_importances, render_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Sections(HTMLParser):
    """Section ids and embedded image payloads of a report."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[bytes] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "section":
            self.sections.append(values.get("id") or "")
        for key in ("src", "href"):
            value = values.get(key) or ""
            if value.startswith("data:image/png;base64,"):
                self.images.append(base64.b64decode(value.split(",", 1)[1]))
            elif value and not value.startswith("#"):
                self.external.append(value)


def _parse(page: str) -> _Sections:
    parser = _Sections()
    parser.feed(page)
    return parser


def _record(trials: list[TrialRecord], **extra) -> SweepRecord:
    space = {
        "name": "t",
        "metric": "val_miou",
        "mode": "max",
        "num_samples": len(trials),
        "fixed": {"dataset": "synthetic", "epochs": 3, "crop_size": 65, "base_size": 65, "rsc": False},
        "params": {
            "lr_head": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "loss": {"type": "categorical", "choices": ["ce", "focal"]},
            "mixup": {"type": "categorical", "choices": [False, True]},
        },
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    }
    return SweepRecord(
        sweep="t-1",
        parent_run_id="p" * 32,
        experiment="hairseg-t",
        space=space,
        space_yaml="name: t\nmetric: val_miou\n",
        machine={"CPU": "AMD EPYC", "logical cores": "2", "torch": "2.14.1"},
        trials=trials,
        **extra,
    )


def _trial(i: int, lr: float, loss: str, mixup: bool, values: list[float], stopped: bool = False) -> TrialRecord:
    curve = list(enumerate(values, start=1))
    return TrialRecord(
        str(i), f"run{i}", "FINISHED", {"lr_head": lr, "loss": loss, "mixup": mixup}, curve, curve, stopped
    )


TRIALS = [
    _trial(1, 0.003, "ce", False, [0.5, 0.6, 0.7]),
    _trial(2, 0.0003, "focal", True, [0.4], stopped=True),
    _trial(3, 0.03, "ce", True, [0.45, 0.62, 0.66]),
    _trial(4, 0.01, "focal", False, [0.42, 0.5], stopped=True),
]


def test_report_has_every_section_offline_with_intervals_and_the_paper() -> None:
    table5 = [
        {"method": m, "acc": 0.9, "acc_class": 0.85, "miou": v, "miou_lo": v - 0.02, "miou_hi": v + 0.02}
        for m, v in (("baseline", 0.71), ("crf", 0.70), ("matting", 0.66), ("crf+matting", 0.65))
    ]
    boot = {"metric": "miou", "diff": 0.004, "diff_mean": 0.0041, "lo": -0.006, "hi": 0.014}
    boot |= {"confidence": 0.95, "resamples": 2000, "n_images": 40, "seed": 0}
    decision = {"promote": False, "reason": "lower bound not above the margin, champion kept", "margin": 0.0}
    decision |= {"new_score": 0.71, "champion_score": 0.706, "champion_version": "1", "bootstrap": boot}
    panel = cv2.imencode(".png", np.full((20, 60, 3), 120, np.uint8))[1].tobytes()
    page = render_report(_record(TRIALS, table5=table5, decision=decision, examples=[panel], model_version="2"))
    parsed = _parse(page)
    assert parsed.sections == list(SECTIONS)
    assert not parsed.external, f"the report must need no network: {parsed.external}"
    assert len(parsed.images) >= 5 and all(img[:8] == PNG_MAGIC for img in parsed.images)
    assert "single objective: val_miou" in page
    assert "[-0.0060, +0.0140]" in page and "2000 / 40 / 0" in page  # the promotion interval
    assert "<td>0.6900</td><td>0.7300</td>" in page  # baseline's miou_lo / miou_hi
    assert "90.02%" in page and "86.04%" in page  # Table 5 of the paper beside ours (71.00%)
    assert "71.00%" in page and "[69.00%, 73.00%]" in page
    assert "Not varied in this sweep" in page  # Table 2: rsc fixed to False
    assert "The sweep varied this factor (2 settings" in page  # Table 3 (mixup) and Table 4 (loss)
    assert "Conditions differ" in page and "LFW" in page
    # trials sorted by the metric: trial 1 (0.7) first, trial 2 (0.4) last
    order = re.findall(r"<tr><td>(\d)</td><td>FINISHED</td>", page)
    assert order == ["1", "3", "4", "2"]


def test_importances_say_why_they_cannot_be_computed() -> None:
    importances, why = parameter_importances(_record(TRIALS[:1]))
    assert importances is None and "1 completed trial" in why
    same = [_trial(i, 0.003, "ce", False, [0.5 + 0.01 * i]) for i in range(3)]
    importances, why = parameter_importances(_record(same))
    assert importances is None and "same parameter values" in why
    page = render_report(_record(same))
    assert "Parameter importances cannot be computed: every completed trial has the same" in page
    importances, why = parameter_importances(_record(TRIALS))
    assert importances is not None and set(importances) <= {"lr_head", "loss", "mixup"}
    assert sum(importances.values()) == pytest.approx(1.0)


def test_pareto_section_only_with_several_objectives() -> None:
    front = {
        "objectives": ["val_miou", "latency_ms"],
        "front": [
            {"trial_id": "1", "val_miou": 0.7, "latency_ms": 12.0},
            {"trial_id": "3", "val_miou": 0.66, "latency_ms": 8.0},
        ],
        "picked": "1",
        "reason": "best val_miou on the front",
    }
    page = render_report(_record(TRIALS, pareto=front, pareto_source="pareto/front.json"))
    assert "single objective" not in page and "Picked for export: trial <b>1</b>" in page
    single = render_report(_record(TRIALS, pareto={"objectives": ["val_miou"], "front": []}))
    assert "single objective: val_miou" in single


# ----------------------------------------------------------------------------- a real sweep, in a browser
@pytest.fixture(scope="module")
def reported_sweep(tmp_path_factory: pytest.TempPathFactory):
    """One tiny sweep with its final stage (3 trials, 4 test images); its workspace and parent run id."""
    tmp = tmp_path_factory.mktemp("report")
    ws = make_workspace(tmp, tmp_path_factory)
    space = ws.space({"num_samples": 3})
    overrides = ["--set", "epochs=3", "finalize.max_test_images=4", "finalize.export_size=97"]
    try:
        sweep = ws.run(["--space", str(space), "--quiet", "--num-cpus", "2", *overrides], timeout=600)
        assert sweep.proc.returncode == 0, sweep.describe()
        yield ws, sweep, sweep_runs(ws.tracking_uri, EXPERIMENT).parents[0].info.run_id
    finally:
        ws.cleanup()


@pytest.mark.slow
def test_sweep_writes_the_report_and_report_only_rebuilds_it(reported_sweep) -> None:
    ws, sweep, parent_id = reported_sweep
    name = ws.sweep_dir().name
    report = ws.cwd / "exports" / name / "report.html"
    assert f"reproduction report: {report}" in sweep.stdout
    page = report.read_text()
    parsed = _parse(page)
    assert parsed.sections == list(SECTIONS) and not parsed.external
    assert "promoted to @champion" in page and "first model, no champion" in page
    assert page.count("<tr><td>") >= 3 and "val_loss" in page  # the trial table, by the tiny space's metric
    assert "stopped by ASHA" in page
    client = mlflow.MlflowClient(ws.tracking_uri)
    assert "report.html" in {a.path for a in client.list_artifacts(parent_id)}

    report.unlink()
    again = ws.run(["--report-only", "--run-id", parent_id], timeout=300, log_name="report", script=FINALIZE)
    assert again.proc.returncode == 0, again.describe()
    assert report.is_file() and _parse(report.read_text()).sections == list(SECTIONS)
    assert len(client.search_model_versions("name='hairseg'")) == 1, "--report-only changes no registry"
    assert TINY_SPACE["params"]["lr_head"]["type"] in report.read_text()  # the space's YAML is shown


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (apt-get install chromium; .ci/run does)")
def test_report_opens_in_headless_chromium(reported_sweep, tmp_path: Path) -> None:
    """Chromium opens the file from disk (no server, no network), every section is in its DOM, and it paints."""
    ws, _, _ = reported_sweep
    report = ws.cwd / "exports" / ws.sweep_dir().name / "report.html"
    browser = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"]
    browser.append(f"--user-data-dir={tmp_path / 'profile'}")
    dom = subprocess.run([*browser, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-3000:]
    parsed = _parse(dom.stdout)
    assert parsed.sections == list(SECTIONS), parsed.sections
    assert len(parsed.images) >= 4
    shot = tmp_path / "report.png"
    run = subprocess.run(
        [*browser, f"--screenshot={shot}", "--window-size=1280,4000", "--hide-scrollbars", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and shot.is_file(), run.stderr[-3000:]
    pixels = cv2.imread(str(shot))
    assert pixels is not None and pixels.shape[:2] == (4000, 1280)
    assert float(pixels.astype(np.float32).var()) > 100.0, "the screenshot is blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "a page with figures has many colours"
