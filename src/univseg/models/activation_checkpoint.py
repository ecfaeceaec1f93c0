"""Activation checkpointing of encoder units (``train.activation_checkpointing``).

A checkpointed unit keeps only its input for the backward pass and runs its forward again
there (``torch.utils.checkpoint``, non-reentrant): less memory for about one more forward of the
encoder. The recomputation must not change anything the first forward already did, so it runs
with the BatchNorm running statistics frozen (they were updated once, by the first forward) and
with the per-domain BatchNorm the first forward used (its ``active_domain`` context has ended by
the time the backward runs). Under ``torch.compile`` the compiled graph's own recomputation
replays the traced forward, whose BatchNorm and domain were fixed when it was traced and whose
running-statistics updates are not part of what is recomputed; there the plain checkpoint is used.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .domain_norm import DomainBatchNorm2d


@contextlib.contextmanager
def _as_in_forward(batch_norms: list[nn.modules.batchnorm._BatchNorm], domains: list[tuple[DomainBatchNorm2d, str | None]]) -> Iterator[None]:
    """Recompute context: running statistics untouched, each per-domain layer on the forward's domain."""
    saved = [(bn, bn.momentum, bn.num_batches_tracked.clone() if bn.num_batches_tracked is not None else None) for bn in batch_norms]
    previous = [(layer, layer.active) for layer, _ in domains]
    for bn in batch_norms:
        bn.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    for layer, domain in domains:
        layer.active = domain
    try:
        yield
    finally:
        for bn, momentum, tracked in saved:
            bn.momentum = momentum
            if tracked is not None:
                bn.num_batches_tracked.copy_(tracked)
        for layer, active in previous:
            layer.active = active


def run_unit(unit: nn.Module, x: Tensor, enabled: bool) -> Tensor:
    """``unit(x)``, checkpointed when ``enabled``, the unit is training and gradients are on."""
    if not (enabled and unit.training and torch.is_grad_enabled()):
        return unit(x)
    if torch.compiler.is_compiling():
        return checkpoint(unit, x, use_reentrant=False)
    batch_norms = [m for m in unit.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    domains = [(m, m.active) for m in unit.modules() if isinstance(m, DomainBatchNorm2d)]
    return checkpoint(
        unit, x, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), _as_in_forward(batch_norms, domains))
    )
