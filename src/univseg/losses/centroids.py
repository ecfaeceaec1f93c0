"""The bank of class centroids in embedding space, one set per domain."""
from __future__ import annotations

from typing import Literal, Mapping

import torch

from ..data.label_space import IGNORE_INDEX


def class_sums(
    embedding: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sum of pixel embeddings and pixel counts.

    Args:
        embedding: [B, D, H, W]; labels: [B, H, W] train ids (``ignore_index`` skipped).

    Returns:
        sums [K, D] (float32) and counts [K] (float32).
    """
    d = embedding.shape[1]
    e = embedding.detach().float().permute(0, 2, 3, 1).reshape(-1, d)
    y = labels.reshape(-1)
    keep = (y != ignore_index) & (y >= 0) & (y < num_classes)
    e, y = e[keep], y[keep].long()
    sums = torch.zeros(num_classes, d, dtype=torch.float32, device=embedding.device).index_add_(0, y, e)
    counts = torch.bincount(y, minlength=num_classes).float()
    return sums, counts


class CentroidBank:
    """Class centroids c^(k)_j per domain k, with a validity mask for classes never seen.

    Modes: ``frozen`` keeps the centroids computed from the whole labeled set after the
    supervised warm-up (the paper); ``ema`` starts from the same and then follows every
    labeled batch: c <- m c + (1 - m) mean(batch embeddings of the class).
    """

    def __init__(
        self, num_classes: Mapping[str, int], dim: int, mode: Literal["frozen", "ema"] = "ema", momentum: float = 0.99
    ) -> None:
        self.mode = mode
        self.momentum = momentum
        self.centroids = {k: torch.zeros(n, dim) for k, n in num_classes.items()}
        self.valid = {k: torch.zeros(n, dtype=torch.bool) for k, n in num_classes.items()}
        self.ready = False

    def to(self, device: torch.device | str) -> "CentroidBank":
        self.centroids = {k: v.to(device) for k, v in self.centroids.items()}
        self.valid = {k: v.to(device) for k, v in self.valid.items()}
        return self

    def set_from_sums(self, domain: str, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """Set a domain's centroids to the means of accumulated sums; classes with no pixel stay invalid."""
        seen = counts > 0
        means = sums / counts.clamp(min=1).unsqueeze(1)
        self.centroids[domain] = torch.where(seen.unsqueeze(1), means, torch.zeros_like(means))
        self.valid[domain] = seen.clone()

    def update(self, domain: str, embedding: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> None:
        """EMA update from one labeled batch (no-op in frozen mode)."""
        if self.mode != "ema":
            return
        c = self.centroids[domain]
        sums, counts = class_sums(embedding, labels, c.shape[0], ignore_index)
        seen = counts > 0
        if not bool(seen.any()):
            return
        means = sums / counts.clamp(min=1).unsqueeze(1)
        old = self.valid[domain]
        blended = torch.where(old.unsqueeze(1), self.momentum * c + (1 - self.momentum) * means, means)
        self.centroids[domain] = torch.where(seen.unsqueeze(1), blended, c)
        self.valid[domain] = old | seen

    def get(self, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(centroids [K, D], valid [K]) of one domain."""
        return self.centroids[domain], self.valid[domain]

    def state_dict(self) -> dict:
        return {
            "mode": self.mode,
            "ready": self.ready,
            "centroids": {k: v.cpu() for k, v in self.centroids.items()},
            "valid": {k: v.cpu() for k, v in self.valid.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if set(state["centroids"]) != set(self.centroids):
            raise ValueError(
                f"centroid bank domains differ: checkpoint has {sorted(state['centroids'])}, "
                f"this run has {sorted(self.centroids)}"
            )
        device = next(iter(self.centroids.values())).device
        self.ready = bool(state["ready"])
        self.centroids = {k: v.to(device) for k, v in state["centroids"].items()}
        self.valid = {k: v.to(device) for k, v in state["valid"].items()}
