"""The MLflow UI, in a real headless Chromium, over a finished sweep tracked by a real ``mlflow server``.

What a user sees is asserted, not what the store holds (``test_mlflow_layout.py`` pins that): the
experiment opens in the model-training view; the sweep's saved view lists one row per trial with its
sampled parameter and best validation metric; its chart view compares every trial (the objective per
epoch, parameters vs metric); the registered model's page shows the champion alias. The screenshots are
kept under ``tests/artifacts/mlflow-ui/`` (ignored by git; the path is printed) for a human to look at.

Chromium is Debian's (``/usr/bin/chromium``, installed by ``.ci/run``), driven by Playwright for Python
(the ``test`` extra); ``playwright install`` is never needed. Without either the test skips, saying which.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from sweep_helpers import EXPERIMENT, REPO, MlflowServer, Workspace, make_workspace, sweep_runs

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("HAIRSEG_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO / "tests" / "artifacts" / "mlflow-ui"
NUM_SAMPLES = 3
UI_TIMEOUT_MS = 90_000  # the UI's first load compiles a large bundle; a loaded 2-core box is slow


def _playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[test]' (bash .ci/run installs it)")
    if not Path(CHROMIUM).is_file() and shutil.which("chromium") is None:
        pytest.skip(f"no chromium at {CHROMIUM}: apt-get install chromium (bash .ci/run installs it)")
    return sync_playwright


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MlflowServer, Workspace, str]]:
    """A tiny sweep with its final stage, tracked through a real server; yields it with the sweep's view URL."""
    _playwright()  # skip before minutes of training when the browser cannot run anyway
    root = tmp_path_factory.mktemp("ui")
    with MlflowServer(root / "server") as server:
        (root / "case").mkdir()
        ws = make_workspace(root / "case", tmp_path_factory, local_store=False)
        try:
            space = ws.space({"num_samples": NUM_SAMPLES})
            sweep = ws.run(
                [
                    "--space",
                    str(space),
                    "--tracking-uri",
                    server.uri,
                    "--num-cpus",
                    "2",
                    "--quiet",
                    "--set",
                    "epochs=2",
                    "finalize.max_test_images=4",
                    "finalize.export_size=97",
                ],
                timeout=900,
            )
        finally:
            ws.cleanup()
        assert sweep.proc.returncode == 0, sweep.describe()
        assert "Pickle or CloudPickle" not in sweep.stderr + sweep.stdout, "a pickled model was saved"
        found = re.search(r"^\s*(http://\S+viewStateShareKey=\S+)$", sweep.stdout, re.MULTILINE)
        assert found, f"the sweep printed no view URL:\n{sweep.stdout[-3000:]}"
        yield server, ws, found.group(1)


@pytest.fixture(scope="module")
def browser(finished_sweep: tuple[MlflowServer, Workspace, str]) -> Iterator[Any]:
    sync_playwright = _playwright()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nMLflow UI screenshots: {ARTIFACTS}")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium"),
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


def _new_tab(browser: Any) -> Any:
    """A tab in a fresh browser context: no local storage, i.e. a user's first visit."""
    tab = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
    tab.set_default_timeout(UI_TIMEOUT_MS)
    return tab


@pytest.fixture(scope="module")
def page(browser: Any) -> Any:
    return _new_tab(browser)


def _trials(finished_sweep: tuple[MlflowServer, Workspace, str]) -> list[Any]:
    server, _, _ = finished_sweep
    trials = sweep_runs(server.uri, EXPERIMENT).trials
    assert len(trials) == NUM_SAMPLES
    return trials


def _open(page: Any, url: str) -> None:
    """Open ``url`` and close what covers the page on a first visit (assistant panel, shared-view banner)."""
    page.goto(url)
    page.get_by_text("Run Name", exact=True).first.wait_for(state="visible")
    for label in ("Close", "Hide banner"):
        button = page.get_by_label(label, exact=True)
        if button.count():
            button.first.click()


def _cell(page: Any, run_id: str, column: str) -> str:
    """The text of one runs-table cell (the grid keys its rows by run id and its columns by name)."""
    cell = page.locator(f'[row-id="{run_id}"] [col-id="{column}"]').first
    cell.wait_for(state="visible")
    return cell.inner_text().strip()


