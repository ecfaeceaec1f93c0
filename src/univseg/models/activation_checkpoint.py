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
import functools
import types
from typing import Callable, Iterator

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


def run_unit(unit: nn.Module, x: Tensor, enabled: bool, call: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """``unit(x)`` (or ``call(x)``, the unit's computation by another route), checkpointed when
    ``enabled``, the unit is training and gradients are on."""
    call = call or unit
    if not (enabled and unit.training and torch.is_grad_enabled()):
        return call(x)
    if torch.compiler.is_compiling():
        return checkpoint(call, x, use_reentrant=False)
    batch_norms = [m for m in unit.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    domains = [(m, m.active) for m in unit.modules() if isinstance(m, DomainBatchNorm2d)]
    return checkpoint(
        call, x, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), _as_in_forward(batch_norms, domains))
    )


def checkpoint_in_place(unit: nn.Module) -> nn.Module:
    """Route ``unit``'s own forward through :func:`run_unit`, enabled by its ``_univseg_checkpointed``
    flag (:attr:`Backbone.activation_checkpointing` sets it): for encoders whose forward loop is not
    ours (timm's feature extractors). Parameters and state_dict keys are unchanged; a deep copy of the
    module is routed the same way. Returns ``unit``."""
    unit.forward = types.MethodType(_checkpointed_forward, unit)
    return unit


def _checkpointed_forward(unit: nn.Module, x: Tensor) -> Tensor:
    return run_unit(unit, x, getattr(unit, "_univseg_checkpointed", False), functools.partial(type(unit).forward, unit))
