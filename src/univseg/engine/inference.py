"""Test-time inference: whole image or sliding window, with optional flip and multi-scale augmentation.

:func:`infer_logits` is the one place where evaluation (``univseg eval``, evaluation during
training, ``univseg experiment``) and prediction (:class:`~univseg.engine.predictor.Predictor`,
``univseg predict``) turn images into logits.

Every average is over **logits**, not softmax probabilities: the overlapping windows of a sliding
window (as mmsegmentation does), the flipped view and the scales alike. One rule for all three
keeps the result a logit map (``Predictor.logits`` means the same with or without augmentation),
and one view (whole image, no flip, scale 1) returns the model's logits unchanged. mmsegmentation's
flip/scale TTA averages probabilities instead; the two arg-maxes differ only where the views
disagree and one is far more confident than the others.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from pydantic import ValidationError

from ..config import InferenceConfig
from ..errors import ConfigError
from ..models.universal import upsample
from ..validation import dotted, error_lines


@dataclass(frozen=True)
class InferenceSettings:
    """Whole image or sliding window (``crop`` [h, w] every ``stride`` [h, w] pixels), and
    test-time augmentation: ``flip`` (also the mirrored image) and ``scales`` (resize factors).

    The keys and rules are those of ``eval`` in the config (:class:`~univseg.config.InferenceConfig`);
    invalid values raise ConfigError naming the setting. The default is one whole-image pass.
    """

    mode: str = "whole"
    crop: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        try:
            checked = InferenceConfig(
                mode=self.mode, crop=self.crop, stride=self.stride, flip=self.flip, scales=list(self.scales)
            )
        except ValidationError as e:
            lines = error_lines(e, InferenceConfig)
            key = dotted(e.errors()[0]["loc"])
            raise ConfigError("invalid inference settings:\n  " + "\n  ".join(lines), key=key) from None
        for name in ("crop", "stride"):
            object.__setattr__(self, name, getattr(checked, name))
        object.__setattr__(self, "scales", tuple(checked.scales))

    @classmethod
    def from_config(cls, cfg: InferenceConfig) -> "InferenceSettings":
        """The settings of a config section holding the inference keys (e.g. ``cfg.eval``)."""
        return cls(cfg.mode, cfg.crop, cfg.stride, cfg.flip, tuple(cfg.scales))

    @property
    def views(self) -> list[tuple[float, bool]]:
        """``(scale, flipped)`` of every augmented view whose logits are averaged."""
        return [(s, f) for s in self.scales for f in ((False, True) if self.flip else (False,))]


def infer_logits(
    model: torch.nn.Module, images: torch.Tensor, heads: Sequence[str], settings: InferenceSettings = InferenceSettings()
) -> dict[str, torch.Tensor]:
    """``{head: [B, K, H, W] logits}`` of a [B, 3, H, W] float (0..255) batch under ``settings``.

    Runs under the caller's autocast and grad mode. The model is called as ``model(x, heads=heads)``,
    so under per-domain BatchNorm each head's pass uses that head's domain (one pass per head), and
    with shared BatchNorm all heads share one encoder pass per window and view.
    """
    size = tuple(images.shape[-2:])
    views = settings.views
    total: dict[str, torch.Tensor] = {}
    for scale, flipped in views:
        x = upsample(images, _scaled(size, scale))
        x = x.flip(-1) if flipped else x
        out = _slide(model, x, heads, settings) if settings.mode == "slide" else _forward(model, x, heads)
        for head, logits in out.items():
            logits = upsample(logits.flip(-1) if flipped else logits, size)
            total[head] = logits if head not in total else total[head] + logits
    return {head: t / len(views) for head, t in total.items()}  # exact for one view: x / 1 == x


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of sliding windows along one axis: every ``stride`` pixels, the last window
    aligned to the edge so the border is covered; one window at 0 when ``length <= crop``."""
    if length <= crop:
        return [0]
    count = -(-(length - crop) // stride) + 1
    return [min(i * stride, length - crop) for i in range(count)]


def _forward(model: torch.nn.Module, x: torch.Tensor, heads: Sequence[str]) -> dict[str, torch.Tensor]:
    """Float32 logits of the requested heads for one whole input."""
    return {h: t.float() for h, t in model(x, heads=list(heads)).items()}


def _slide(
    model: torch.nn.Module, x: torch.Tensor, heads: Sequence[str], settings: InferenceSettings
) -> dict[str, torch.Tensor]:
    """Logits summed over the sliding windows and divided by the per-pixel window count; a window
    is ``crop`` clipped to the image, so an image within one crop gets exactly whole-image logits."""
    (h, w), (ch, cw), (sh, sw) = x.shape[-2:], settings.crop, settings.stride
    total: dict[str, torch.Tensor] = {}
    count = torch.zeros((h, w), device=x.device)
    for y in window_starts(h, ch, sh):
        for x0 in window_starts(w, cw, sw):
            rows, cols = slice(y, y + ch), slice(x0, x0 + cw)
            for head, logits in _forward(model, x[..., rows, cols], heads).items():
                if head not in total:
                    total[head] = logits.new_zeros((*logits.shape[:2], h, w))
                total[head][..., rows, cols] += logits
            count[rows, cols] += 1
    return {head: t / count for head, t in total.items()}


def _scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """``size`` times ``scale``, rounded, at least one pixel per side."""
    return tuple(max(1, round(s * scale)) for s in size)
