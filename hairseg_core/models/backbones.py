"""Backbones for DeepLabv3+: name → feature extractor returning ``(low_level, high_level)`` features.

Every backbone built from :data:`BACKBONES` is an ``nn.Module`` whose ``forward(x)`` returns the stride-4
low-level features (for the decoder's skip connection) and the high-level features at ``output_stride``
(8 or 16, reached by replacing the last strides with dilation, as DeepLab does), and which exposes
``low_level_channels``, ``high_level_channels`` and ``output_stride``.

Backbones keep the parameter names of the library they come from (torchvision, timm, fyu/drn) so that the
original ImageNet checkpoints load without renaming; :data:`PRETRAINED_SOURCES` records, per backbone,
which checkpoint file that is and which of its keys (the ImageNet classifier) are not used.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchvision import models as tvm

from hairseg_core.builders import Registry
from hairseg_core.models.drn import drn_d_54
from hairseg_core.models.weights import PretrainedSource

SUPPORTED_OUTPUT_STRIDES = (8, 16)

BACKBONES: Registry[nn.Module] = Registry("backbone")


def check_output_stride(output_stride: int) -> int:
    """DeepLabv3+ uses output stride 16 (fast) or 8 (denser, ~3x the backbone cost); nothing else fits."""
    if output_stride not in SUPPORTED_OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {SUPPORTED_OUTPUT_STRIDES} (DeepLabv3+), got {output_stride!r}")
    return output_stride


def _conv_out_channels(module: nn.Module) -> int:
    """Output channels of the last convolution in ``module`` (the block's projection)."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(module).__name__} has no Conv2d to read output channels from")
    return convs[-1].out_channels


# ----------------------------------------------------------------------------------------------- ResNet


class ResNetBackbone(nn.Module):
    """torchvision ResNet without avgpool/fc; ``layer1`` output (stride 4) is the low-level feature."""

    def __init__(self, net: tvm.ResNet, output_stride: int) -> None:
        super().__init__()
        # Same attribute names as torchvision, so ImageNet state dicts load as-is (minus fc.*).
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        self.output_stride = output_stride
        self.low_level_channels = _conv_out_channels(net.layer1)
        self.high_level_channels = _conv_out_channels(net.layer4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        x = self.layer4(self.layer3(self.layer2(low)))
        return low, x


def _resnet(factory: Callable[..., tvm.ResNet], output_stride: int) -> ResNetBackbone:
    check_output_stride(output_stride)
    # layer4 is always dilated (OS 16); layer3 too for OS 8 — the torchvision segmentation recipe.
    net = factory(weights=None, replace_stride_with_dilation=[False, output_stride == 8, True])
    return ResNetBackbone(net, output_stride)


@BACKBONES.register("resnet50")
def resnet50(output_stride: int = 16) -> ResNetBackbone:
    return _resnet(tvm.resnet50, output_stride)


@BACKBONES.register("resnet101")
def resnet101(output_stride: int = 16) -> ResNetBackbone:
    return _resnet(tvm.resnet101, output_stride)


# -------------------------------------------------------------------------------------------- MobileNet


def _set_dilation(conv: nn.Conv2d, dilation: int) -> None:
    conv.dilation = (dilation, dilation)
    conv.padding = tuple((k - 1) // 2 * dilation for k in conv.kernel_size)


def dilate_sequential(features: nn.Sequential, output_stride: int) -> None:
    """Turn the strides of ``features`` that would exceed ``output_stride`` into dilation, in place.

    Mirrors torchvision's ``replace_stride_with_dilation``: a block whose stride would overshoot keeps its
    current dilation on the (now unstrided) strided conv, and every later spatial conv gets the enlarged
    dilation, so the receptive field — and the meaning of the pretrained filters — is preserved.
    """
    stride, dilation = 1, 1
    for block in features:
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
        block_stride = max((c.stride[0] for c in convs), default=1)
        if block_stride > 1 and stride * block_stride > output_stride:
            for conv in convs:
                if conv.stride[0] > 1:
                    conv.stride = (1, 1)
                    _set_dilation(conv, dilation)
                elif conv.kernel_size[0] > 1:
                    _set_dilation(conv, dilation * block_stride)
            dilation *= block_stride
        else:
            stride *= block_stride
            if dilation > 1:
                for conv in convs:
                    if conv.kernel_size[0] > 1:
                        _set_dilation(conv, dilation)


class MobileNetBackbone(nn.Module):
    """torchvision MobileNet ``features`` split after block ``split`` (stride 4) into low/high features."""

    def __init__(self, features: nn.Sequential, split: int, output_stride: int) -> None:
        super().__init__()
        dilate_sequential(features, output_stride)
        self.features = features  # attribute name as in torchvision: keys are ``features.N.*``
        self.split = split
        self.output_stride = output_stride
        self.low_level_channels = _conv_out_channels(features[split - 1])
        self.high_level_channels = _conv_out_channels(features[-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = x
        for i, block in enumerate(self.features):
            x = block(x)
            if i == self.split - 1:
                low = x
        return low, x


@BACKBONES.register("mobilenet_v2")
def mobilenet_v2(output_stride: int = 16) -> MobileNetBackbone:
    """MobileNetV2 up to its 320-channel last bottleneck (features[0:18]).

    The final 1x1 conv to 1280 channels (features.18) is dropped, as in the DeepLabv3+ reference
    implementations (jfzhang95, VainF): it only widens features for the ImageNet classifier.
    """
    check_output_stride(output_stride)
    features = tvm.mobilenet_v2(weights=None).features
    del features[18]
    return MobileNetBackbone(features, split=4, output_stride=output_stride)


@BACKBONES.register("mobilenet_v3_large")
def mobilenet_v3_large(output_stride: int = 16) -> MobileNetBackbone:
    """MobileNetV3-Large features including the final 960-channel conv, as torchvision's DeepLabV3 uses."""
    check_output_stride(output_stride)
    features = tvm.mobilenet_v3_large(weights=None).features
    return MobileNetBackbone(features, split=4, output_stride=output_stride)


# --------------------------------------------------------------------------------------------- Xception


class XceptionBackbone(nn.Module):
    """timm's aligned Xception-65 (the DeepLabv3+ variant), without its classifier head.

    The low-level feature is DeepLab's: the input of the strided third separable conv of the second entry
    block (256 channels, stride 4). timm builds the network with ``output_stride`` (strides beyond it become
    dilation) and keeps its parameter names (``stem.*``, ``blocks.*``).
    """

    __constants__ = ["low_level_block", "tap_stack_len"]

    def __init__(self, net: nn.Module, output_stride: int) -> None:
        super().__init__()
        self.stem = net.stem
        self.blocks = net.blocks
        self.output_stride = output_stride
        taps = [f for f in net.feature_info if f["reduction"] == 4]
        if not taps or not taps[0]["module"].startswith("blocks."):
            raise ValueError(f"cannot locate the stride-4 Xception feature in feature_info {net.feature_info}")
        self.low_level_block = int(taps[0]["module"].split(".")[1])
        tap = self.blocks[self.low_level_block]
        if getattr(tap, "no_skip", True) or getattr(tap, "drop_path", None) is not None:
            raise ValueError("the Xception low-level block must be a residual block without drop path")
        self.tap_stack_len = len(tap.stack)
        self.low_level_channels = int(taps[0]["num_chs"])
        self.high_level_channels = int(net.num_features)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Written as one loop over ``blocks`` (no slicing) so that torch.jit.script compiles it.
        x = self.stem(x)
        low = x
        for i, block in enumerate(self.blocks):
            if i == self.low_level_block:
                # XceptionModule.forward, split to expose the input of its last (strided) separable conv.
                tap = x
                out = x
                for j, layer in enumerate(block.stack):
                    if j < self.tap_stack_len - 1:
                        tap = layer(tap)
                    else:
                        out = layer(tap)
                skip = x
                if block.shortcut is not None:
                    skip = block.shortcut(x)
                low = tap
                x = out + skip
            else:
                x = block(x)
        return low, x


@BACKBONES.register("xception")
def xception(output_stride: int = 16) -> XceptionBackbone:
    """Aligned Xception-65 (Chen et al. 2018) from timm; ``pretrained=False``: weights come via weights.py."""
    check_output_stride(output_stride)
    import timm  # deferred: timm only for the Xception backbone

    net = timm.create_model("xception65", pretrained=False, num_classes=0, output_stride=output_stride)
    return XceptionBackbone(net, output_stride)


# ------------------------------------------------------------------------------------------------- DRN


@BACKBONES.register("drn_d_54")
def drn_d_54_backbone(output_stride: int = 16) -> nn.Module:
    """DRN-D-54 (Yu et al. 2017), see :mod:`hairseg_core.models.drn`."""
    check_output_stride(output_stride)
    return drn_d_54(output_stride=output_stride)


# ------------------------------------------------------------------------------------- pretrained files


def _torchvision_source(
    weights_enum: type[tvm.WeightsEnum], unused_prefixes: tuple[str, ...], sha256: dict[str, str] | None = None
) -> PretrainedSource:
    """File names exactly as torchvision caches them; the enum's DEFAULT (newest recipe) is preferred."""
    ordered = [weights_enum.DEFAULT, *[w for w in weights_enum if w is not weights_enum.DEFAULT]]
    return PretrainedSource(
        file_names=tuple(w.url.rsplit("/", 1)[-1] for w in ordered),
        url=ordered[0].url,
        unused_prefixes=unused_prefixes,
        sha256=sha256 or {},
    )


# Full digests of files seen byte for byte (the file-name hash prefix is checked for every file regardless).
_MOBILENET_V2_SHA256 = {
    "mobilenet_v2-b0353104.pth": "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
}


PRETRAINED_SOURCES: dict[str, PretrainedSource] = {
    "resnet50": _torchvision_source(tvm.ResNet50_Weights, ("fc.",)),
    "resnet101": _torchvision_source(tvm.ResNet101_Weights, ("fc.",)),
    "mobilenet_v2": _torchvision_source(
        tvm.MobileNet_V2_Weights, ("classifier.", "features.18."), sha256=_MOBILENET_V2_SHA256
    ),
    "mobilenet_v3_large": _torchvision_source(tvm.MobileNet_V3_Large_Weights, ("classifier.",)),
    "xception": PretrainedSource(
        file_names=("xception65.ra3_in1k.safetensors", "xception65.ra3_in1k.pth"),
        url="https://huggingface.co/timm/xception65.ra3_in1k/resolve/main/model.safetensors",
        unused_prefixes=("head.",),
        hf_hub_id="timm/xception65.ra3_in1k",
        notes="save the downloaded model.safetensors as xception65.ra3_in1k.safetensors",
    ),
    "drn_d_54": PretrainedSource(
        file_names=("drn_d_54-0e0534ff.pth",),
        url="http://dl.yf.io/drn/drn_d_54-0e0534ff.pth",
        unused_prefixes=("fc.",),
    ),
}
