"""EfficientNet-Lite0 (Tan & Le, ICML 2019; TensorFlow's "lite" variant) as a dilated encoder.

Lite differs from EfficientNet-B0 in what mobile accelerators handle badly: no squeeze-and-
excitation, ReLU6 instead of swish, and a stem (32 channels) and head (1280) that are not
scaled. Its ImageNet weights were converted from TensorFlow, so convolutions pad like TF's
``"SAME"`` (for a stride, the extra row / column goes bottom / right) and BatchNorm uses TF's
epsilon 1e-3. The parameter names follow the file ``efficientnet-lite0-57934424.pth``::

    _conv_stem, _bn0                                       3x3/2 conv, 32 channels
    _blocks.N._expand_conv, _bn0   (absent when expand 1)  1x1 conv to expand * in channels
    _blocks.N._depthwise_conv, _bn1                        kxk depthwise conv (carries the stride)
    _blocks.N._project_conv, _bn2                          1x1 conv to out channels (+ input if same shape)
    _conv_head, _bn1                                       1x1 conv, 1280 channels
    (_fc, the ImageNet classifier, is dropped)

Output stride 8 or 16 comes from dilating the depthwise convolutions of the later blocks
(:func:`.dilation.dilation_schedule`). ``"low"`` is the output of block 2 (24 channels, stride 4).
Expected input normalisation: see ``univseg.models.weights`` (mean 127, std 128 on 0..255).
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from ..weights.resolve import imagenet_loader
from .dilation import check_output_stride, dilation_schedule, last_unit_at_stride
from .registry import Backbone, register_backbone

LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    # repeats, kernel, stride, expand ratio, out channels
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
"""EfficientNet-Lite0's stages (TF ``efficientnet_lite_builder``: width 1.0, depth 1.0)."""
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3  # TensorFlow's default, the value the weights were trained with


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """(before, after) padding of TF ``"SAME"``: the output has ``ceil(size / stride)`` entries."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """A bias-free k x k convolution padded like TensorFlow's ``"SAME"``, with settable stride and dilation.

    At stride 1 the padding is symmetric and static; at stride 2 it is computed from the input
    size (TF puts the odd extra row / column at the bottom / right).
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, groups=groups, bias=False)
        self.set_geometry(stride, 1)

    def set_geometry(self, stride: int, dilation: int) -> None:
        """Use ``stride`` and ``dilation`` (same for both axes); parameters are unchanged."""
        self.stride, self.dilation = (stride, stride), (dilation, dilation)
        pad = dilation * (self.kernel_size[0] - 1) // 2 if stride == 1 else 0
        self.padding = (pad, pad)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != (1, 1):
            k, s, d = self.kernel_size[0], self.stride[0], self.dilation[0]
            top, bottom = _same_padding(x.shape[-2], k, s, d)
            left, right = _same_padding(x.shape[-1], k, s, d)
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class MBConvBlock(nn.Module):
    """Inverted residual without squeeze-excitation: [1x1 expand] -> kxk depthwise -> 1x1 project."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False) if expand != 1 else None
        self._bn0 = _bn(mid) if expand != 1 else None
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self._expand_conv is not None:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(Backbone):
    """EfficientNet-Lite without its classifier, at output stride ``output_stride`` (8 or 16).

    Args:
        stages: ``(repeats, kernel, stride, expand, out channels)`` per stage (default: Lite0).
        output_stride: 8 or 16.
    """

    depthwise = True

    ignored_checkpoint_prefixes = ("_fc.",)

    def __init__(self, stages: tuple[tuple[int, int, int, int, int], ...] = LITE0_STAGES, output_stride: int = 8) -> None:
        super().__init__()
        self.output_stride = check_output_stride(output_stride)
        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks, cin = [], STEM_CHANNELS
        for repeats, kernel, stride, expand, cout in stages:
            for i in range(repeats):
                blocks.append(MBConvBlock(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _bn(HEAD_CHANNELS)
        self.act = nn.ReLU6(inplace=True)

        convs = [self._conv_stem, *(b._depthwise_conv for b in blocks)]
        strides = [conv.stride[0] for conv in convs]
        for conv, (stride, dilation) in zip(convs, dilation_schedule(strides, output_stride), strict=True):
            conv.set_geometry(stride, dilation)
        self.low_index = last_unit_at_stride(strides, 4) - 1  # convs[0] is the stem, not a block
        self.low_level_channels = blocks[self.low_index]._bn2.num_features
        self.out_channels = HEAD_CHANNELS
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """``{"low": block 2 output (stride 4), "out": head output (stride 8 or 16)}``."""
        x = self.act(self._bn0(self._conv_stem(x)))
        low = x
        for index, block in enumerate(self._blocks):
            x = self.unit(block, x)
            if index == self.low_index:
                low = x
        return {"low": low, "out": self.act(self._bn1(self._conv_head(x)))}


@register_backbone("efficientnet_lite0", imagenet=imagenet_loader("efficientnet_lite0"))
def efficientnet_lite0(output_stride: int = 8) -> EfficientNetLite:
    """EfficientNet-Lite0: 1280 channels at stride ``output_stride``, 24 at stride 4 (~3.4M parameters).

    Its ImageNet weights expect inputs normalised with mean 127 and std 128 (0..255 scale).
    """
    return EfficientNetLite(LITE0_STAGES, output_stride)
