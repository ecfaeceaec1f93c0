"""Training losses: supervised cross-entropy and entropy alignment with a centroid bank."""
from .centroids import CentroidBank, class_sums
from .entropy import (
    alignment_entropies, alignment_entropy, masked_entropy, nearest_centroid, similarity, upsampled_similarity,
)
from .supervised import supervised_ce

__all__ = [
    "CentroidBank", "class_sums", "alignment_entropies", "alignment_entropy", "masked_entropy", "nearest_centroid", "similarity",
    "supervised_ce", "upsampled_similarity",
]
