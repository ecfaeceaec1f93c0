"""torchvision ResNets made dilated (output stride 8) for dense prediction.

The strides of ``layer3`` and ``layer4`` are removed and their 3x3 convolutions dilated by 2
and 4 instead (the DeepLab / DRN recipe), which keeps the receptive field of the ImageNet
network while the feature map stays at 1/8 of the input. torchvision's
``replace_stride_with_dilation`` refuses ``BasicBlock`` (ResNet-18/34), so
:func:`dilate_layer` converts any residual stage, basic or bottleneck, by editing its
convolutions in place; it changes no parameter, so ImageNet weights still apply. ``avgpool``
and ``fc`` are dropped; module names are torchvision's (``conv1, bn1, layer1`` ...).
"""
from __future__ import annotations

from typing import Any, Callable

from torch import Tensor, nn
from torchvision import models as tvm

from ...errors import ConfigError
from ..weights.resolve import imagenet_loader
from .registry import Backbone, register_backbone


def dilate_layer(layer: nn.Sequential, dilation: int) -> None:
    """Make a residual stage keep its input resolution and dilate it by ``dilation`` instead.

    Every convolution gets stride 1 (the strided 3x3 conv and the 1x1 projection shortcut of
    the first block). Every 3x3 convolution gets dilation ``dilation`` (and matching padding),
    except the one that used to stride in the first block, which gets ``dilation // 2``: that
    is the rate the previous stage runs at, so the first block sees the same sampling grid as
    in the strided network. Works for torchvision ``BasicBlock`` and ``Bottleneck`` alike.
    """
    if dilation < 1:
        raise ConfigError(f"model.backbone_args: dilation must be >= 1, got {dilation}", key="model.backbone_args")
    for index, block in enumerate(layer):
        for conv in block.modules():
            if not isinstance(conv, nn.Conv2d):
                continue
            was_strided = conv.stride != (1, 1)
            conv.stride = (1, 1)
            if conv.kernel_size == (1, 1):
                continue
            d = max(1, dilation // 2) if index == 0 and was_strided else dilation
            conv.dilation = (d, d)
            conv.padding = (d * (conv.kernel_size[0] // 2), d * (conv.kernel_size[1] // 2))


class DilatedResNet(Backbone):
    """A torchvision ResNet without ``avgpool``/``fc``, at output stride 8.

    ``forward_features`` also returns ``layer1``'s output (stride 4) as ``"low"``.

    Args:
        net: a torchvision ``ResNet`` (any depth); its modules are reused, not copied.
    """

    def __init__(self, net: tvm.ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        dilate_layer(self.layer3, 2)
        dilate_layer(self.layer4, 4)
        self.out_channels = _block_channels(self.layer4[-1])
        self.low_level_channels = _block_channels(self.layer1[-1])
        self.output_stride = 8

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """``{"low": layer1 output (stride 4), "out": layer4 output (stride 8)}``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = self.unit(block, x)
            if layer is self.layer1:
                low = x
        return {"low": low, "out": x}


def _block_channels(block: nn.Module) -> int:
    """Output channels of a torchvision ``BasicBlock`` or ``Bottleneck``."""
    return (block.bn3 if hasattr(block, "bn3") else block.bn2).num_features


def _register(name: str, make: Callable[..., tvm.ResNet], weights: Any) -> None:
    """Register ``name``; ``"imagenet"`` loads ``weights.DEFAULT``'s file through the weights catalogue."""

    def build() -> DilatedResNet:
        return DilatedResNet(make(weights=None))

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"torchvision {name}, dilated to output stride 8, ImageNet weights {weights.DEFAULT}."
    register_backbone(name, imagenet=imagenet_loader(name))(build)


# torchvision's DEFAULT weights: IMAGENET1K_V1 for resnet18, IMAGENET1K_V2 for resnet50/101.
_register("resnet18", tvm.resnet18, tvm.ResNet18_Weights)
_register("resnet50", tvm.resnet50, tvm.ResNet50_Weights)
_register("resnet101", tvm.resnet101, tvm.ResNet101_Weights)
