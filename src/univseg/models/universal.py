"""The universal model: shared encoder, one segmentation head per domain, shared embedding head."""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone


def _head(in_channels: int, num_classes: int, hidden: int) -> nn.Module:
    """A 1x1 classifier, optionally preceded by a 3x3 conv-BN-ReLU with ``hidden`` channels."""
    if hidden == 0:
        return nn.Conv2d(in_channels, num_classes, 1)
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, num_classes, 1),
    )


class UniversalModel(nn.Module):
    """Encoder F shared by all domains, heads G_k (one per domain), embedding head E.

    ``forward(x, heads=[...], embed=bool)`` runs the encoder once and only the requested heads;
    logits are upsampled (bilinear) to the input size, the embedding is returned at the encoder's
    resolution (stride 8) and upsampled by the losses that need it (see ``upsample``). Inputs are float images on the 0..255
    scale; normalisation happens inside the model so deployment needs no preprocessing code.
    """

    def __init__(
        self,
        backbone: str,
        heads: Mapping[str, int],
        embed_dim: int = 100,
        head_channels: int = 0,
        pretrained: str | None = None,
        backbone_args: Mapping[str, object] | None = None,
        mean: Iterable[float] = (123.675, 116.28, 103.53),
        std: Iterable[float] = (58.395, 57.12, 57.375),
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError("the model needs at least one head (domain)")
        self.encoder = build_backbone(backbone, pretrained=pretrained, **dict(backbone_args or {}))
        c = self.encoder.out_channels
        self.heads = nn.ModuleDict({name: _head(c, k, head_channels) for name, k in heads.items()})
        self.embedding = nn.Conv2d(c, embed_dim, 1)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def head_names(self) -> list[str]:
        return list(self.heads.keys())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder features of raw (0..255) images."""
        return self.encoder((x - self.mean) / self.std)

    def decode(
        self, feats: torch.Tensor, size: tuple[int, int], heads: Iterable[str] = (), embed: bool = False
    ) -> dict[str, torch.Tensor]:
        """Run the requested heads (logits upsampled to ``size``) and optionally the embedding head."""
        out = {}
        for name in heads:
            if name not in self.heads:
                raise KeyError(f"model has no head '{name}'; heads: {', '.join(self.head_names)}")
            out[name] = upsample(self.heads[name](feats), size)
        if embed:
            out["embedding"] = self.embedding(feats)  # feature resolution; losses upsample as they need
        return out

    def forward(
        self,
        x: torch.Tensor | Mapping[str, torch.Tensor | Sequence[torch.Tensor]],
        heads: Iterable[str] | None = None,
        embed: bool = False,
    ) -> dict:
        """Logits per requested head (default: all) at input size and, if ``embed``, the embedding.

        With a mapping ``{domain: images}`` (a training step over several domains) each domain's
        images go through its own head, domains of equal image size share one encoder pass, and
        the result is ``{domain: {domain: logits[, "embedding": ...]}}``. A domain's value may also
        be a list of image batches: the k-th batches of all domains share the k-th encoder passes
        (so each batch of the list gets its own BatchNorm batch statistics) and the domain's outputs
        are concatenated in list order. One call per step keeps DistributedDataParallel's gradient
        hooks correct for the shared encoder.
        """
        if isinstance(x, Mapping):
            return self._forward_domains(x, embed)
        heads = self.head_names if heads is None else list(heads)
        return self.decode(self.features(x), tuple(x.shape[-2:]), heads, embed)

    def _forward_domains(
        self, inputs: Mapping[str, torch.Tensor | Sequence[torch.Tensor]], embed: bool
    ) -> dict[str, dict[str, torch.Tensor]]:
        batches = {name: list(v) if isinstance(v, (list, tuple)) else [v] for name, v in inputs.items()}
        groups: dict[tuple, list[str]] = {}
        for name, parts in batches.items():
            for k, images in enumerate(parts):
                groups.setdefault((k, tuple(images.shape[1:])), []).append(name)
        pieces: dict[str, list] = {name: [None] * len(parts) for name, parts in batches.items()}
        for (k, _), names in groups.items():
            images = [batches[n][k] for n in names]
            feats = self.features(torch.cat(images))
            size = tuple(images[0].shape[-2:])
            for n, f in zip(names, feats.split([im.shape[0] for im in images])):
                pieces[n][k] = self.decode(f, size, [n], embed)
        return {
            name: parts[0] if len(parts) == 1 else {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
            for name, parts in pieces.items()
        }


def upsample(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [B, C, h, w] maps to ``size`` (no-op when already that size)."""
    return t if tuple(t.shape[-2:]) == tuple(size) else F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def build_model(model_cfg, heads: Mapping[str, int]) -> UniversalModel:
    """Build the universal model from a ``ModelConfig`` and ``{head name: number of classes}``."""
    return UniversalModel(
        backbone=model_cfg.backbone,
        heads=heads,
        embed_dim=model_cfg.embed_dim,
        head_channels=model_cfg.head_channels,
        pretrained=model_cfg.pretrained,
        backbone_args=model_cfg.backbone_args,
        mean=model_cfg.mean,
        std=model_cfg.std,
    )
