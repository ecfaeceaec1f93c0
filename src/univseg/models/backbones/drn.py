"""Dilated Residual Networks, type D (Yu, Koltun, Funkhouser, CVPR 2017), output stride 8.

DRN-D replaces the ResNet stem (7x7/2 conv + max-pool) by a stride-1 7x7 conv and two plain
3x3 conv stages, keeps output stride 8 by dilating stages 5 and 6 (dilation 2 and 4) instead of
striding, and removes gridding artefacts with two final conv stages without residual
connections (dilation 2, then 1). Stages and their channels::

    layer0  7x7 conv, 16, stride 1          layer5  residual, 256, dilation 2
    layer1  3x3 conv, 16, stride 1          layer6  residual, 512, dilation 4
    layer2  3x3 conv, 32, stride 2          layer7  3x3 conv, 512, dilation 2 (no residual)
    layer3  residual, 64, stride 2          layer8  3x3 conv, 512, dilation 1 (no residual)
    layer4  residual, 128, stride 2

DRN-D-22 uses (1, 1, 2, 2, 2, 2, 1, 1) units per stage and DRN-D-38 (1, 1, 3, 4, 6, 3, 1, 1),
with basic (two 3x3 conv) residual blocks. Module names follow the authors' ``drn.py``
(``layer0`` ... ``layer8``, ``conv1/bn1/conv2/bn2/downsample`` in blocks) so the official
ImageNet checkpoints load; their ``fc`` classifier is dropped.
"""
from __future__ import annotations

from torch import Tensor, nn

from ...errors import ConfigError
from ..weights.resolve import imagenet_loader
from .registry import Backbone, register_backbone

CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class DRNBasicBlock(nn.Module):
    """Two 3x3 convs (dilations ``dilation[0]``, ``dilation[1]``) with an identity/projection shortcut."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int = 1,
        dilation: tuple[int, int] = (1, 1),
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride, dilation[0])
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout, 1, dilation[1])
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


def _plain_stage(cin: int, cout: int, convs: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """``convs`` x (3x3 conv, BN, ReLU) without shortcut; the first conv carries the stride."""
    mods: list[nn.Module] = []
    for i in range(convs):
        mods += [
            _conv3x3(cin if i == 0 else cout, cout, stride if i == 0 else 1, dilation),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*mods)


def _residual_stage(
    cin: int, cout: int, blocks: int, stride: int = 1, dilation: int = 1
) -> nn.Sequential:
    """``blocks`` basic residual blocks, all at ``dilation`` (the first one also strides)."""
    units = [DRNBasicBlock(cin, cout, stride, (dilation, dilation))]
    units += [DRNBasicBlock(cout, cout, 1, (dilation, dilation)) for _ in range(1, blocks)]
    return nn.Sequential(*units)


class DRN_D(Backbone):
    """DRN type D with basic blocks; ``units`` gives the number of units of the 8 stages.

    ``forward_features`` also returns ``layer3``'s output (64 channels, the stride-4 level) as ``"low"``.
    """

    def __init__(self, units: tuple[int, ...]) -> None:
        super().__init__()
        if len(units) != 8 or min(units) < 1:
            raise ConfigError(f"model.backbone_args: DRN-D needs 8 stage sizes >= 1, got {units}", key="model.backbone_args")
        c = CHANNELS
        self.out_channels = c[7]
        self.low_level_channels = c[2]
        self.output_stride = 8
        self.layer0 = nn.Sequential(
            nn.Conv2d(3, c[0], 7, stride=1, padding=3, bias=False),
            nn.BatchNorm2d(c[0]),
            nn.ReLU(inplace=True),
        )
        self.layer1 = _plain_stage(c[0], c[0], units[0])
        self.layer2 = _plain_stage(c[0], c[1], units[1], stride=2)
        self.layer3 = _residual_stage(c[1], c[2], units[2], stride=2)
        self.layer4 = _residual_stage(c[2], c[3], units[3], stride=2)
        self.layer5 = _residual_stage(c[3], c[4], units[4], dilation=2)
        self.layer6 = _residual_stage(c[4], c[5], units[5], dilation=4)
        self.layer7 = _plain_stage(c[5], c[6], units[6], dilation=2)  # degridding, no residual
        self.layer8 = _plain_stage(c[6], c[7], units[7], dilation=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """``{"low": layer3 output (stride 4), "out": layer8 output (stride 8)}``."""
        for i in range(4):
            x = self.unit(getattr(self, f"layer{i}"), x)
        low = x
        for i in range(4, 9):
            x = self.unit(getattr(self, f"layer{i}"), x)
        return {"low": low, "out": x}


@register_backbone("drn_d_22", imagenet=imagenet_loader("drn_d_22"))
def drn_d_22() -> DRN_D:
    """DRN-D-22: 512 channels at stride 8 (~15.9M parameters)."""
    return DRN_D((1, 1, 2, 2, 2, 2, 1, 1))


@register_backbone("drn_d_38", imagenet=imagenet_loader("drn_d_38"))
def drn_d_38() -> DRN_D:
    """DRN-D-38: 512 channels at stride 8 (~26M parameters)."""
    return DRN_D((1, 1, 3, 4, 6, 3, 1, 1))
