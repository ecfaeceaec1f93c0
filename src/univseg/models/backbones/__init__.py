"""Encoder backbones, created by name with :func:`build_backbone`.

Registered names: ``erfnet``, ``drn_d_22``, ``drn_d_38``, ``resnet18``, ``resnet50``,
``resnet101``. Each returns a :class:`Backbone` mapping a normalised ``[B, 3, H, W]`` batch to
``[B, out_channels, ceil(H/8), ceil(W/8)]`` features (``output_stride == 8``).

Example:
    >>> from univseg.models.backbones import build_backbone
    >>> net = build_backbone("erfnet", width=0.5)             # random init
    >>> net = build_backbone("resnet50", pretrained="imagenet")  # official weights (download)
    >>> net = build_backbone("drn_d_22", pretrained="weights/drn_d_22.pth")  # local file
"""
from .registry import (
    BACKBONES,
    Backbone,
    BackboneSpec,
    LoadReport,
    build_backbone,
    load_backbone_weights,
    register_backbone,
)
from . import drn, erfnet, resnet  # noqa: E402,F401  (register the backbones)

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneSpec",
    "LoadReport",
    "build_backbone",
    "load_backbone_weights",
    "register_backbone",
]
