"""torchvision's MobileNetV2 (Sandler et al., CVPR 2018) as a dilated encoder, output stride 8 or 16.

The modules are torchvision's own (``features.0`` ... ``features.18``), so torchvision's ImageNet
file ``mobilenet_v2-b0353104.pth`` loads with only its ``classifier`` left out. The units that
would stride beyond the output stride keep stride 1 and dilate their depthwise 3x3 convolution
instead (:func:`.dilation.dilation_schedule`, the DeepLab recipe); no parameter changes.
Stride-4 features (``"low"``, 24 channels) are the output of ``features.3``; the last ones
(``"out"``, 1280 channels) of the final 1x1 convolution ``features.18``.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision import models as tvm

from ..weights.resolve import imagenet_loader
from .dilation import check_output_stride, dilation_schedule, last_unit_at_stride
from .registry import Backbone, register_backbone


def _spatial_conv(unit: nn.Module) -> nn.Conv2d | None:
    """The one convolution of a MobileNetV2 unit with a kernel larger than 1x1 (None for the 1x1 head)."""
    convs = [m for m in unit.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    return convs[0] if convs else None


class MobileNetV2(Backbone):
    """torchvision MobileNetV2 ``features`` at output stride ``output_stride`` (8 or 16).

    Args:
        net: a torchvision ``MobileNetV2``; its ``features`` are reused, ``classifier`` dropped.
        output_stride: 8 or 16.
    """

    depthwise = True

    ignored_checkpoint_prefixes = ("classifier.",)

    def __init__(self, net: tvm.MobileNetV2, output_stride: int = 8) -> None:
        super().__init__()
        self.output_stride = check_output_stride(output_stride)
        self.features = net.features
        convs = [_spatial_conv(unit) for unit in self.features]
        strides = [conv.stride[0] if conv is not None else 1 for conv in convs]
        for conv, (stride, dilation) in zip(convs, dilation_schedule(strides, output_stride), strict=True):
            if conv is not None:
                pad = dilation * (conv.kernel_size[0] // 2)
                conv.stride, conv.dilation, conv.padding = (stride, stride), (dilation, dilation), (pad, pad)
        self.low_index = last_unit_at_stride(strides, 4)
        self.low_level_channels = self.features[self.low_index].out_channels
        self.out_channels = self.features[-1].out_channels

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """``{"low": features.3 output (stride 4), "out": features.18 output (stride 8 or 16)}``."""
        low = x
        for index, unit in enumerate(self.features):
            x = self.unit(unit, x)
            if index == self.low_index:
                low = x
        return {"low": low, "out": x}


@register_backbone("mobilenet_v2", imagenet=imagenet_loader("mobilenet_v2"))
def mobilenet_v2(output_stride: int = 8) -> MobileNetV2:
    """MobileNetV2 (width 1.0): 1280 channels at stride ``output_stride``, 24 at stride 4 (~2.2M parameters)."""
    return MobileNetV2(tvm.mobilenet_v2(weights=None), output_stride)
