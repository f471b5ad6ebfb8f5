"""Search-space and training-config validation: wrong input fails before Ray starts, clearly."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from hairseg_core.config import (
    BY_SEPARATOR,
    ConfigError,
    TrainConfig,
    load_search_space,
    load_train_config,
    sampled_settings,
)
from hairseg_core.search.space import SpaceSampler, build_searcher

SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


def _write(tmp_path: Path, data: dict, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _base() -> dict:
    return {
        "name": "t",
        "fixed": {"dataset": "synthetic", "epochs": 3},
        "params": {"lr_head": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    }


@pytest.mark.parametrize("path", sorted(SPACES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_spaces_validate(path: Path) -> None:
    space = load_search_space(path)
    assert space.num_samples >= 1
    assert space.params, "a shipped search space searches something"


def test_default_space_is_embedded_and_cpu_sized() -> None:
    space = load_search_space(SPACES / "default.yaml")
    assert space.fixed["dataset"] == "synthetic"
    assert space.fixed["pretrained"] == "none"
    assert space.resources.gpu == 0


def test_paper_space_covers_the_paper_study() -> None:
    space = load_search_space(SPACES / "paper.yaml")
    assert set(space.params["backbone"].choices) == {"resnet101", "mobilenet_v2", "xception", "drn_d_54"}
    assert set(space.params["mixup_alpha"].choices) == {0.0, 0.2, 0.4}
    assert space.epochs == 80
    assert {"rsc", "blur", "loss", "gc_weight", "lr_backbone", "lr_head", "weight_decay"} <= set(space.params)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["params"]["lr_head"].update(lowx=1), "params.lr_head.lowx: unknown key"),
        (lambda d: d.update(num_sample=3), "num_sample: unknown key"),
        (lambda d: d["params"].update(loss={"type": "categorical", "choices": []}), "'choices' is empty"),
        (lambda d: d["params"].update(lr_backbone={"type": "float", "low": 1, "high": 0.1}), "must be below"),
        (lambda d: d["params"].update(bogus={"type": "categorical", "choices": [1]}), "params.bogus: not a training"),
        (lambda d: d["fixed"].update(backbone="resnet9000"), "unknown backbone 'resnet9000'"),
        (lambda d: d["fixed"].update(batch_size="eight"), "batch_size"),
        (
            lambda d: d["params"].update(backbone={"type": "categorical", "choices": ["mobilenet_v2", "vgg"]}),
            "params.backbone: value 'vgg' is invalid",
        ),
        (lambda d: d.update(metric="val_accuracy"), "metric 'val_accuracy' is not reported"),
        (
            lambda d: d["params"].update(gc_weight={"type": "float", "low": 0.1, "high": 1, "when": {"loss": "ce"}}),
            "depends on 'loss'",
        ),
        (lambda d: d.update(scheduler={"max_t": 7}), "must equal fixed.epochs"),
        (lambda d: d["params"].update(epochs={"type": "int", "low": 1, "high": 5}), "epochs must be fixed"),
        (lambda d: d.update(resources={"cpu": 1, "gpu": 1.5}), "whole number"),
        (lambda d: d.update(finalize={"crf": {"iterations": 0}}), "DenseCRF.iterations must be >= 1"),
        (lambda d: d.update(finalize={"matting": {"method": "bayes"}}), "unknown matting method 'bayes'"),
        (
            lambda d: d["fixed"].update(dataset="folder", data_root="/data", dataset_options={"n_train": 5}),
            "dataset_options: n_train not an option of dataset 'folder'",
        ),
        (
            lambda d: d["params"].update(mixup_alpha={"type": "categorical", "choices": [0.2, 0.4]}),
            "params.mixup_alpha: has no effect, mixup is False in every trial",
        ),
        (
            lambda d: d["params"].update(
                loss={"type": "categorical", "choices": ["ce"]},
                focal_gamma={"type": "categorical", "choices": [1.0, 2.0]},
            ),
            "params.focal_gamma: has no effect, params.loss only takes ['ce']",
        ),
        (
            lambda d: d.update(searcher={"points_to_evaluate": [{"lr_backbone": 1e-3}]}),
            "searcher.points_to_evaluate[0].lr_backbone: not a searched parameter",
        ),
        (
            lambda d: d.update(searcher={"points_to_evaluate": [{"lr_head": 0.5}]}),
            "searcher.points_to_evaluate[0].lr_head: 0.5 is outside [0.0001, 0.01]",
        ),
        (
            lambda d: d.update(num_samples=1, searcher={"points_to_evaluate": [{"lr_head": 1e-3}, {"lr_head": 2e-3}]}),
            "searcher.points_to_evaluate: 2 points but num_samples is 1",
        ),
    ],
)
def test_invalid_space_names_file_and_key(tmp_path: Path, mutate, expected: str) -> None:
    data = _base()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_search_space(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_search_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("params: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_search_space(bad)


def test_backbone_dependent_choices_must_cover_every_backbone(tmp_path: Path) -> None:
    data = _base()
    data["params"]["backbone"] = {"type": "categorical", "choices": ["mobilenet_v2", "resnet50"]}
    data["params"]["batch_size"] = {"type": "categorical", "by": "backbone", "choices": {"mobilenet_v2": [8]}}
    with pytest.raises(ConfigError, match="no entry for backbone = \\['resnet50'\\]"):
        load_search_space(_write(tmp_path, data))


def test_sampler_respects_conditions_and_by(tmp_path: Path) -> None:
    data = _base()
    data["params"].update(
        {
            "backbone": {"type": "categorical", "choices": ["mobilenet_v2", "resnet50"]},
            "batch_size": {
                "type": "categorical",
                "by": "backbone",
                "choices": {"mobilenet_v2": [16, 32], "resnet50": [2, 4]},
            },
            "loss": {"type": "categorical", "choices": ["ce", "focal"]},
            "focal_gamma": {"type": "float", "low": 0.5, "high": 5, "when": {"loss": "focal"}},
        }
    )
    space = load_search_space(_write(tmp_path, data))
    sampler = SpaceSampler(space.params)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen_losses = set()
    for _ in range(30):
        trial = study.ask()
        constants = sampler(trial)
        config = {**trial.params, **constants}
        settings = sampled_settings(config)
        assert all(BY_SEPARATOR not in k for k in settings)
        allowed = {"mobilenet_v2": {16, 32}, "resnet50": {2, 4}}[settings["backbone"]]
        assert settings["batch_size"] in allowed
        assert ("focal_gamma" in settings) == (settings["loss"] == "focal")
        seen_losses.add(settings["loss"])
        cfg = space.trial_config(settings)
        assert isinstance(cfg, TrainConfig) and cfg.epochs == 3
        study.tell(trial, 0.5)
    assert seen_losses == {"ce", "focal"}


def test_train_config_file(tmp_path: Path) -> None:
    path = _write(tmp_path, {"backbone": "mobilenet_v2", "epochs": 2, "data_root": "rel/data"}, "train.yaml")
    cfg = load_train_config(path)
    assert cfg.epochs == 2 and Path(cfg.data_root).is_absolute()
    path = _write(tmp_path, {"backbone": "mobilenet_v2", "epoch": 2}, "typo.yaml")
    with pytest.raises(ConfigError, match="epoch: unknown key"):
        load_train_config(path)
    assert TrainConfig(mixup=False, mixup_alpha=0.4).effective_mixup_alpha == 0.0


def test_points_to_evaluate_are_the_first_trials(tmp_path: Path) -> None:
    """Real OptunaSearch: the start point is suggested first, exactly; later trials are sampled."""
    data = _base()
    data["params"]["loss"] = {"type": "categorical", "choices": ["ce", "focal"]}
    data["searcher"] = {"points_to_evaluate": [{"lr_head": 3e-3, "loss": "focal"}]}
    searcher = build_searcher(load_search_space(_write(tmp_path, data)))
    assert searcher.suggest("first") == {"lr_head": 3e-3, "loss": "focal"}
    second = searcher.suggest("second")
    assert second is not None and second["lr_head"] != 3e-3


def test_override_of_a_searched_setting_pins_it(tmp_path: Path) -> None:
    """``--set lr_head=0.002`` on a space that searches it: every trial at 0.002, start points follow."""
    data = _base()
    data["params"]["loss"] = {"type": "categorical", "choices": ["ce", "focal"]}
    data["searcher"] = {"points_to_evaluate": [{"lr_head": 3e-3, "loss": "focal"}, {"lr_head": 5e-3}]}
    space = load_search_space(_write(tmp_path, data), overrides={"fixed.lr_head": 0.002})
    assert space.fixed["lr_head"] == 0.002 and "lr_head" not in space.params
    assert space.searcher.points_to_evaluate == [{"loss": "focal"}]
    # a key that is only searched and not overridden stays an error when written twice in the file
    data["fixed"]["loss"] = "ce"
    with pytest.raises(ConfigError, match="params.loss: also set in 'fixed'"):
        load_search_space(_write(tmp_path, data))
