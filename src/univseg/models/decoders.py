"""Decoders between a backbone and the per-domain heads, created by name from :data:`DECODERS`.

A decoder maps the two feature levels of :meth:`Backbone.forward_features`,
``{"low": [B, low_level_channels, h4, w4], "out": [B, in_channels, hs, ws]}`` (strides 4 and
``output_stride``), to the one feature map ``[B, out_channels, h, w]`` every head and the
embedding head run on. Each registered entry is a constructor
``build(in_channels, low_level_channels, **args) -> Decoder``:

* ``none``: ``feats["out"]`` itself, no parameters (``out_channels = in_channels``, stride of
  the backbone).
* ``deeplabv3plus``: :class:`DeepLabV3Plus`, ASPP + a stride-4 refinement (Chen et al., ECCV 2018).
* ``lraspp``: :class:`LRASPP`, the Lite R-ASPP of MobileNetV3 (Howard et al., ICCV 2019).

Any input size works: every resize is to the size of another tensor (bilinear,
``align_corners=False``). No normalisation sees a globally pooled ``[B, C, 1, 1]`` tensor, so
batch size 1 works in train mode too.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import Registry

#: Arguments every decoder constructor receives from the backbone, not from ``decoder_args``.
_FROM_BACKBONE = ("in_channels", "low_level_channels")


class Decoder(nn.Module):
    """Base class of the registered decoders.

    Attributes:
        out_channels: channels of the returned feature map.
    """

    out_channels: int

    def forward(self, feats: Mapping[str, Tensor]) -> Tensor:  # pragma: no cover - abstract
        """The feature map the heads run on, from ``{"low": ..., "out": ...}``."""
        raise NotImplementedError


DECODERS: Registry[Callable[..., Decoder]] = Registry("decoder")


def build_decoder(name: str, in_channels: int, low_level_channels: int, **args: Any) -> Decoder:
    """Build decoder ``name`` for a backbone with these channels and options ``args``.

    Raises:
        UnknownNameError: ``name`` is not registered (the message lists the registered names).
        ConfigError: an option the decoder does not accept (the accepted ones are listed).
    """
    build = DECODERS.get(name)
    accepted = [p for p in inspect.signature(build).parameters if p not in _FROM_BACKBONE]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ConfigError(
            f"model.decoder_args: decoder '{name}' got unknown option(s) {unknown}; "
            f"accepted options: {', '.join(accepted) or 'none'}",
            key="model.decoder_args",
            values=unknown,
        )
    return build(in_channels, low_level_channels, **args)


def resize_to(x: Tensor, ref: Tensor) -> Tensor:
    """Bilinear resize of ``x`` to the spatial size of ``ref`` (``align_corners=False``)."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


def _require(ok: bool, message: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"model.decoder_args: {message}, got {value!r}", key="model.decoder_args", values=value)


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 convolution (no bias), BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)
    )


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 conv (dilation ``dilation``)-BN-ReLU, then pointwise 1x1 conv-BN-ReLU.

    DeepLab's ``_split_separable_conv2d`` (tensorflow/models ``research/deeplab/model.py``),
    which puts BN and ReLU after both the depthwise and the pointwise convolution.
    Parameters: ``11 * in_channels + in_channels * out_channels + 2 * out_channels``.
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pool, 1x1 conv with bias, ReLU, broadcast back.

    DeepLab puts BatchNorm after this convolution; it is left out here because BatchNorm of a
    ``[B, C, 1, 1]`` tensor fails in train mode when ``B == 1``. Broadcasting the pooled vector
    equals bilinear upsampling of a 1x1 map to the input size.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.relu(self.conv(x.mean(dim=(2, 3), keepdim=True)))
        return pooled.expand(-1, -1, *x.shape[-2:])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling of DeepLabV3 (Chen et al., arXiv:1706.05587, Sec. 3.3)
    with the depthwise-separable 3x3 branches of DeepLabV3+ (Chen et al., ECCV 2018, Sec. 3.2).

    Branches, each with ``channels`` outputs at the input's resolution: a 1x1 conv-BN-ReLU, one
    :class:`SeparableConv` per rate in ``rates``, and :class:`ImagePooling`. They are
    concatenated, projected by a 1x1 conv-BN-ReLU to ``channels`` and passed through dropout.

    Args:
        in_channels: channels of the input.
        channels: channels of every branch and of the output (256 in both papers).
        rates: dilations of the separable 3x3 branches. (6, 12, 18) at output stride 16 and
            doubled, (12, 24, 36), at output stride 8 (DeepLabV3, Sec. 3.3).
        dropout: element-wise dropout after the projection; 0.1 is DeepLab's official code
            (``keep_prob=0.9`` on ``concat_projection``), 0 disables it.
    """

    def __init__(
        self, in_channels: int, channels: int = 256, rates: Sequence[int] = (12, 24, 36), dropout: float = 0.1
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [conv_bn_relu(in_channels, channels)]
        branches += [SeparableConv(in_channels, channels, rate) for rate in rates]
        branches.append(ImagePooling(in_channels, channels))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(conv_bn_relu(len(branches) * channels, channels), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


@DECODERS.register("none")
class NoDecoder(Decoder):
    """The backbone's last feature map unchanged: ``forward(feats) is feats["out"]``."""

    def __init__(self, in_channels: int, low_level_channels: int) -> None:
        super().__init__()
        self.out_channels = in_channels

    def forward(self, feats: Mapping[str, Tensor]) -> Tensor:
        return feats["out"]


