"""ERFNet encoder (Romera, Alvarez, Bergasa, Arroyo, IEEE T-ITS 2017).

Layout (stride after each stage in brackets)::

    downsampler 3->16 [2] -> downsampler 16->64 [4] -> 5 x non-bottleneck-1D(64)
    -> downsampler 64->128 [8] -> 2 x (non-bottleneck-1D(128) with dilation 2, 4, 8, 16)

A downsampler concatenates a stride-2 3x3 convolution with a 2x2 max-pool of its input; a
non-bottleneck-1D block is a residual block of factorised 3x1 / 1x3 convolutions whose second
pair is dilated. Module names follow the reference implementation (``initial_block``,
``layers.N.conv3x1_1`` ...) so its checkpoints load: an encoder alone, a whole ERFNet
(``encoder.*``) or the reference ImageNet classifier (``features.encoder.*``), as local files. The 1x1 ``output_conv`` classifier of the reference encoder is not part of the
backbone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from .registry import Backbone, register_backbone

#: Dropout of the reference ERFNet: (64-channel blocks, 128-channel blocks).
ERFNET_DROPOUT = (0.03, 0.3)


class DownsamplerBlock(nn.Module):
    """``relu(bn(cat(conv3x3_stride2(x), maxpool2x2(x))))``, halving the resolution (ceil)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels <= in_channels:
            raise ConfigError(
                f"model.backbone_args: downsampler needs out_channels > in_channels, got {in_channels}->{out_channels}",
                key="model.backbone_args",
            )
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=True)
        # ceil_mode makes the pooled size ceil(H/2) like the convolution's, so odd sizes work.
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class NonBottleneck1D(nn.Module):
    """Residual block of two factorised (3x1 then 1x3) convolution pairs, the second dilated."""

    def __init__(self, channels: int, dropout: float, dilation: int) -> None:
        super().__init__()
        d = dilation
        self.conv3x1_1 = nn.Conv2d(channels, channels, (3, 1), padding=(1, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(channels, channels, (1, 3), padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(channels, eps=1e-3)
        self.conv3x1_2 = nn.Conv2d(channels, channels, (3, 1), padding=(d, 0), dilation=(d, 1), bias=True)
        self.conv1x3_2 = nn.Conv2d(channels, channels, (1, 3), padding=(0, d), dilation=(1, d), bias=True)
        self.bn2 = nn.BatchNorm2d(channels, eps=1e-3)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv3x1_1(x))
        out = F.relu(self.bn1(self.conv1x3_1(out)))
        out = F.relu(self.conv3x1_2(out))
        out = self.bn2(self.conv1x3_2(out))
        if self.dropout.p > 0:
            out = self.dropout(out)
        return F.relu(out + x)


class ERFNetEncoder(Backbone):
    """The ERFNet encoder: 128 * ``width`` channels at output stride 8.

    ``forward_features`` also returns the stride-4 stage's output (after the five 64-channel
    blocks, 64 * ``width`` channels) as ``"low"``.

    Args:
        width: channel multiplier (1.0 = the paper's 16/64/128 channels; e.g. 0.5 for a demo).
        dropout: one Dropout2d probability for every block, or None for ERFNet's own values
            (0.03 in the 64-channel blocks, 0.3 in the dilated 128-channel blocks).
    """

    ignored_checkpoint_prefixes = ("output_conv.", "decoder.")
    # A whole ERFNet stores the encoder as "encoder.*"; the reference ImageNet classifier
    # (erfnet_imagenet.py) as "features.encoder.*".
    checkpoint_prefixes = ("encoder.", "features.encoder.")

    def __init__(self, width: float = 1.0, dropout: float | None = None) -> None:
        super().__init__()
        if not width > 0:
            raise ConfigError(f"model.backbone_args: erfnet width must be > 0, got {width}", key="model.backbone_args")
        if dropout is not None and not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.backbone_args: erfnet dropout must be in [0, 1), got {dropout}", key="model.backbone_args")
        p64, p128 = ERFNET_DROPOUT if dropout is None else (dropout, dropout)
        # Minimums keep each downsampler's output wider than its input at tiny widths.
        c16 = max(4, round(16 * width))
        c64 = max(8, round(64 * width))
        c128 = max(16, round(128 * width))
        self.width = width
        self.out_channels = c128
        self.low_level_channels = c64
        self.output_stride = 8

        self.initial_block = DownsamplerBlock(3, c16)
        layers: list[nn.Module] = [DownsamplerBlock(c16, c64)]
        layers += [NonBottleneck1D(c64, p64, 1) for _ in range(5)]
        self._stride4_end = len(layers)  # layers[:_stride4_end] end at stride 4
        layers.append(DownsamplerBlock(c64, c128))
        for _ in range(2):
            layers += [NonBottleneck1D(c128, p128, d) for d in (2, 4, 8, 16)]
        self.layers = nn.ModuleList(layers)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """``{"low": stride-4 stage output, "out": last block's output (stride 8)}``."""
        low = self.unit(self.initial_block, x)
        for layer in self.layers[: self._stride4_end]:
            low = self.unit(layer, low)
        x = low
        for layer in self.layers[self._stride4_end :]:
            x = self.unit(layer, x)
        return {"low": low, "out": x}


@register_backbone(
    "erfnet",
    no_imagenet_reason="univseg has no official download URL for ERFNet ImageNet weights; a local "
    "copy of the reference erfnet_encoder_pretrained.pth.tar loads as a path",
)
def erfnet(width: float = 1.0, dropout: float | None = None) -> ERFNetEncoder:
    """ERFNet encoder (128 * width channels, stride 8)."""
    return ERFNetEncoder(width=width, dropout=dropout)
