"""The universal model: shared encoder and decoder, one segmentation head per domain, shared embedding head."""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import build_backbone
from .decoders import build_decoder
from .domain_norm import active_domain, domain_norm_layers, to_domain_norm

NORM_MODES = ("shared", "domain")


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


def _within_memory_budget(compiled: Callable[..., Any], budget: float) -> Callable[..., Any]:
    """``compiled``, compiling (and so partitioning forward and backward) under activation memory ``budget``."""

    @functools.wraps(compiled)
    def run(*args: Any, **kwargs: Any) -> Any:
        with torch._functorch.config.patch(activation_memory_budget=budget):
            return compiled(*args, **kwargs)

    return run


class UniversalModel(nn.Module):
    """Encoder F and decoder shared by all domains, heads G_k (one per domain), embedding head E.

    ``forward(x, heads=[...], embed=bool)`` runs the encoder and decoder once and only the
    requested heads; logits are upsampled (bilinear) to the input size, the embedding is returned
    at the decoder's resolution and upsampled by the losses that need it (see ``upsample``).
    Inputs are float images on the 0..255 scale; normalisation happens inside the model so
    deployment needs no preprocessing code.

    With ``norm="domain"`` every BatchNorm of the encoder and decoder has one copy per domain
    (:mod:`univseg.models.domain_norm`): a pass runs with the BatchNorm of ``domain`` (by default
    the requested head's), so a model asked for several heads runs one pass per head. With
    ``freeze_bn`` BatchNorm layers stay in eval mode while the model trains.
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
        decoder: str = "none",
        decoder_args: Mapping[str, object] | None = None,
        norm: str = "shared",
        freeze_bn: bool = False,
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError("the model needs at least one head (domain)")
        if norm not in NORM_MODES:
            raise ValueError(f"norm must be one of {NORM_MODES}, got {norm!r}")
        self.encoder = build_backbone(backbone, pretrained=pretrained, **dict(backbone_args or {}))
        self.decoder = build_decoder(
            decoder, self.encoder.out_channels, self.encoder.low_level_channels, **dict(decoder_args or {})
        )
        c = self.decoder.out_channels
        self.heads = nn.ModuleDict({name: _head(c, k, head_channels) for name, k in heads.items()})
        self.embedding = nn.Conv2d(c, embed_dim, 1)
        self.norm = norm
        self.freeze_bn = freeze_bn
        self.memory_format = torch.contiguous_format
        self._trunk = self._encode_decode
        if norm == "domain":
            to_domain_norm(self.encoder, heads)
            to_domain_norm(self.decoder, heads)
        self._domain_norms = domain_norm_layers(self)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "UniversalModel":
        """Set training mode; with ``freeze_bn`` every BatchNorm stays in eval mode (running statistics)."""
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def use_channels_last(self, enabled: bool = True) -> "UniversalModel":
        """Store weights and run the encoder and decoder in channels-last (NHWC) memory layout, or back to NCHW."""
        self.memory_format = torch.channels_last if enabled else torch.contiguous_format
        return self.to(memory_format=self.memory_format)

    def use_compile(self, enabled: bool = True, memory_budget: float = 1.0) -> "UniversalModel":
        """Run the encoder and decoder as one ``torch.compile``'d function (TorchInductor: BatchNorm,
        activations and additions fused around the convolutions), or eagerly again. Weights and
        state_dict keys are unchanged; compiling happens at the first pass of each input shape,
        train/eval mode and domain (per-domain BatchNorm). ``memory_budget`` < 1: the compiled
        training passes keep at most that share of their activations for the backward pass
        (torch's ``activation_memory_budget``: the partitioner recomputes the cheapest operations)."""
        trunk = torch.compile(self._encode_decode) if enabled else self._encode_decode
        self._trunk = _within_memory_budget(trunk, memory_budget) if enabled and memory_budget < 1.0 else trunk
        return self

    @property
    def compiled(self) -> bool:
        """Whether the encoder and decoder run compiled (:meth:`use_compile`)."""
        return self._trunk != self._encode_decode

    @property
    def head_names(self) -> list[str]:
        return list(self.heads.keys())

    def features(self, x: torch.Tensor, domain: str | None = None) -> torch.Tensor:
        """Decoder features of raw (0..255) images, with ``domain``'s BatchNorm under per-domain norm."""
        if self.norm == "domain" and domain not in self.heads:
            raise KeyError(f"per-domain BatchNorm: give the domain of this pass, one of {self.head_names} (got {domain!r})")
        return self._features(x, domain, 0.0)[0]

    def _features(self, x: torch.Tensor, domain: str | None, dropout: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Decoder features and, with ``dropout > 0``, the decoder features of the same encoder
        features after channel dropout (UniMatch's feature perturbation); one decoder pass over both."""
        with active_domain(self._domain_norms, domain):
            return self._trunk(x.contiguous(memory_format=self._pass_memory_format(x)), dropout)

    def _pass_memory_format(self, x: torch.Tensor) -> torch.memory_format:
        """The layout a pass runs in: the model's, except that passes without gradients under bf16
        autocast on CPU always run channels-last, where oneDNN's bf16 convolutions are 1.5-1.9x
        faster (MobileNetV2, DRN-D-22; same logits, or differing by bf16 rounding)."""
        if (
            x.device.type == "cpu"
            and not torch.is_grad_enabled()
            and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
        ):
            return torch.channels_last
        return self.memory_format

    def _encode_decode(self, x: torch.Tensor, dropout: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`_features` under the active domain's BatchNorm (the part :meth:`use_compile` compiles);
        ``x`` in the pass's memory layout, which the normalisation keeps."""
        enc = self.encoder.forward_features((x - self.mean) / self.std)
        if dropout <= 0:
            return self.decoder(enc), None
        both = {k: torch.cat([v, F.dropout2d(v, dropout, training=True)]) for k, v in enc.items()}
        clean, perturbed = self.decoder(both).chunk(2)
        return clean, perturbed

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
            out["embedding"] = self.embedding(feats)  # decoder resolution; losses upsample as they need
        return out

    def forward(
        self,
        x: torch.Tensor | Mapping[str, torch.Tensor | Sequence[torch.Tensor]],
        heads: Iterable[str] | None = None,
        embed: bool = False,
        domain: str | None = None,
        feature_dropout: float = 0.0,
        all_heads: bool = False,
    ) -> dict:
        """Logits per requested head (default: all) at input size and, if ``embed``, the embedding.

        ``domain`` picks the BatchNorm under per-domain norm (default: each requested head's own,
        one pass per head; the embedding then needs ``domain``); shared norm ignores it.

        With a mapping ``{domain: images}`` (a training step over several domains) each domain's
        images go through its own head, domains of equal image size share one encoder pass (not
        under per-domain norm, where each domain has its own), and the result is
        ``{domain: {domain: logits[, "embedding": ...]}}``. A domain's value may also be a list of
        image batches: the k-th batches of all domains share the k-th encoder passes (so each
        batch of the list gets its own BatchNorm batch statistics) and the domain's outputs are
        concatenated in list order. One call per step keeps DistributedDataParallel's gradient
        hooks correct for the shared encoder. With ``feature_dropout = p > 0`` the first batch of
        each domain is also decoded from its encoder features after ``Dropout2d(p)`` (both feature
        levels; UniMatch's feature perturbation, Yang et al. CVPR 2023): its domain's logits on
        those come back as ``"fp"`` (rows of the first batch only). With ``all_heads`` every head
        runs on every domain's images (``{domain: {head: logits, ...}}`` for all heads: predictions
        of a domain's pixels in the other label spaces). ``heads`` limits the heads run in this form
        too (``heads=[]``: the embedding alone, e.g. for unlabeled images no head's loss reads).
        """
        if isinstance(x, Mapping):
            return self._forward_domains(x, embed, feature_dropout, all_heads, heads)
        if feature_dropout > 0:
            raise ValueError("feature_dropout needs the {domain: images} form of the input")
        heads = self.head_names if heads is None else list(heads)
        size = tuple(x.shape[-2:])
        if self.norm == "shared" or domain is not None:
            return self.decode(self.features(x, domain), size, heads, embed)
        if len(heads) == 1:
            return self.decode(self.features(x, heads[0]), size, heads, embed)
        if embed:
            raise ValueError("the embedding of a model with per-domain BatchNorm needs domain=<head name>")
        return {h: self.decode(self.features(x, h), size, [h])[h] for h in heads}

    def encoder_passes(self, shapes: Mapping[str, tuple[int, ...]]) -> list[list[str]]:
        """The domains whose image batches (``{domain: image shape [C, H, W]}``, one batch each) share
        an encoder pass in a ``{domain: images}`` call: equal shapes under shared norm, each domain
        alone under per-domain norm."""
        groups: dict[tuple, list[str]] = {}
        for name, shape in shapes.items():
            own_pass = (name,) if self.norm == "domain" else ()
            groups.setdefault((tuple(shape), *own_pass), []).append(name)
        return list(groups.values())

    def _forward_domains(
        self,
        inputs: Mapping[str, torch.Tensor | Sequence[torch.Tensor]],
        embed: bool,
        feature_dropout: float = 0.0,
        all_heads: bool = False,
        heads: Iterable[str] | None = None,
    ) -> dict[str, dict[str, torch.Tensor]]:
        allowed = None if heads is None else set(heads)
        batches = {name: list(v) if isinstance(v, (list, tuple)) else [v] for name, v in inputs.items()}
        passes: dict[tuple[int, str], tuple[str, ...]] = {}  # (k, domain) -> the domains of its k-th pass
        for k in range(max(len(parts) for parts in batches.values())):
            shapes = {name: tuple(parts[k].shape[1:]) for name, parts in batches.items() if k < len(parts)}
            passes |= {(k, n): tuple(names) for names in self.encoder_passes(shapes) for n in names}
        order = dict.fromkeys((k, passes[k, name]) for name, parts in batches.items() for k in range(len(parts)))
        pieces: dict[str, list] = {name: [None] * len(parts) for name, parts in batches.items()}
        for k, names in order:
            images = [batches[n][k] for n in names]
            dropout = feature_dropout if k == 0 else 0.0
            feats, perturbed = self._features(torch.cat(images), names[0] if self.norm == "domain" else None, dropout)
            size = tuple(images[0].shape[-2:])
            rows = [im.shape[0] for im in images]
            perturbed_rows = perturbed.split(rows) if perturbed is not None else [None] * len(names)
            for n, f, fp in zip(names, feats.split(rows), perturbed_rows):
                wanted = [h for h in (self.head_names if all_heads else [n]) if allowed is None or h in allowed]
                pieces[n][k] = self.decode(f, size, wanted, embed)
                if fp is not None:
                    pieces[n][k]["fp"] = upsample(self.heads[n](fp), size)
        return {name: _concat_parts(parts) for name, parts in pieces.items()}


def _concat_parts(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One domain's outputs of its batches, concatenated in order (keys of the first batch only, e.g. ``fp``, stay as they are)."""
    if len(parts) == 1:
        return parts[0]
    out = {key: torch.cat([p[key] for p in parts]) for key in parts[1]}
    return {**parts[0], **out}


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
        decoder=model_cfg.decoder,
        decoder_args=model_cfg.decoder_args,
        norm=model_cfg.norm,
        freeze_bn=model_cfg.freeze_bn,
    )
