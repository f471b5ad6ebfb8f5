"""DeepLabv3+ (Chen et al., ECCV 2018): backbone → ASPP → decoder with a low-level skip → classifier.

Shapes follow the paper and the PyTorch re-implementations the hair-segmentation paper used
(jfzhang95/pytorch-deeplab-xception, torchvision's DeepLabV3 head): an ASPP of one 1x1 branch, three
atrous 3x3 branches and an image-pooling branch, projected to ``aspp_channels`` with dropout 0.5; a decoder
that reduces the stride-4 backbone features to 48 channels, concatenates them with the upsampled ASPP
output and refines with two 3x3 convs; a 1x1 classifier; bilinear upsampling to the input size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_ASPP_RATES: dict[int, tuple[int, int, int]] = {16: (6, 12, 18), 8: (12, 24, 36)}


def _conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
    padding = 0 if kernel_size == 1 else dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class ASPPPooling(nn.Module):
    """Image-level branch: global average pool → 1x1 conv (+bias) → ReLU → broadcast back.

    The reference branches use BatchNorm here, but after global pooling each channel has one value per
    image, so BatchNorm in train mode fails for batch size 1 (and is noisy for tiny batches). A biased conv
    keeps the branch's capacity and works for any batch size, train or eval.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        y = self.relu(self.conv(self.pool(x)))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: parallel 1x1, three dilated 3x3 and image-pooling branches."""

    def __init__(self, in_ch: int, out_ch: int = 256, rates: Sequence[int] = (6, 12, 18), dropout: float = 0.5):
        super().__init__()
        if len(rates) == 0 or any(int(r) < 1 for r in rates):
            raise ValueError(f"aspp_rates must be positive dilation rates, got {list(rates)}")
        branches: list[nn.Module] = [_conv_bn_relu(in_ch, out_ch, 1)]
        branches += [_conv_bn_relu(in_ch, out_ch, 3, dilation=int(r)) for r in rates]
        branches.append(ASPPPooling(in_ch, out_ch))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(out_ch * len(branches), out_ch, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class Decoder(nn.Module):
    """Fuse upsampled ASPP features with 48-channel projected stride-4 features, refine with two 3x3 convs.

    The low-level projection is narrow (48) on purpose: wider skips let the many low-level channels
    outweigh the semantic ASPP features (DeepLabv3+ paper, Table 1).
    """

    def __init__(self, low_level_ch: int, aspp_ch: int, out_ch: int = 256, low_level_proj_ch: int = 48) -> None:
        super().__init__()
        self.low_level_proj = _conv_bn_relu(low_level_ch, low_level_proj_ch, 1)
        self.fuse = nn.Sequential(
            _conv_bn_relu(aspp_ch + low_level_proj_ch, out_ch, 3),
            _conv_bn_relu(out_ch, out_ch, 3),
        )

    def forward(self, low_level: torch.Tensor, aspp_out: torch.Tensor) -> torch.Tensor:
        low_level = self.low_level_proj(low_level)
        aspp_out = F.interpolate(aspp_out, size=low_level.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([aspp_out, low_level], dim=1))


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ segmentation network; ``forward`` returns logits ``(B, num_classes, H, W)`` at input size.

    ``backbone`` must return ``(low_level, high_level)`` and expose ``low_level_channels``,
    ``high_level_channels`` and ``output_stride`` (see :mod:`hairseg_core.models.backbones`).
    ``config`` is the plain dict :func:`~hairseg_core.models.build_model` was called with, kept so a
    checkpoint can rebuild the same architecture.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 2,
        aspp_channels: int = 256,
        decoder_channels: int = 256,
        aspp_rates: Sequence[int] | None = None,
        aspp_dropout: float = 0.5,
        config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if aspp_channels < 1 or decoder_channels < 1:
            raise ValueError(f"aspp_channels/decoder_channels must be >= 1, got {aspp_channels}/{decoder_channels}")
        output_stride = int(backbone.output_stride)
        if aspp_rates is None:
            if output_stride not in DEFAULT_ASPP_RATES:
                raise ValueError(f"no default ASPP rates for output_stride {output_stride}; pass aspp_rates")
            aspp_rates = DEFAULT_ASPP_RATES[output_stride]
        self.backbone = backbone
        self.aspp = ASPP(int(backbone.high_level_channels), aspp_channels, aspp_rates, dropout=aspp_dropout)
        self.decoder = Decoder(int(backbone.low_level_channels), aspp_channels, decoder_channels)
        self.classifier = nn.Conv2d(decoder_channels, num_classes, kernel_size=1)
        self.aspp_rates = tuple(int(r) for r in aspp_rates)
        self.config: dict[str, Any] = dict(config or {})
        self._init_head()

    def _init_head(self) -> None:
        # The head is always trained from scratch (He init, BN at identity), as in the reference code.
        for m in self.head_modules():
            for sub in m.modules():
                if isinstance(sub, nn.Conv2d):
                    nn.init.kaiming_normal_(sub.weight, mode="fan_out", nonlinearity="relu")
                    if sub.bias is not None:
                        nn.init.zeros_(sub.bias)
                elif isinstance(sub, nn.BatchNorm2d):
                    nn.init.ones_(sub.weight)
                    nn.init.zeros_(sub.bias)
        # The classifier starts near zero: He init on a 2-output 1x1 conv gives logits with std ~5,
        # i.e. confident random predictions whose CE (~7) the first epochs spend undoing.
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def head_modules(self) -> tuple[nn.Module, ...]:
        return (self.aspp, self.decoder, self.classifier)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Pretrained part; the paper fine-tunes it with a 10x lower learning rate."""
        return self.backbone.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """ASPP + decoder + classifier: randomly initialised, trained at the full learning rate."""
        for m in self.head_modules():
            yield from m.parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        low_level, high_level = self.backbone(x)
        features = self.decoder(low_level, self.aspp(high_level))
        logits = self.classifier(features)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