@DECODERS.register("deeplabv3plus")
class DeepLabV3Plus(Decoder):
    """DeepLabV3+ decoder (Chen, Zhu, Papandreou, Schroff, Adam, "Encoder-Decoder with Atrous
    Separable Convolution for Semantic Image Segmentation", ECCV 2018), output at stride 4.

    :class:`ASPP` on ``"out"``; its output is upsampled (bilinear) to the size of ``"low"`` and
    concatenated with a 1x1 conv-BN-ReLU projection of ``"low"`` to ``low_channels``; two
    :class:`SeparableConv` (3x3, ``channels`` outputs) refine the result. The paper's final 1x1
    classifier is not part of the decoder: it is the per-domain heads.

    Args:
        in_channels: channels of ``"out"``.
        low_level_channels: channels of ``"low"``.
        channels: width of ASPP and of the refinement convolutions, and ``out_channels``. 256
            as published (ASPP: DeepLabV3, Sec. 3.3; refinement: two 3x3 convs with 256
            filters, DeepLabV3+, Table 2); smaller values (e.g. 128) cut the cost on CPUs.
        rates: ASPP dilations; the default (12, 24, 36) is for output stride 8, which all
            stride-8 backbones here have. Use (6, 12, 18) at output stride 16 (DeepLabV3, Sec. 3.3).
        low_channels: width of the low-level projection; 48 is the paper's choice (Table 1).
        dropout: dropout after ASPP; 0.1 as in DeepLab's official code, 0 disables it.

    Parameters (``C = channels``, ``I = in_channels``, ``K = low_level_channels``,
    ``L = low_channels``, ``R = len(rates)``; BN has 2 per channel, the image-pooling
    convolution a bias, no other convolution a bias)::

        ASPP     1x1 branch   I*C + 2C
                 R rates      R * (I*(C + 11) + 2C)
                 pooling      I*C + C
                 projection   (R + 2)*C*C + 2C
        low projection        K*L + 2L
        refinement            (C + L)*(C + 11) + 2C  +  C*(C + 11) + 2C

    e.g. 3,182,448 for ``C=256, I=2048, K=256, L=48, R=3`` (ResNet-50/101).
    """

    def __init__(
        self,
        in_channels: int,
        low_level_channels: int,
        channels: int = 256,
        rates: Sequence[int] = (12, 24, 36),
        low_channels: int = 48,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        _require(channels >= 1, "deeplabv3plus channels must be >= 1", channels)
        _require(low_channels >= 1, "deeplabv3plus low_channels must be >= 1", low_channels)
        _require(len(rates) >= 1 and all(r >= 1 for r in rates), "deeplabv3plus rates must be >= 1 (at least one)", rates)
        _require(0.0 <= dropout < 1.0, "deeplabv3plus dropout must be in [0, 1)", dropout)
        self.aspp = ASPP(in_channels, channels, tuple(rates), dropout)
        self.low_project = conv_bn_relu(low_level_channels, low_channels)
        self.refine = nn.Sequential(SeparableConv(channels + low_channels, channels), SeparableConv(channels, channels))
        self.out_channels = channels

    def forward(self, feats: Mapping[str, Tensor]) -> Tensor:
        low = self.low_project(feats["low"])
        context = resize_to(self.aspp(feats["out"]), low)
        return self.refine(torch.cat([context, low], dim=1))


@DECODERS.register("lraspp")
class LRASPP(Decoder):
    """Lite R-ASPP (Howard et al., "Searching for MobileNetV3", ICCV 2019, Sec. 6.4 and Fig. 10),
    output at stride 4.

    On ``"out"``: a 1x1 conv-BN-ReLU branch with ``channels`` outputs, multiplied by a gate
    ``sigmoid(conv1x1(global_average_pool(out)))`` (1x1 conv without bias, no BN, as
    torchvision's ``LRASPPHead``), then upsampled (bilinear) to the size of ``"low"``.

    Deviations from the paper:

    * The paper's gate pools with a 49x49 kernel and stride (16, 20); here it pools globally,
      as torchvision's ``LRASPPHead`` does.
    * The paper's head adds per-class 1x1 projections of both the upsampled gated features and
      the low-level features. Our per-domain classifiers run after the decoder, so instead the
      decoder outputs ``cat(upsampled gated features, conv1x1(low))`` and leaves the
      classification to the heads. The low-level projection is linear (no BN, no ReLU), so a
      1x1 head (``head_channels=0``) on this output computes exactly the paper's sum whenever
      ``low_channels`` is at least the number of classes.
    * The paper applies it at strides 8 (low) and 16 (out) of MobileNetV3; the backbones here
      give strides 4 and 8.

    Args:
        in_channels: channels of ``"out"``.
        low_level_channels: channels of ``"low"``.
        channels: width of the gated branch; 128 is the paper's (Fig. 10).
        low_channels: width of the low-level projection. 48, after DeepLabV3+'s low-level
            projection (the paper projects straight to the number of classes).

    ``out_channels = channels + low_channels``; parameters
    ``2 * in_channels * channels + 2 * channels + low_level_channels * low_channels``.
    """

    def __init__(
        self, in_channels: int, low_level_channels: int, channels: int = 128, low_channels: int = 48
    ) -> None:
        super().__init__()
        _require(channels >= 1, "lraspp channels must be >= 1", channels)
        _require(low_channels >= 1, "lraspp low_channels must be >= 1", low_channels)
        self.branch = conv_bn_relu(in_channels, channels)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, 1, bias=False), nn.Sigmoid()
        )
        self.low_project = nn.Conv2d(low_level_channels, low_channels, 1, bias=False)
        self.out_channels = channels + low_channels

    def forward(self, feats: Mapping[str, Tensor]) -> Tensor:
        out = feats["out"]
        low = self.low_project(feats["low"])
        gated = self.branch(out) * self.gate(out)
        return torch.cat([resize_to(gated, low), low], dim=1)
