"""DeepLabv3+ model zoo: shapes for every backbone, output-stride handling, parameter groups, and offline
pretrained loading (explicit files, $HAIRSEG_WEIGHTS_DIR, torch hub cache, clear errors)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from hairseg_core.builders import UnknownNameError
from hairseg_core.models import (
    BACKBONES,
    DEFAULT_ASPP_RATES,
    PRETRAINED_SOURCES,
    DeepLabV3Plus,
    WeightsMismatchError,
    WeightsNotFoundError,
    build_model,
    param_groups,
)

ALL_BACKBONES = ["resnet50", "resnet101", "mobilenet_v2", "mobilenet_v3_large", "xception", "drn_d_54"]


@pytest.fixture
def offline_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every weights location at an empty temp dir so the host's caches cannot leak into a test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("HAIRSEG_WEIGHTS_DIR", raising=False)
    return tmp_path


def _assert_backbone_equals(model: DeepLabV3Plus, state: dict[str, torch.Tensor]) -> None:
    own = model.backbone.state_dict()
    for key, value in own.items():
        assert key in state, key
        assert torch.equal(value, state[key]), f"{key} was not loaded from the file"


def test_registry_lists_all_backbones_with_pretrained_sources() -> None:
    assert BACKBONES.names() == sorted(ALL_BACKBONES)
    assert set(PRETRAINED_SOURCES) == set(ALL_BACKBONES)


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("backbone", ALL_BACKBONES)
def test_every_backbone_maps_257px_batch_to_full_size_logits(backbone: str, output_stride: int) -> None:
    torch.manual_seed(0)
    model = build_model(backbone, output_stride=output_stride, num_classes=2).eval()
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    model.backbone.register_forward_hook(lambda _m, _i, out: captured.__setitem__("feats", out))
    x = torch.randn(2, 3, 257, 257)
    with torch.no_grad():
        logits = model(x)

    assert logits.shape == (2, 2, 257, 257)
    assert torch.isfinite(logits).all()
    low, high = captured["feats"]
    # 257 → 129 → 65 (stride 4) → 33 (8) → 17 (16): DeepLab's "valid" feature sizes for odd inputs.
    assert low.shape == (2, model.backbone.low_level_channels, 65, 65)
    side = math.ceil(257 / output_stride)
    assert high.shape == (2, model.backbone.high_level_channels, side, side)
    rates = [branch[0].dilation[0] for branch in model.aspp.branches[1:-1]]
    assert rates == list(DEFAULT_ASPP_RATES[output_stride])


@pytest.mark.parametrize("output_stride", [4, 32, 0])
def test_invalid_output_stride_is_rejected(output_stride: int) -> None:
    with pytest.raises(ValueError, match="output_stride must be one of"):
        build_model("mobilenet_v2", output_stride=output_stride)
    with pytest.raises(ValueError, match="output_stride"):
        BACKBONES.build("drn_d_54", output_stride=output_stride)


def test_unknown_backbone_error_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as excinfo:
        build_model("vgg16")
    message = str(excinfo.value)
    assert "'vgg16'" in message
    for name in ALL_BACKBONES:
        assert name in message


def test_batch_of_one_trains_in_train_mode_with_odd_size() -> None:
    """Global pooling leaves one value per channel; the pooling branch must not break on B=1 in train()."""
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", output_stride=16).train()
    logits = model(torch.randn(1, 3, 97, 131))
    assert logits.shape == (1, 2, 97, 131)
    logits.logsumexp(dim=1).mean().backward()
    assert model.aspp.branches[-1].conv.weight.grad is not None
    assert model.classifier.weight.grad is not None
    assert next(model.backbone_parameters()).grad is not None


def test_webcam_widths_and_rate_override() -> None:
    model = build_model("mobilenet_v2", aspp_channels=64, decoder_channels=32, aspp_rates=(3, 6, 9))
    assert [b[0].dilation[0] for b in model.aspp.branches[1:-1]] == [3, 6, 9]
    assert model.aspp.project[0].out_channels == 64
    assert model.decoder.low_level_proj[0].out_channels == 48
    assert model.classifier.in_channels == 32
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 64, 80)).shape == (1, 2, 64, 80)


def test_config_rebuilds_the_same_architecture() -> None:
    model = build_model("mobilenet_v3_large", output_stride=8, num_classes=3, aspp_channels=96, aspp_rates=[2, 4, 6])
    assert model.config == {
        "backbone": "mobilenet_v3_large",
        "output_stride": 8,
        "num_classes": 3,
        "aspp_channels": 96,
        "decoder_channels": 256,
        "aspp_rates": [2, 4, 6],
    }
    rebuilt = build_model(**model.config)
    rebuilt.load_state_dict(model.state_dict())  # strict: identical parameter names and shapes
    assert rebuilt.config == model.config


def test_param_groups_cover_every_parameter_once_with_paper_lrs() -> None:
    model = build_model("mobilenet_v2")
    groups = param_groups(model, lr_backbone=1e-4, lr_head=1e-3, weight_decay=5e-4)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("backbone", 1e-4, 5e-4),
        ("head", 1e-3, 5e-4),
    ]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.backbone.parameters()}
    head = [*model.aspp.parameters(), *model.decoder.parameters(), *model.classifier.parameters()]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in head}

    optimizer = torch.optim.Adam(groups)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 1e-3]


def test_imagenet_without_local_file_names_file_dirs_url_and_fallback(offline_caches: Path) -> None:
    empty = offline_caches / "weights"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError) as excinfo:
        build_model("resnet101", pretrained="imagenet", weights_dir=empty)
    message = str(excinfo.value)
    assert "resnet101-cd907fc2.pth" in message
    assert str(empty) in message
    assert str(offline_caches / "torch_home" / "hub" / "checkpoints") in message
    assert "https://download.pytorch.org/models/resnet101-cd907fc2.pth" in message
    assert "pretrained: none" in message


def test_missing_explicit_weights_path_is_reported(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="nope.pth"):
        build_model("mobilenet_v2", pretrained=str(tmp_path / "nope.pth"))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_backbone_weights_load_from_a_local_file(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(1)
    source = build_model("mobilenet_v2")
    state = {k: v.clone() for k, v in source.backbone.state_dict().items()}
    path = tmp_path / f"backbone{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)

    torch.manual_seed(2)  # a different random init, so equality below can only come from the file
    model = build_model("mobilenet_v2", pretrained=str(path))
    _assert_backbone_equals(model, state)


def test_full_model_checkpoint_loads_its_backbone_and_ignores_the_head(tmp_path: Path) -> None:
    torch.manual_seed(3)
    trained = build_model("mobilenet_v2", num_classes=5)
    path = tmp_path / "trial.pt"
    torch.save({"epoch": 3, "model": trained.state_dict()}, path)
    model = build_model("mobilenet_v2", num_classes=2, pretrained=path)  # head shape differs: fine
    _assert_backbone_equals(model, {k[len("backbone.") :]: v for k, v in trained.state_dict().items()})


def test_torch_hub_cache_is_searched_with_torchvision_file_names(offline_caches: Path) -> None:
    """A real torchvision ImageNet-format state dict (classifier + last 1x1 conv included) in the hub cache."""
    torch.manual_seed(4)
    imagenet_state = torchvision.models.mobilenet_v2(weights=None).state_dict()
    checkpoints = offline_caches / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(imagenet_state, checkpoints / "mobilenet_v2-7ebf99e0.pth")

    model = build_model("mobilenet_v2", pretrained="imagenet")
    _assert_backbone_equals(model, imagenet_state)


def test_env_weights_dir_is_searched(offline_caches: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = offline_caches / "env_weights"
    weights.mkdir()
    torch.manual_seed(5)
    imagenet_state = torchvision.models.mobilenet_v3_large(weights=None).state_dict()
    torch.save(imagenet_state, weights / PRETRAINED_SOURCES["mobilenet_v3_large"].file_names[0])
    monkeypatch.setenv("HAIRSEG_WEIGHTS_DIR", str(weights))
    model = build_model("mobilenet_v3_large", output_stride=8, pretrained="imagenet")
    _assert_backbone_equals(model, imagenet_state)


def test_backbone_key_mismatches_are_errors_naming_the_keys(tmp_path: Path) -> None:
    state = dict(build_model("mobilenet_v2").backbone.state_dict())
    state.pop("features.3.conv.2.weight")
    state["features.99.weight"] = torch.zeros(1)
    state["features.0.0.weight"] = torch.zeros(8, 3, 3, 3)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(WeightsMismatchError) as excinfo:
        build_model("mobilenet_v2", pretrained=path)
    message = str(excinfo.value)
    assert "broken.pth" in message
    assert "features.3.conv.2.weight" in message
    assert "features.99.weight" in message
    assert "features.0.0.weight: file (8, 3, 3, 3) vs model (32, 3, 3, 3)" in message


def test_weights_files_are_read_with_weights_only(tmp_path: Path) -> None:
    """A pickle that would construct arbitrary objects is refused instead of executed."""
    path = tmp_path / "unsafe.pth"
    torch.save({"model": nn.Linear(2, 2)}, path)  # a whole module, not a state dict
    with pytest.raises(WeightsMismatchError, match="weights_only=True"):
        build_model("mobilenet_v2", pretrained=path)
