"""The final stage against a real sqlite MLflow store: Table 5, exports, registry promotion rules."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from sweep_helpers import tiny_train_config

from hairseg_core.config import FinalizeSettings, TrainConfig
from hairseg_core.data.splits import sample_dicts
from hairseg_core.deploy.inference import HairPredictor
from hairseg_core.evaluate import evaluate_predictor
from hairseg_core.final.promotion import champion_inference_scale, decide_promotion
from hairseg_core.final.stage import finalize
from hairseg_core.final.test_split import load_test_split
from hairseg_core.postprocess.pipeline import TABLE5_VARIANTS
from hairseg_core.scaling import attach_train_scale, model_train_scale
from hairseg_core.track.registry import resolve_model_uri
from hairseg_core.track.runs import Tracker
from hairseg_core.train.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _config(tmp_path: Path, **overrides) -> TrainConfig:
    return tiny_train_config(tmp_path, **{"epochs": 1, "max_steps_per_epoch": 1, **overrides})


def _checkpoint(tmp_path: Path, name: str, hair_bias: float, cfg: TrainConfig | None = None) -> Path:
    """A real checkpoint whose classifier bias makes it predict all background (<0) or all hair (>0)."""
    trainer = Trainer(cfg or _config(tmp_path))
    with torch.no_grad():
        trainer.model.classifier.weight.zero_()
        trainer.model.classifier.bias.copy_(torch.tensor([0.0, hair_bias]))
    return trainer.save_checkpoint(tmp_path / name / "checkpoint.pt")


@pytest.fixture()
def tracker(tmp_path: Path) -> Tracker:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    return Tracker(uri, "finalize-test", artifact_location=(tmp_path / "artifacts").as_uri())


def _settings(tmp_path: Path, **overrides) -> FinalizeSettings:
    # 81, not the tiny config's base_size 65, so an export at the trained scale is told apart
    return FinalizeSettings(export_dir=str(tmp_path / "exports"), export_size=81, **overrides)


def test_decide_promotion_rules() -> None:
    assert decide_promotion(0.5, None, 0.0)[0]
    assert decide_promotion(0.61, 0.60, 0.005)[0]
    promote, reason = decide_promotion(0.602, 0.60, 0.005)
    assert not promote and "champion kept" in reason
    assert not decide_promotion(0.60, 0.60, 0.0)[0]  # a tie keeps the champion


def test_champion_scale_from_tag_then_module_then_native() -> None:
    tagged = SimpleNamespace(tags={"hairseg.inference_scale": "193"})
    untagged = SimpleNamespace(tags={})
    assert champion_inference_scale(tagged, torch.nn.Identity()) == 193
    assert champion_inference_scale(untagged, attach_train_scale(torch.nn.Identity(), 129)) == 129
    assert champion_inference_scale(untagged, torch.nn.Identity()) is None  # registered before: native


def test_promotion_first_better_worse_and_champion_loads_back(
    tmp_path: Path, tracker: Tracker, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real checkpoints whose quality is known by construction: all-hair (mIoU ~0.1) < all-background (~0.4)."""
    cfg = _config(tmp_path)
    settings = _settings(tmp_path)
    all_hair = _checkpoint(tmp_path, "hair", hair_bias=5.0)
    all_background = _checkpoint(tmp_path, "bg", hair_bias=-5.0)

    # 1. the first model becomes champion
    first = finalize(all_hair, cfg, settings, tracker, parent_run_id=None, sweep="s1", progress=False)
    assert first.decision["promote"] and first.model_version == "1"
    # the network ran at the trained scale (base_size 65) and says so; the export used the explicit size
    assert first.inference_scale == first.decision["inference_scale"] == cfg.base_size == 65
    assert "Table 5), network at 65 px, metrics at native size" in capsys.readouterr().out
    meta = json.loads((tmp_path / "exports" / "s1" / "model.json").read_text())
    assert (meta["input"]["size"], meta["input"]["train_scale"]) == (81, 65)
    run = tracker.client.get_run(first.finalize_run_id)
    assert run.data.tags["hairseg.inference_scale"] == "65" and run.data.params["inference_scale"] == "65"
    assert str(tracker.champion("hairseg").version) == "1"
    # Table 5: four variants with every metric and a time per image; exports on disk
    assert [row["method"] for row in first.table] == list(TABLE5_VARIANTS)
    for row in first.table:
        assert set(row) >= {"acc", "acc_class", "miou", "fwiou", "boundary_f", "ms_per_image"}
        assert row["ms_per_image"] > 0
        assert row["miou_lo"] <= row["miou"] <= row["miou_hi"]  # Table 5's bootstrap interval
    assert first.decision["bootstrap"] is None  # nothing to compare the first model with
    assert {"model.onnx", "model.ts", "model.json"} <= {p.name for p in (tmp_path / "exports" / "s1").iterdir()}
    assert first.export["parity_image"] == "sample_image"  # parity measured on a real test image

    # 2. a better model takes the alias; the old champion was re-evaluated on the same images
    second = finalize(all_background, cfg, settings, tracker, None, sweep="s2", progress=False)
    assert second.decision["promote"], second.decision
    assert second.decision["champion_score"] == pytest.approx(first.table[0]["miou"])
    assert second.decision["champion_inference_scale"] == 65  # from the champion's version tag
    assert second.table[0]["miou"] > first.table[0]["miou"] + 0.2
    assert str(tracker.champion("hairseg").version) == second.model_version == "2"
    # promoted on the paired bootstrap interval, which is recorded on the version and the run
    boot = second.decision["bootstrap"]
    assert boot["lo"] > 0.2 and boot["resamples"] == 2000 and boot["confidence"] == 0.95
    assert boot["n_images"] == len(load_test_split(cfg, "test", None))
    tags = tracker.client.get_model_version("hairseg", "2").tags
    assert float(tags["hairseg.promotion.ci_lo"]) == pytest.approx(boot["lo"], abs=1e-6)
    assert tags["hairseg.promotion.resamples"] == "2000" and tags["hairseg.promotion.confidence"] == "0.95"
    final_run = tracker.client.get_run(second.finalize_run_id)
    assert final_run.data.metrics["promotion_ci_hi"] == pytest.approx(boot["hi"])
    assert final_run.data.params["bootstrap_resamples"] == "2000"
    assert final_run.data.tags["hairseg.promotion.images"] == str(boot["n_images"])
    assert "95% CI [" in second.decision["reason"]

    # 3. a worse model is registered but does not move the alias; with no export_size (what
    # FinalizeSettings(export_size=None) means) the webcam export is made at the trained scale
    no_size = settings.model_copy(update={"export_size": None})
    third = finalize(all_hair, cfg, no_size, tracker, None, sweep="s3", progress=False)
    assert third.model_version == "3" and not third.decision["promote"]
    assert third.export["input_size"] == 65
    meta = json.loads((tmp_path / "exports" / "s3" / "model.json").read_text())
    assert (meta["input"]["size"], meta["input"]["train_scale"]) == (65, 65)
    assert "champion kept" in third.decision["reason"]
    assert third.decision["bootstrap"]["hi"] < 0  # clearly worse on every resample
    assert str(tracker.champion("hairseg").version) == "2"

    # 4. dry run: decision shown, registry untouched
    fourth = finalize(
        all_background,
        cfg,
        settings.model_copy(update={"promote_margin": -0.5}),
        tracker,
        None,
        sweep="s4",
        dry_run=True,
        progress=False,
    )
    assert fourth.model_version is None and fourth.decision["dry_run"] and fourth.decision["promote"]
    assert len(tracker.client.search_model_versions("name='hairseg'")) == 3
    assert str(tracker.champion("hairseg").version) == "2"

    # models:/hairseg@champion loads back as the DeepLab module and reproduces the metrics
    model = tracker.load_model("models:/hairseg@champion")
    assert type(model).__name__ == "DeepLabV3Plus"
    assert model_train_scale(model) == 65  # the scale travels in the registered state-dict checkpoint
    test = load_test_split(cfg, "test", None)
    dataset = sample_dicts(test)
    again = evaluate_predictor(HairPredictor.from_model(model), dataset)
    assert again["miou"] == pytest.approx(second.table[0]["miou"], abs=1e-9)
    version = tracker.client.get_model_version("hairseg", "2")
    assert float(version.tags["test_miou"]) == pytest.approx(second.table[0]["miou"], abs=1e-6)
    assert version.tags["hairseg.sweep"] == "s2"
    assert version.tags["hairseg.inference_scale"] == "65"

    # the exports behind the champion can be fetched by URI (what the webcam app does)
    local = resolve_model_uri("models:/hairseg@champion", tracking_uri=tracker.tracking_uri)
    meta = json.loads((local / "model.json").read_text())
    assert meta and (local / "model.onnx").is_file()

    # 5. the same (sweep, checkpoint) once more: found by its tags, nothing registered, the alias not moved,
    # the decision printed again with its interval
    capsys.readouterr()
    again = finalize(all_background, cfg, settings, tracker, None, sweep="s2", progress=False)
    out = capsys.readouterr().out
    assert again.model_version == "2" and again.decision["promote"]
    assert len(tracker.client.search_model_versions("name='hairseg'")) == 3
    assert str(tracker.champion("hairseg").version) == "2"
    assert "was done before" in out and "promotion decision (recorded on the model version): promote" in out
    assert "95% CI [" in out, out
    assert "final stage:" not in out, "nothing evaluated again"


