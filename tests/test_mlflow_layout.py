"""What MLflow's UI reads, written by ``Tracker`` into a real sqlite store (no server, no Ray).

The browser test (``test_mlflow_ui.py``) proves the UI shows a sweep the way users compare one; these
tests pin, in seconds, the records that layout rests on: the experiment kind tag, top-level trial runs
with descriptions and dataset inputs, best-epoch metrics, the saved view, and a registry version that
loads without unpickling anything.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hairseg_core.artifact import normalize_image
from hairseg_core.config import TrainConfig
from hairseg_core.data.fingerprint import fingerprint_config
from hairseg_core.final.export import export_all, synthetic_portrait
from hairseg_core.models import build_model
from hairseg_core.scaling import attach_train_scale, model_train_scale
from hairseg_core.track.runs import Tracker
from hairseg_core.track.tags import EXPERIMENT_KIND, TAG_EXPERIMENT_KIND, TAG_NOTE, VIEW_TAG_PREFIX
from hairseg_core.track.view import sweep_view_state, view_key, view_url

SPACE = {
    "name": "tiny",
    "num_samples": 2,
    "metric": "val_loss",
    "mode": "min",
    "params": {
        "lr_head": {"type": "float", "low": 1e-5, "high": 0.05, "log": True},
        "backbone": {"type": "categorical", "choices": ["mobilenet_v2", "resnet50"]},
    },
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sqlite store for the module: creating MLflow's schema takes seconds, an experiment does not."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def tracker(store: Path, request: pytest.FixtureRequest) -> Tracker:
    """A Tracker in an experiment of the test's own."""
    return Tracker(f"sqlite:///{store / 'mlruns.db'}", request.node.name, artifact_location=(store / "art").as_uri())


def _folder_data(root: Path, n: int = 3) -> Path:
    import cv2

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(root / split / "images" / f"p{i}.png"), rng.integers(0, 256, (32, 32, 3), np.uint8))
            cv2.imwrite(str(root / split / "masks" / f"p{i}.png"), np.where(rng.random((32, 32)) > 0.5, 255, 0))
    return root


def test_experiment_opens_in_the_model_training_view(tracker: Tracker) -> None:
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND == "custom_model_development"
    # an experiment made before the tag existed gets it the first time a Tracker opens it
    old = tracker.client.create_experiment("made-by-an-older-version")
    assert TAG_EXPERIMENT_KIND not in tracker.client.get_experiment(old).tags
    Tracker(tracker.tracking_uri, "made-by-an-older-version").experiment_id  # noqa: B018 - opens it
    assert tracker.client.get_experiment(old).tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND


def test_trial_runs_are_top_level_with_description_source_and_datasets(tracker: Tracker, tmp_path: Path) -> None:
    root = _folder_data(tmp_path / "data")
    cfg = TrainConfig(dataset="folder", data_root=str(root))
    fingerprints = fingerprint_config(cfg)
    parent = tracker.start_sweep("sweep-x", SPACE)
    tracker.log_datasets(parent, fingerprints)
    trial = tracker.start_trial(
        "sweep-x", parent, "t1", "trial_t1", {"lr_head": 0.01}, sampled={"lr_head": 0.01}, datasets=fingerprints
    )
    run = tracker.client.get_run(trial)
    tags = run.data.tags
    assert "mlflow.parentRunId" not in tags and tags["hairseg.parent_run_id"] == parent
    assert tags[TAG_NOTE] == "Trial t1 of sweep **sweep-x**: lr_head=0.01."
    assert tags["mlflow.source.name"] == "pipelines/sweep.py"
    assert len(tags["mlflow.source.git.commit"]) == 40  # this checkout's commit
    assert "sweep-x" in tracker.client.get_run(parent).data.tags[TAG_NOTE]
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "data" and inp.dataset.digest == fingerprints[0].digest[:36]
    assert json.loads(inp.dataset.source) == {"uri": str(root.resolve())}
    assert json.loads(inp.dataset.profile) == {"dataset": "folder", "num_train": 3, "num_val": 3}
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "training"}
    # a trial fed the driver's shared data gets the sweep run's inputs
    other = tracker.start_trial("sweep-x", parent, "t2", "trial_t2", {})
    tracker.copy_datasets(parent, other)
    assert [i.dataset.digest for i in tracker.client.get_run(other).inputs.dataset_inputs] == [inp.dataset.digest]


def test_fingerprint_follows_the_file_list(tmp_path: Path) -> None:
    root = _folder_data(tmp_path / "data")
    cfg = TrainConfig(dataset="folder", data_root=str(root))
    first = fingerprint_config(cfg)[0]
    assert first.root == str(root.resolve()) and first.counts == {"train": 3, "val": 3}
    assert fingerprint_config(cfg)[0].digest == first.digest, "the same files give the same digest"
    image = root / "train" / "images" / "p1.png"
    image.write_bytes(image.read_bytes() + b"\0")  # one more byte
    grown = fingerprint_config(cfg)[0].digest
    image.rename(image.with_name("p9.png"))
    (root / "train" / "masks" / "p1.png").rename(root / "train" / "masks" / "p9.png")
    renamed = fingerprint_config(cfg)[0].digest
    assert len({first.digest, grown, renamed}) == 3


