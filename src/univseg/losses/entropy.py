"""Similarity of pixel embeddings to class centroids, and the entropy minimised on unlabeled pixels."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Similarity = Literal["cosine", "dot"]


def similarity(
    embedding: torch.Tensor, centroids: torch.Tensor, mode: Similarity = "cosine", temperature: float = 1.0
) -> torch.Tensor:
    """Scores v = phi(e, c) / T of every pixel embedding against every centroid.

    Args:
        embedding: [B, D, H, W] pixel embeddings.
        centroids: [K, D] class centroids (always used L2-normalised, as in the paper).
        mode: ``cosine`` also normalises the embeddings (bounded scores: no collapse by growing
            the norm); ``dot`` keeps the raw embedding (paper fidelity).
        temperature: divides the scores.

    Returns:
        [B, K, H, W] scores.
    """
    c = F.normalize(centroids.float(), dim=1)
    e = embedding.float()
    if mode == "cosine":
        e = F.normalize(e, dim=1)
    elif mode != "dot":
        raise ValueError(f"unknown similarity '{mode}'; use 'cosine' or 'dot'")
    return torch.einsum("bdhw,kd->bkhw", e, c) / temperature


def masked_entropy(
    scores: torch.Tensor, valid_classes: torch.Tensor | None = None, pixel_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean Shannon entropy (nats) of softmax(scores) over classes, averaged over pixels.

    Classes where ``valid_classes`` is False (e.g. no labeled pixel seen yet) are left out of
    the softmax; pixels where ``pixel_mask`` is False are left out of the mean. With no valid
    class or no valid pixel the result is 0 (never NaN).
    """
    if valid_classes is not None:
        if not bool(valid_classes.any()):
            return scores.sum() * 0.0
        scores = scores[:, valid_classes]  # selecting (not -inf masking) keeps gradients finite
    logp = F.log_softmax(scores, dim=1)
    ent = -(logp.exp() * logp).sum(dim=1)  # [B, H, W]
    if pixel_mask is None:
        return ent.mean()
    n = pixel_mask.sum()
    if int(n) == 0:
        return scores.new_zeros(()) + ent.sum() * 0.0
    return (ent * pixel_mask).sum() / n


def alignment_entropy(
    embedding: torch.Tensor,
    centroids: torch.Tensor,
    valid_classes: torch.Tensor,
    mode: Similarity = "cosine",
    temperature: float = 1.0,
    pixel_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """H(softmax(phi(e, c) / T)) averaged over pixels: the paper's entropy term for one domain pair."""
    return masked_entropy(similarity(embedding, centroids, mode, temperature), valid_classes, pixel_mask)