def test_final_stage_record_continues_after_each_step(tmp_path: Path, tracker: Tracker) -> None:
    """A record in the sweep's folder: each step is recorded once; a repeat reads the record and changes nothing."""
    from hairseg_core.final.record import FinalRecord, checkpoint_digest

    cfg = _config(tmp_path)
    settings = _settings(tmp_path)
    ckpt = _checkpoint(tmp_path, "bg", hair_bias=-5.0)
    folder = tmp_path / "ray_results" / "sweep-r"
    record = FinalRecord.in_folder(str(folder), checkpoint_digest(ckpt))
    parent = tracker.start_sweep("sweep-r", {"name": "t", "num_samples": 1, "params": {}})
    first = finalize(ckpt, cfg, settings, tracker, parent, sweep="sweep-r", progress=False, record=record)
    stored = json.loads((folder / "hairseg_final.json").read_text())[record.digest]["steps"]
    assert list(stored) == [
        "table5", "decision", "export", "finalize_run", "logged", "registration", "promotion", "finished"
    ]  # fmt: skip
    assert stored["registration"]["version"] == first.model_version == "1"
    assert not list((tmp_path / "exports").glob(".*")), "no temporary export folder left behind"
    version = tracker.client.get_model_version("hairseg", "1")
    assert version.tags["hairseg.checkpoint_digest"] == record.digest
    assert json.loads(version.tags["hairseg.decision"])["promote"] is True
    assert tracker.client.get_run(first.finalize_run_id).info.status == "FINISHED"

    # a repeat, and a repeat after the record lost its last steps (a kill right after registration)
    reread = FinalRecord(record.uri, record.digest)
    again = finalize(ckpt, cfg, settings, tracker, parent, "sweep-r", progress=False, record=reread)
    assert again.model_version == "1" and again.table == first.table
    cut = FinalRecord(record.uri, record.digest)
    for step in ("promotion", "finished"):
        cut.steps.pop(step)
    third = finalize(ckpt, cfg, settings, tracker, parent, "sweep-r", progress=False, record=cut)
    assert third.model_version == "1"
    assert [str(v.version) for v in tracker.client.search_model_versions("name='hairseg'")] == ["1"]
    assert str(tracker.champion("hairseg").version) == "1"
    finals = tracker.client.search_runs([tracker.experiment_id], "tags.`hairseg.kind` = 'finalize'")
    assert [r.info.status for r in finals] == ["FINISHED"]