def test_best_metrics_are_the_best_epoch_of_each(tracker: Tracker) -> None:
    parent = tracker.start_sweep("sweep-b", SPACE)
    run_id = tracker.start_trial("sweep-b", parent, "t1", "trial_t1", {})
    for epoch, (miou, loss) in enumerate([(0.5, 0.9), (0.7, 0.4), (0.6, 0.5)], start=1):
        tracker.log_metrics(run_id, {"val_miou": miou, "val_loss": loss, "train_loss": 1.0 / epoch}, step=epoch)
    best = tracker.log_best_metrics(run_id)
    assert best == {"best_val_miou": 0.7, "best_val_loss": 0.4}
    metrics = tracker.client.get_run(run_id).data.metrics
    assert metrics["best_val_miou"] == 0.7 and metrics["val_miou"] == 0.6  # last value stays the metric
    assert [m.step for m in tracker.client.get_metric_history(run_id, "best_val_loss")] == [3]


def test_saved_view_compares_the_sweeps_trials(tracker: Tracker) -> None:
    key = tracker.save_sweep_view("hairseg-tiny-20260101-000000", SPACE)
    assert key == view_key("hairseg-tiny-20260101-000000") == "hairseg-tiny-20260101-000000"
    envelope = json.loads(tracker.client.get_experiment(tracker.experiment_id).tags[VIEW_TAG_PREFIX + key])
    assert envelope["name"] == "sweep hairseg-tiny-20260101-000000" and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])
    assert state == json.loads(sweep_view_state("hairseg-tiny-20260101-000000", SPACE))
    assert state["searchFilter"] == "tags.`hairseg.sweep` = 'hairseg-tiny-20260101-000000'"
    assert state["orderByKey"] == "metrics.`best_val_loss`" and state["orderByAsc"] is True  # mode: min
    assert {"params.`lr_head`", "params.`backbone`", "metrics.`best_val_loss`", "metrics.`val_miou`"} <= set(
        state["selectedColumns"]
    )
    charts = {c["type"]: c for c in state["compareRunCharts"]}
    assert {c["metricKey"] for c in state["compareRunCharts"] if c["type"] == "LINE"} == {"val_loss", "val_miou"}
    assert charts["PARALLEL"]["selectedParams"] == ["lr_head", "backbone"]
    assert charts["PARALLEL"]["selectedMetrics"] == ["best_val_loss"]
    assert charts["SCATTER"]["xaxis"] == {"key": "lr_head", "type": "PARAM"}  # the numeric parameter
    section = state["compareRunSections"][0]["uuid"]
    assert {c["metricSectionId"] for c in state["compareRunCharts"]} == {section}
    assert view_key("my sweep/1") == "my-sweep-1"
    assert view_url("http://h:5000/", "3", key, charts=True) == (
        f"http://h:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey={key}&compareRunsMode=CHART"
    )


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = build_model(backbone="mobilenet_v2", pretrained="none", aspp_channels=16, decoder_channels=16)
    out = tmp_path_factory.mktemp("export")
    export_all(attach_train_scale(net.eval(), 65), out, input_size=65, latency_repeats=1)
    return out


def test_registered_model_is_onnx_and_loads_without_pickle(
    tracker: Tracker, export_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import mlflow.pyfunc
    from mlflow.models import Model

    run_id = tracker.start_finalize("s1", None, {})
    with caplog.at_level(logging.WARNING):
        version = tracker.register_model(run_id, export_dir, "hairseg-test", {"hairseg.export_run_id": run_id})
    assert version == "1"
    # logged through the client: no `with mlflow.start_run(run_id=...)` whose exit would end the run
    assert tracker.client.get_run(run_id).info.status == "RUNNING", "register_model ended the final-stage run"
    assert not [r for r in caplog.records if "pickle" in r.getMessage().lower()], caplog.text

    uri = "models:/hairseg-test/1"
    local = Path(
        mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "dl"), tracking_uri=tracker.tracking_uri)
    )
    mlmodel = Model.load(str(local / "MLmodel"))
    assert set(mlmodel.flavors) == {"onnx", "python_function"}, "no pytorch (pickle) flavor"
    assert {p.name for p in (local / "extra_files").iterdir()} == {"model.pt", "model.json"}
    assert not list(local.rglob("*.pkl")), "nothing pickled in the model"
    signature = mlmodel.signature.to_dict()
    assert '"shape": [-1, 3, -1, -1]' in signature["inputs"]
    assert mlmodel.saved_input_example_info is not None

    # the torch module back from the state-dict checkpoint, with its trained scale
    model = tracker.load_model(uri)
    assert type(model).__name__ == "DeepLabV3Plus" and model_train_scale(model) == 65
    reference = _checkpoint_model(export_dir)
    x = normalize_image(synthetic_portrait(65, 81))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    # and pyfunc serves the ONNX graph: softmax probabilities of any size
    probs = mlflow.pyfunc.load_model(uri).predict({"input": x.numpy()})
    probs = next(iter(probs.values())) if isinstance(probs, dict) else np.asarray(probs)
    assert probs.shape == (1, 2, 65, 81)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    with torch.no_grad():
        np.testing.assert_allclose(probs, torch.softmax(reference(x), 1).numpy(), atol=1e-4)


def _checkpoint_model(export_dir: Path) -> nn.Module:
    from hairseg_core.artifact import load_model

    return load_model(export_dir / "model.pt", "eager")


def test_default_search_space_gives_a_view() -> None:
    """The view is built from ``SearchSpace.model_dump()``, as the sweep passes it."""
    from hairseg_core.config import load_search_space

    space = load_search_space(Path(__file__).resolve().parent.parent / "search_spaces" / "default.yaml")
    state = json.loads(sweep_view_state("s", space.model_dump()))
    parallel = next(c for c in state["compareRunCharts"] if c["type"] == "PARALLEL")
    assert parallel["selectedParams"] == list(space.params)[:8]
    assert all(f"params.`{k}`" in state["selectedColumns"] for k in space.params)
    assert state["orderByKey"] == f"metrics.`best_{space.metric}`"
