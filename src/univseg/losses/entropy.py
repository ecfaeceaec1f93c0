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
    return _divided(torch.einsum("bdhw,kd->bkhw", e, c), temperature)


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
    (scores,) = _upsampled_similarities(embedding, [centroids], tuple(size), mode, temperature, cosine_upsample)
    return scores


def _divided(t: torch.Tensor, divisor: float) -> torch.Tensor:
    """``t / divisor``, without a pass over ``t`` when the divisor is 1 (the paper's T)."""
    return t if divisor == 1.0 else t / divisor


def _upsampled_similarities(
    embedding: torch.Tensor,
    centroid_sets: Sequence[torch.Tensor],
    size: tuple[int, int],
    mode: Similarity,
    temperature: float,
    cosine_upsample: CosineUpsample,
) -> list[torch.Tensor]:
    """:func:`upsampled_similarity` for each centroid set.

    All sets are scored in one product at feature resolution, where the temperature is applied
    (upsampling is linear); each set's scores are then upsampled on their own, so no input-resolution
    tensor is divided by the temperature, concatenated or split (each is contiguous). With exact
    cosine the upsampled norm is computed once and the temperature folded into it.
    """
    if mode not in ("cosine", "dot"):
        raise ValueError(f"unknown similarity '{mode}'; use 'cosine' or 'dot'")
    if cosine_upsample not in COSINE_UPSAMPLE:
        raise ValueError(f"unknown cosine_upsample '{cosine_upsample}'; use one of {', '.join(COSINE_UPSAMPLE)}")
    c = F.normalize(torch.cat(list(centroid_sets)).float(), dim=1)
    e = embedding.float()
    resized = tuple(e.shape[-2:]) != tuple(size)
    exact_cosine = mode == "cosine" and cosine_upsample == "exact" and resized  # unresized: normalising is exact
    if mode == "cosine" and not exact_cosine:
        e = F.normalize(e, dim=1)
    scores = torch.einsum("bdhw,kd->bkhw", e, c)
    if not exact_cosine:
        scores = _divided(scores, temperature)
    parts = [bilinear_upsample(part, size) for part in scores.split([len(s) for s in centroid_sets], dim=1)]
    if not exact_cosine:
        return parts
    norm = upsampled_sq_norm(e, size).clamp_min(_EPS * _EPS).sqrt()  # = max(|up(E)|, eps), as F.normalize
    divisor = (norm if temperature == 1.0 else norm * temperature).unsqueeze(1)
    return [part / divisor for part in parts]


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

    The valid centroids of all sets are scored in one product at feature resolution, so the embedding
    is normalised, and its upsampled norm computed, once per call rather than once per set; each set's
    scores are upsampled on their own (contiguous, nothing split at input resolution).
    A set with no valid class gives 0 (with a graph), as :func:`masked_entropy`.
    """
    chosen = [c[valid] for c, valid in centroid_sets]
    counts = [int(c.shape[0]) for c in chosen]
    if sum(counts) == 0:
        return [embedding.sum() * 0.0 for _ in chosen]
    size = tuple(embedding.shape[-2:]) if size is None else tuple(size)
    scores = iter(_upsampled_similarities(embedding, [c for c in chosen if len(c)], size, mode, temperature, cosine_upsample))
    return [masked_entropy(next(scores)) if n > 0 else embedding.sum() * 0.0 for n in counts]
