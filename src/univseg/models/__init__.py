"""Segmentation models: shared encoders (backbones), per-domain heads and the embedding head.

Importing this package registers every backbone in :data:`univseg.models.backbones.BACKBONES`.
"""
from . import backbones  # noqa: F401  (registers the encoders)
