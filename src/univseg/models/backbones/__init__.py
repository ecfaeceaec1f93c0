"""Encoder backbones, created by name with :func:`build_backbone`.

Registered names: ``erfnet``, ``drn_d_22``, ``drn_d_38``, ``resnet18``, ``resnet50``,
``resnet101``, ``mobilenet_v2``, ``efficientnet_lite0``. Each returns a :class:`Backbone` mapping
a normalised ``[B, 3, H, W]`` batch to ``[B, out_channels, ceil(H/s), ceil(W/s)]`` features
(s = ``output_stride``: 8; ``mobilenet_v2`` and ``efficientnet_lite0`` also offer
``output_stride=16``). ImageNet weights come from the catalogue :mod:`univseg.models.weights`.
``timm/<model name>`` builds any timm model as an encoder (:mod:`.timm_encoder`, needs timm).

Example:
    >>> from univseg.models.backbones import build_backbone
    >>> net = build_backbone("erfnet", width=0.5)             # random init
    >>> net = build_backbone("resnet50", pretrained="imagenet")  # cached or downloaded ImageNet weights
    >>> net = build_backbone("mobilenet_v2", output_stride=16)
    >>> net = build_backbone("drn_d_22", pretrained="weights/drn_d_22.pth")  # local file
    >>> net = build_backbone("timm/convnext_atto", output_stride=16)  # needs timm
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
from . import drn, efficientnet_lite, erfnet, mobilenet, resnet, timm_encoder  # noqa: E402,F401  (register the backbones)

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneSpec",
    "LoadReport",
    "build_backbone",
    "load_backbone_weights",
    "register_backbone",
]
