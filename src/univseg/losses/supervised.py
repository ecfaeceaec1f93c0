"""Supervised per-pixel cross-entropy."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.label_space import IGNORE_INDEX


def supervised_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mean cross-entropy over non-ignored pixels; exactly 0 (with a graph) when every pixel is ignored."""
    valid = target != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target, ignore_index=ignore_index)
