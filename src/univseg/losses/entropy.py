"""Similarity of pixel embeddings to class centroids, and the entropy minimised on unlabeled pixels.

At input resolution (the paper: embeddings bilinearly upsampled to the image size first) the scores
are computed without the upsampled [B, D, H, W] embedding (:func:`upsampled_similarity`): bilinear
upsampling is linear, so up(E) . c = up(E . c) and only the K score channels are upsampled.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from .bilinear import bilinear_upsample, upsampled_sq_norm

Similarity = Literal["cosine", "dot"]
CosineUpsample = Literal["exact", "scores"]
COSINE_UPSAMPLE = ("exact", "scores")
_EPS = 1e-12  # F.normalize's default


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


def upsampled_similarity(
    embedding: torch.Tensor,
    centroids: torch.Tensor,
    size: tuple[int, int],
    mode: Similarity = "cosine",
    temperature: float = 1.0,
    cosine_upsample: CosineUpsample = "exact",
) -> torch.Tensor:
    """``similarity(upsample(embedding, size), centroids, mode, temperature)`` [B, K, H, W] without the
    upsampled [B, D, H, W] embedding (bilinear, align_corners=False, as the model's ``upsample``).

    ``dot``: up(E) . c = up(E . c): the K scores are computed at feature resolution and upsampled;
    exact up to float rounding. ``cosine`` with ``cosine_upsample``:

    * ``exact``: up(E . c) / |up(E)|, the norm of the upsampled embedding from inner products of
      neighbouring feature pixels (:func:`~univseg.losses.bilinear.upsampled_sq_norm`); equal to the
      reference up to float rounding, memory O(B (K + few) H W) in the forward and the backward.
    * ``scores``: up(E / |E| . c): normalised and scored at feature resolution, then the scores are
      upsampled (cheapest). An approximation: equal where neighbouring feature embeddings point the
      same way, but between neighbours that differ the interpolated unit vectors are shorter than 1
      (scores pulled towards 0, a flatter softmax) and are weighted without their norms. Measured in
      tests/test_lean_entropy.py (8x upsampling, D = 100, T = 0.1): mean |score error| 0.002 on
      smooth maps (entropy within 1 %); 0.015 on maps of class regions, whose entropy, dominated by
      the region boundaries, comes out about twice the exact one.

    A no-op resize (``size`` equal to the embedding's) is plain :func:`similarity`.
    """
    if tuple(embedding.shape[-2:]) == tuple(size):
        return similarity(embedding, centroids, mode, temperature)
    if mode not in ("cosine", "dot"):
        raise ValueError(f"unknown similarity '{mode}'; use 'cosine' or 'dot'")
    if cosine_upsample not in COSINE_UPSAMPLE:
        raise ValueError(f"unknown cosine_upsample '{cosine_upsample}'; use one of {', '.join(COSINE_UPSAMPLE)}")
    c = F.normalize(centroids.float(), dim=1)
    e = embedding.float()
    if mode == "cosine" and cosine_upsample == "scores":
        e = F.normalize(e, dim=1)
    scores = bilinear_upsample(torch.einsum("bdhw,kd->bkhw", e, c), tuple(size))
    if mode == "cosine" and cosine_upsample == "exact":
        norm = upsampled_sq_norm(e, tuple(size)).clamp_min(_EPS * _EPS).sqrt()  # = max(|up(E)|, eps), as F.normalize
        scores = scores / norm.unsqueeze(1)
    return scores / temperature


def nearest_centroid(
    embedding: torch.Tensor,
    centroids: torch.Tensor,
    valid: torch.Tensor,
    size: tuple[int, int],
    mode: Similarity = "cosine",
    cosine_upsample: CosineUpsample = "exact",
) -> torch.Tensor:
    """[B, H, W] (int64) id of the most similar valid centroid (``valid`` [K] bool) of every pixel of
    the embedding upsampled to ``size`` (:func:`upsampled_similarity`); -1 everywhere when no
    centroid is valid."""
    b = embedding.shape[0]
    ids = valid.nonzero().squeeze(1)
    if ids.numel() == 0:
        return torch.full((b, *size), -1, dtype=torch.long, device=embedding.device)
    scores = upsampled_similarity(embedding, centroids[valid], tuple(size), mode, 1.0, cosine_upsample)
    return ids[scores.argmax(1)]


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


def alignment_entropies(
    embedding: torch.Tensor,
    centroid_sets: Sequence[tuple[torch.Tensor, torch.Tensor]],
    mode: Similarity = "cosine",
    temperature: float = 1.0,
    size: tuple[int, int] | None = None,
    cosine_upsample: CosineUpsample = "exact",
) -> list[torch.Tensor]:
    """``alignment_entropy(upsample(embedding, size), c, valid, ...)`` for every ``(c, valid)`` of
    ``centroid_sets``, in order (``size`` None: the embedding's own resolution).

    The valid centroids of all sets are scored in one pass (:func:`upsampled_similarity`), so the
    embedding is normalised, and its upsampled norm computed, once per call rather than once per set.
    A set with no valid class gives 0 (with a graph), as :func:`masked_entropy`.
    """
    chosen = [c[valid] for c, valid in centroid_sets]
    counts = [int(c.shape[0]) for c in chosen]
    if sum(counts) == 0:
        return [embedding.sum() * 0.0 for _ in chosen]
    size = tuple(embedding.shape[-2:]) if size is None else tuple(size)
    scores = upsampled_similarity(embedding, torch.cat(chosen), size, mode, temperature, cosine_upsample)
    return [
        masked_entropy(part) if n > 0 else scores.sum() * 0.0
        for part, n in zip(scores.split(counts, dim=1), counts)
    ]
