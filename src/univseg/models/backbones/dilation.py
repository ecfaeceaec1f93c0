"""Output stride of an ImageNet encoder made smaller by dilating its later units instead of striding.

The DeepLab recipe (Chen et al. 2017; the MobileNetV2 paper's segmentation setup): walk the
network's units in order; once the running stride has reached the wanted output stride, every
further unit keeps stride 1 and convolves at a rate (dilation) that grows by the stride it gave
up. The unit that gives up its stride still runs at the previous rate, so every unit sees the
same sampling grid as in the strided network and the ImageNet weights keep their meaning.
"""
from __future__ import annotations

from typing import Sequence

from ...errors import ConfigError

OUTPUT_STRIDES = (8, 16)
"""Output strides the dilated encoders offer (``output_stride`` backbone option)."""


def check_output_stride(output_stride: int, allowed: tuple[int, ...] = OUTPUT_STRIDES, which: str = "") -> int:
    """Return ``output_stride`` when it is one of ``allowed``, else raise ConfigError (``which``: the
    encoders the rule is for, e.g. " for timm encoders")."""
    if output_stride not in allowed:
        raise ConfigError(
            f"model.backbone_args.output_stride: must be one of {', '.join(map(str, allowed))}{which}, "
            f"got {output_stride!r}",
            key="model.backbone_args.output_stride",
            values=[output_stride],
        )
    return output_stride


def dilation_schedule(strides: Sequence[int], output_stride: int) -> list[tuple[int, int]]:
    """``(stride, dilation)`` for each unit of a network whose units stride by ``strides``.

    Example: MobileNetV2's units ``(2, 1, 2, 1, 2, 1, 1, 2, ...)`` at output stride 8 become
    ``(2, 1), (1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (1, 1), (1, 1), (1, 2), ...``.
    """
    current, rate, schedule = 1, 1, []
    for stride in strides:
        if current >= output_stride:
            schedule.append((1, rate))
            rate *= stride
        else:
            schedule.append((stride, 1))
            current *= stride
    return schedule


def last_unit_at_stride(strides: Sequence[int], stride: int) -> int:
    """Index of the last unit whose output is at ``stride`` (e.g. 4: the decoder's low-level features)."""
    current, found = 1, None
    for index, s in enumerate(strides):
        current *= s
        if current == stride:
            found = index
    if found is None:
        raise ValueError(f"no unit of a network with strides {list(strides)} outputs stride {stride}")
    return found
