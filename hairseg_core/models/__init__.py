"""DeepLabv3+ model zoo: :func:`build_model` turns a config (backbone name, output stride, widths) into a
network, optionally with ImageNet backbone weights (fetched once into the torch hub cache, see
:mod:`.fetch`); :func:`param_groups` gives the
paper's two learning rates (backbone 1e-4, head 1e-3)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from hairseg_core.models.backbones import BACKBONES, PRETRAINED_SOURCES, SUPPORTED_OUTPUT_STRIDES, check_output_stride
from hairseg_core.models.deeplabv3plus import DEFAULT_ASPP_RATES, DeepLabV3Plus
from hairseg_core.models.fetch import ensure_imagenet_weights
from hairseg_core.models.weights import (
    LoadReport,
    PretrainedSource,
    WeightsMismatchError,
    WeightsNotFoundError,
    load_backbone_state,
    read_state_dict,
)

__all__ = [
    "BACKBONES",
    "DEFAULT_ASPP_RATES",
    "PRETRAINED_SOURCES",
    "SUPPORTED_OUTPUT_STRIDES",
    "DeepLabV3Plus",
    "LoadReport",
    "PretrainedSource",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "build_model",
    "load_pretrained_backbone",
    "param_groups",
    "resolve_pretrained",
]


def resolve_pretrained(
    backbone_name: str,
    pretrained: str | os.PathLike[str],
    weights_dir: str | os.PathLike[str] | None = None,
) -> Path | None:
    """Weights file for ``pretrained`` ("none" → None, "imagenet" → ImageNet file, else the path).

    "imagenet" uses a cached file, else fetches and verifies it on first use like torchvision (see
    :mod:`.fetch`; never with ``$HAIRSEG_OFFLINE`` set). Resolved before the network is built so a missing
    file fails in milliseconds, not after building it.
    """
    spec = os.fspath(pretrained)
    if spec.lower() == "none":
        return None
    if spec.lower() == "imagenet":
        return ensure_imagenet_weights(backbone_name, weights_dir=weights_dir)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"pretrained={spec!r} is neither 'none', 'imagenet' nor an existing weights file (.pth/.pt/.safetensors)"
        )
    return path


def load_pretrained_backbone(backbone: nn.Module, backbone_name: str, path: Path) -> LoadReport:
    """Load a weights file into ``backbone``, ignoring only the ImageNet classifier / non-backbone keys."""
    unused = PRETRAINED_SOURCES[backbone_name].unused_prefixes
    return load_backbone_state(backbone, read_state_dict(path), path, unused)


def build_model(
    backbone: str = "mobilenet_v2",
    output_stride: int = 16,
    num_classes: int = 2,
    pretrained: str | os.PathLike[str] = "none",
    aspp_channels: int = 256,
    decoder_channels: int = 256,
    weights_dir: str | os.PathLike[str] | None = None,
    aspp_rates: Sequence[int] | None = None,
) -> DeepLabV3Plus:
    """Build DeepLabv3+ with the named backbone.

    Args:
        backbone: a name in :data:`BACKBONES` (resnet50, resnet101, mobilenet_v2, mobilenet_v3_large,
            xception, drn_d_54).
        output_stride: 8 or 16; ASPP rates default to 12/24/36 resp. 6/12/18.
        pretrained: "none", "imagenet" (the torch hub cache, fetched on first use unless $HAIRSEG_OFFLINE;
            see :mod:`.fetch`) or a path to a backbone
            or full-model state dict (.pth/.pt/.safetensors).
        aspp_channels / decoder_channels: head widths; shrink them for a faster webcam model.
        aspp_rates: override of the three atrous rates.

    ``model.config`` holds every argument except the weights source, so ``build_model(**model.config)``
    recreates the architecture (e.g. before loading a trained checkpoint).
    """
    check_output_stride(output_stride)
    BACKBONES.get(backbone)  # unknown name → error listing the valid ones, before any file lookup
    weights_path = resolve_pretrained(backbone, pretrained, weights_dir)
    backbone_module = BACKBONES.build(backbone, output_stride=output_stride)
    config: dict[str, Any] = {
        "backbone": backbone,
        "output_stride": output_stride,
        "num_classes": num_classes,
        "aspp_channels": aspp_channels,
        "decoder_channels": decoder_channels,
        "aspp_rates": None if aspp_rates is None else [int(r) for r in aspp_rates],
    }
    if weights_path is not None:
        load_pretrained_backbone(backbone_module, backbone, weights_path)
    return DeepLabV3Plus(
        backbone_module,
        num_classes=num_classes,
        aspp_channels=aspp_channels,
        decoder_channels=decoder_channels,
        aspp_rates=aspp_rates,
        config=config,
    )


def param_groups(
    model: DeepLabV3Plus, lr_backbone: float, lr_head: float, weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: backbone at ``lr_backbone``, ASPP/decoder/classifier at ``lr_head``.

    The paper fine-tunes the pretrained backbone 10x slower (1e-4) than the new head (1e-3). Every
    parameter lands in exactly one group; frozen parameters are kept (optimizers skip params without grad).
    """
    groups = [
        {"name": "backbone", "params": list(model.backbone_parameters()), "lr": lr_backbone},
        {"name": "head", "params": list(model.head_parameters()), "lr": lr_head},
    ]
    for group in groups:
        group["weight_decay"] = weight_decay
    grouped = {id(p) for g in groups for p in g["params"]}
    stray = [name for name, p in model.named_parameters() if id(p) not in grouped]
    if stray:
        raise ValueError(f"parameters outside backbone and head would not be optimised: {stray[:8]}")
    return groups