def test_runs_page_shows_every_trial_with_its_parameters_and_metrics(finished_sweep, page) -> None:
    _, _, view = finished_sweep
    _open(page, view)
    # the model-training layout: its sidebar (Runs, Models) and the switch set to it, not GenAI's traces
    for item in ("Runs", "Models", "Model registry"):
        page.get_by_text(item, exact=True).first.wait_for(state="visible")
    for genai_item in ("Sessions", "Judges", "Playground"):
        assert page.get_by_text(genai_item, exact=True).count() == 0, f"the GenAI sidebar ({genai_item}) is shown"
    # the trials, the sweep's run and its final stage's run
    page.get_by_text(f"{NUM_SAMPLES + 2} matching runs").wait_for(state="visible")
    for run in _trials(finished_sweep):
        run_id = run.info.run_id
        name = _cell(page, run_id, "attributes.`Run Name`")  # the run's colour swatch, then its name
        assert name.split()[-1] == run.info.run_name, f"row {run_id} is named {name!r}"
        name = run.info.run_name
        best = _cell(page, run_id, "metrics.`best_val_loss`")
        assert float(best) == pytest.approx(run.data.metrics["best_val_loss"], rel=1e-9), name
        lr_head = _cell(page, run_id, "params.`lr_head`")
        assert lr_head == run.data.params["lr_head"], f"{name}: lr_head cell {lr_head!r}"
    page.screenshot(path=str(ARTIFACTS / "runs-table.png"))


def test_experiment_address_opens_the_model_training_view(finished_sweep, browser) -> None:
    """No saved-view link, first visit (fresh browser storage): the experiment's own address in the
    model-training workflow lands on the runs table with every trial and no GenAI sidebar.

    MLflow 3.17's UI takes the layout from a workflow switch it keeps per browser (GenAI on a first
    visit) or from ``workflowType`` in the address, not from the experiment's ``mlflow.experimentKind``
    tag, so a bare ``#/experiments/<id>`` opens the GenAI overview whatever the store says; the
    addresses the sweep prints all carry ``workflowType=machine_learning`` (docs/tracking.md, "Comparing a
    sweep in the MLflow UI").
    """
    server, _, _ = finished_sweep
    trials = _trials(finished_sweep)
    experiment_id = trials[0].info.experiment_id
    experiment = MlflowClient(server.uri).get_experiment(experiment_id)
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    tab = _new_tab(browser)
    try:
        tab.goto(f"{server.uri}/#/experiments/{experiment_id}?workflowType=machine_learning")
        tab.wait_for_url(re.compile(r".*/runs\?.*workflowType=machine_learning.*"))
        tab.get_by_text("Run Name", exact=True).first.wait_for(state="visible")
        for item in ("Runs", "Models"):
            tab.get_by_text(item, exact=True).first.wait_for(state="visible")
        for genai_item in ("Sessions", "Judges", "Playground"):
            assert tab.get_by_text(genai_item, exact=True).count() == 0, f"the GenAI sidebar ({genai_item}) is shown"
        for run in trials:
            tab.locator(f'[row-id="{run.info.run_id}"]').first.wait_for(state="visible")
        tab.screenshot(path=str(ARTIFACTS / "experiment-first-visit.png"))
    finally:
        tab.context.close()


def test_chart_view_compares_every_trial(finished_sweep, page) -> None:
    _, _, view = finished_sweep
    _open(page, view + "&compareRunsMode=CHART")
    for title in ("val_loss", "val_miou", "Parallel Coordinates", "lr_head vs. best_val_loss", "best_val_loss"):
        page.get_by_text(title, exact=True).first.wait_for(state="visible")
    # the first chart is the objective per epoch: a line (plotly draws a line and a marker trace) per trial
    chart = page.locator(".js-plotly-plot").first
    chart.wait_for(state="visible")
    traces = chart.locator(".scatterlayer .trace").count()
    assert traces >= NUM_SAMPLES, f"{traces} traces in the per-epoch chart for {NUM_SAMPLES} trials"
    page.screenshot(path=str(ARTIFACTS / "runs-charts.png"))


def test_model_page_shows_the_champion(finished_sweep, page) -> None:
    server, _, _ = finished_sweep
    page.goto(f"{server.uri}/#/models/hairseg?workflowType=machine_learning")
    page.get_by_text("Version 1", exact=True).first.wait_for(state="visible")
    page.get_by_text("@ champion").first.wait_for(state="visible")
    page.screenshot(path=str(ARTIFACTS / "model-champion.png"))
