"""The bank of class centroids in embedding space, one set per domain, kept identical across ranks."""
from __future__ import annotations

from typing import Literal, Mapping

import torch
from torch import nn

from ..data.label_space import IGNORE_INDEX
from ..utils import dist
from .bilinear import bilinear_taps


def class_sums(
    embedding: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sum of pixel embeddings and pixel counts.

    Args:
        embedding: [B, D, h, w] at the labels' size, or at another (feature) resolution: then the
            sums are those of ``upsample(embedding, (H, W))`` (bilinear, align_corners=False, the
            model's ``upsample``), computed without that [B, D, H, W] tensor (:func:`upsampled_class_sums`).
        labels: [B, H, W] train ids (``ignore_index`` skipped).

    Returns:
        sums [K, D] (float32) and counts [K] (float32).
    """
    if tuple(embedding.shape[-2:]) != tuple(labels.shape[-2:]):
        return upsampled_class_sums(embedding, labels, num_classes, ignore_index)
    d = embedding.shape[1]
    e = embedding.detach().float().permute(0, 2, 3, 1).reshape(-1, d)
    y = labels.reshape(-1)
    keep = (y != ignore_index) & (y >= 0) & (y < num_classes)
    e, y = e[keep], y[keep].long()
    sums = torch.zeros(num_classes, d, dtype=torch.float32, device=embedding.device).index_add_(0, y, e)
    counts = torch.bincount(y, minlength=num_classes).float()
    return sums, counts


def upsampled_class_sums(
    embedding: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """``class_sums(upsample(embedding, labels' size), labels)`` from the embedding at feature resolution.

    The sum of class k is sum over labeled pixels p of class k of up(E)(p) = sum_q W_k(q) E(q), where
    W_k(q) adds the bilinear weights w(p, q) of those pixels (the transposed upsampling applied to the
    class's one-hot mask). W [B, K, h, w] is built by scattering each kept pixel's four tap weights
    (:func:`~univseg.losses.bilinear.bilinear_taps`), then contracted with E at feature resolution:
    memory O(B H W) integers plus O(B K h w), never [B, D, H, W]. Equal to the reference up to float
    rounding (summation order); counts are identical.
    """
    b, d, h, w = embedding.shape
    out_h, out_w = labels.shape[-2:]
    device = embedding.device
    ty, tx = bilinear_taps(h, out_h, device), bilinear_taps(w, out_w, device)
    y = labels.to(device).long()
    keep = (y != ignore_index) & (y >= 0) & (y < num_classes)
    counts = torch.bincount(y[keep], minlength=num_classes).float()
    bi, yi, xi = keep.nonzero(as_tuple=True)  # kept pixels
    cls = y[bi, yi, xi]
    # flat index into the padded weights [B, K, h+1, w+1] (i0 + 1 / j0 + 1 may be one past the end, with weight 0)
    plane = (bi * num_classes + cls) * (h + 1)
    weights = torch.zeros(b * num_classes * (h + 1) * (w + 1), dtype=torch.float32, device=device)
    for r, a in ((0, ty.w0), (1, ty.w1)):
        row = (plane + ty.index[yi] + r) * (w + 1)
        for s, bw in ((0, tx.w0), (1, tx.w1)):
            weights.index_add_(0, row + tx.index[xi] + s, a[yi] * bw[xi])
    weights = weights.view(b, num_classes, h + 1, w + 1)[..., :h, :w]  # the padding only ever gets weight 0
    sums = torch.einsum("bkij,bdij->kd", weights, embedding.detach().float())
    return sums, counts


def all_reduce_sums(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums and counts added over every rank (one collective; identity in one process)."""
    k = counts.shape[0]
    packed = dist.all_reduce_sum(torch.cat([sums, counts.unsqueeze(1)], dim=1))
    return packed[:, :-1], packed[:, -1].reshape(k)


class DomainCentroids(nn.Module):
    """One domain's centroids [K, D] and which of its classes have been seen [K] (buffers)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("centroids", torch.zeros(num_classes, dim))
        self.register_buffer("valid", torch.zeros(num_classes, dtype=torch.bool))


class CentroidBank(nn.Module):
    """Class centroids c^(k)_j per domain k, with a validity mask for classes never seen.

    Modes: ``frozen`` keeps the centroids computed from the whole labeled set after the
    supervised warm-up (the paper); ``ema`` starts from the same and then follows every
    labeled batch: c <- m c + (1 - m) mean(batch embeddings of the class).

    The state lives in buffers (saved with the method, moved with ``.to``). Under
    torch.distributed every update first adds the per-class sums and counts over all ranks, so
    the ranks' centroids stay identical and equal to one process seeing the union of the batches;
    every rank must therefore call ``update`` for the same domains in the same order.
    """

    def __init__(
        self, num_classes: Mapping[str, int], dim: int, mode: Literal["frozen", "ema"] = "ema", momentum: float = 0.99
    ) -> None:
        super().__init__()
        self.mode = mode
        self.momentum = momentum
        self.domains = nn.ModuleDict({k: DomainCentroids(n, dim) for k, n in num_classes.items()})
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @property
    def ready(self) -> bool:
        """Whether the centroids have been set (after the warm-up)."""
        return bool(self.initialised)

    @ready.setter
    def ready(self, value: bool) -> None:
        self.initialised.fill_(bool(value))

    def set_from_sums(self, domain: str, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """Set a domain's centroids to the means of accumulated sums; classes with no pixel stay invalid.

        ``sums``/``counts`` must already cover every rank's images (see :func:`all_reduce_sums`).
        """
        store = self.domains[domain]
        seen = counts > 0
        means = sums / counts.clamp(min=1).unsqueeze(1)
        store.centroids.copy_(torch.where(seen.unsqueeze(1), means, torch.zeros_like(means)))
        store.valid.copy_(seen)

    def update(self, domain: str, embedding: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> None:
        """EMA update from one labeled batch of this rank, merged with the other ranks' (no-op when frozen)."""
        if self.mode != "ema":
            return
        store = self.domains[domain]
        sums, counts = all_reduce_sums(*class_sums(embedding, labels, store.centroids.shape[0], ignore_index))
        seen = counts > 0
        if not bool(seen.any()):
            return
        c, old = store.centroids, store.valid
        means = sums / counts.clamp(min=1).unsqueeze(1)
        blended = torch.where(old.unsqueeze(1), self.momentum * c + (1 - self.momentum) * means, means)
        store.centroids.copy_(torch.where(seen.unsqueeze(1), blended, c))
        store.valid.copy_(old | seen)

    def get(self, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(centroids [K, D], valid [K]) of one domain."""
        store = self.domains[domain]
        return store.centroids, store.valid
