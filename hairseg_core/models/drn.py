"""Dilated Residual Networks, type D (Yu, Koltun & Funkhouser, "Dilated Residual Networks", CVPR 2017).

Follows the reference implementation (github.com/fyu/drn, drn.py) layer for layer and keeps its parameter
names (``layer0`` ... ``layer8``), so the published ImageNet checkpoints (e.g. ``drn_d_54-0e0534ff.pth``)
load directly; only their ``fc.*`` classifier is left unused.

DRN-D is natively an output-stride-8 network: after ``layer4`` (stride 8) it trades further striding for
dilation 2 (``layer5``), 4 (``layer6``) and two de-gridding stages (``layer7`` dilation 2, ``layer8``
dilation 1). DeepLab's output stride 16 is obtained as torchvision does for ResNets, in reverse: the first
block of ``layer5`` strides by 2 and every later dilation is halved. Weight shapes do not depend on stride
or dilation, so both variants load the same checkpoint.

The segmentation forward returns ``(low_level, high_level)``: ``layer3`` output (stride 4, as DeepLab's
decoder expects) and ``layer8`` output.
"""

from __future__ import annotations

import math

import torch
from torch import nn

DRN_D_CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an (optional) identity shortcut; used by DRN-D-22/38."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: tuple[int, int] = (1, 1),
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation[0])
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation[1])
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 → 3x3 (strided/dilated) → 1x1 bottleneck; used by DRN-D-54/105."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: tuple[int, int] = (1, 1),
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # As in fyu/drn the 3x3 conv carries the stride and uses the block's second dilation.
        self.conv2 = _conv3x3(planes, planes, stride, dilation[1])
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class DRNBackbone(nn.Module):
    """DRN-D feature extractor returning ``(low_level, high_level)`` features for DeepLabv3+.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks/convs in ``layer1`` ... ``layer8`` (fyu/drn convention).
        output_stride: 8 (the DRN design) or 16 (layer5 strides, later dilations halved).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, ...],
        output_stride: int = 8,
        channels: tuple[int, ...] = DRN_D_CHANNELS,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"DRN supports output_stride 8 or 16, got {output_stride!r}")
        if len(layers) != 8 or len(channels) != 8:
            raise ValueError(f"DRN needs 8 layer counts and 8 channel widths, got {layers} and {channels}")
        self.inplanes = channels[0]
        self.output_stride = output_stride
        # OS 8: dilations 2/4/2/1 after layer4 (reference). OS 16: layer5 strides, dilations halved.
        extra = output_stride // 8  # 1 or 2
        stride5 = 1 if extra == 1 else 2
        dil5, dil6, dil7 = 2 // extra, 4 // extra, max(2 // extra, 1)

        self.layer0 = nn.Sequential(
            nn.Conv2d(3, channels[0], kernel_size=7, stride=1, padding=3, bias=False),
            nn.BatchNorm2d(channels[0]),
            nn.ReLU(inplace=True),
        )
        self.layer1 = self._make_conv_layers(channels[0], layers[0], stride=1)
        self.layer2 = self._make_conv_layers(channels[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, channels[2], layers[2], stride=2)
        self.low_level_channels = self.inplanes
        self.layer4 = self._make_layer(block, channels[3], layers[3], stride=2)
        self.layer5 = self._make_layer(block, channels[4], layers[4], stride=stride5, dilation=dil5, new_level=False)
        self.layer6 = (
            self._make_layer(block, channels[5], layers[5], dilation=dil6, new_level=False)
            if layers[5] > 0
            else nn.Identity()
        )
        self.layer7 = self._make_conv_layers(channels[6], layers[6], dilation=dil7) if layers[6] > 0 else nn.Identity()
        self.layer8 = self._make_conv_layers(channels[7], layers[7], dilation=1) if layers[7] > 0 else nn.Identity()
        self.high_level_channels = self.inplanes
        self._init_weights()

    def _init_weights(self) -> None:
        # He init as in the reference, so training from scratch behaves like the original DRN.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilation: int = 1,
        new_level: bool = True,
        residual: bool = True,
    ) -> nn.Sequential:
        if not (dilation == 1 or dilation % 2 == 0):
            raise ValueError(f"DRN dilation must be 1 or even, got {dilation}")
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        first_dilation = (1, 1) if dilation == 1 else (dilation // 2 if new_level else dilation, dilation)
        modules: list[nn.Module] = [
            block(self.inplanes, planes, stride, downsample, dilation=first_dilation, residual=residual)
        ]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            modules.append(block(self.inplanes, planes, residual=residual, dilation=(dilation, dilation)))
        return nn.Sequential(*modules)

    def _make_conv_layers(self, channels: int, convs: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        modules: list[nn.Module] = []
        for i in range(convs):
            modules.extend(
                [
                    nn.Conv2d(
                        self.inplanes,
                        channels,
                        kernel_size=3,
                        stride=stride if i == 0 else 1,
                        padding=dilation,
                        dilation=dilation,
                        bias=False,
                    ),
                    nn.BatchNorm2d(channels),
                    nn.ReLU(inplace=True),
                ]
            )
            self.inplanes = channels
        return nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.layer0(x)
        x = self.layer1(x)
        x = self.layer2(x)
        low = self.layer3(x)
        x = self.layer4(low)
        x = self.layer5(x)
        x = self.layer6(x)
        x = self.layer7(x)
        x = self.layer8(x)
        return low, x


def drn_d_54(output_stride: int = 8) -> DRNBackbone:
    """DRN-D-54: Bottleneck blocks, layers (1, 1, 3, 4, 6, 3, 1, 1), 512 output channels."""
    return DRNBackbone(Bottleneck, (1, 1, 3, 4, 6, 3, 1, 1), output_stride=output_stride)
