"""Per-domain normalisation: separate BatchNorm statistics and affine parameters per domain.

Domain-specific BatchNorm (Chang, You, Seo, Kwak, Han, "Domain-Specific Batch Normalization for
Unsupervised Domain Adaptation", CVPR 2019): every BatchNorm layer of the shared network gets one
copy per domain; all convolutions stay shared. Which copy runs is the *active domain*, set around
each pass with :func:`active_domain`; a batch therefore only ever updates the running statistics
of its own domain, and evaluation in a label space uses that space's domain's statistics.
"""
from __future__ import annotations

import contextlib
import copy
import re
from typing import Iterable, Iterator, Mapping

from torch import Tensor, nn


class DomainBatchNorm2d(nn.Module):
    """One ``BatchNorm2d`` per domain (``norms[domain]``); the active domain's runs."""

    def __init__(self, template: nn.BatchNorm2d, domains: Iterable[str]) -> None:
        super().__init__()
        self.norms = nn.ModuleDict({d: copy.deepcopy(template) for d in domains})
        self.active: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.active is None:
            raise RuntimeError(
                f"per-domain BatchNorm needs a domain for this pass; one of {list(self.norms)} "
                "(the model sets it from the requested head)"
            )
        return self.norms[self.active](x)


def to_domain_norm(module: nn.Module, domains: Iterable[str]) -> nn.Module:
    """Replace every ``BatchNorm2d`` inside ``module`` (in place) by a :class:`DomainBatchNorm2d`
    whose per-domain copies start from that layer's parameters and statistics; returns ``module``."""
    domains = list(domains)
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, DomainBatchNorm2d(child, domains))
        else:
            to_domain_norm(child, domains)
    return module


def domain_norm_layers(module: nn.Module) -> list[DomainBatchNorm2d]:
    """The :class:`DomainBatchNorm2d` layers inside ``module``."""
    return [m for m in module.modules() if isinstance(m, DomainBatchNorm2d)]


@contextlib.contextmanager
def active_domain(layers: list[DomainBatchNorm2d], domain: str | None) -> Iterator[None]:
    """Run the enclosed pass with ``domain``'s BatchNorm in every layer of ``layers``."""
    previous = [layer.active for layer in layers]
    for layer in layers:
        layer.active = domain
    try:
        yield
    finally:
        for layer, before in zip(layers, previous):
            layer.active = before


_PER_DOMAIN_KEY = re.compile(r"^(?P<layer>.+)\.norms\.(?P<domain>[^.]+)\.(?P<leaf>[^.]+)$")


def adapt_norm_keys(saved: Mapping[str, Tensor], own_keys: Iterable[str], source_domain: str | None = None) -> dict[str, Tensor]:
    """``saved`` plus the BatchNorm tensors a model with another normalisation layout needs.

    A per-domain key the file lacks (a new domain, or a file with shared BatchNorm) is taken from
    ``source_domain``'s copy of that layer (default: the first domain the file has for it), else
    from the shared layer; a shared key the file lacks is taken from ``source_domain``'s copy.
    """
    out = dict(saved)
    for key in own_keys:
        if key in saved:
            continue
        match = _PER_DOMAIN_KEY.match(key)
        if match:
            layer, leaf = match["layer"], match["leaf"]
            candidates = [f"{layer}.norms.{d}.{leaf}" for d in _domains_of(saved, layer, source_domain)] + [f"{layer}.{leaf}"]
        else:
            layer, _, leaf = key.rpartition(".")
            candidates = [f"{layer}.norms.{d}.{leaf}" for d in _domains_of(saved, layer, source_domain)]
        found = next((c for c in candidates if c in saved), None)
        if found is not None:
            out[key] = saved[found]
    return out


def _domains_of(saved: Mapping[str, Tensor], layer: str, preferred: str | None) -> list[str]:
    """Domains with a copy of BatchNorm ``layer`` in ``saved``, ``preferred`` first when it has one."""
    prefix = f"{layer}.norms."
    found = list(dict.fromkeys(k[len(prefix):].split(".", 1)[0] for k in saved if k.startswith(prefix)))
    return sorted(found, key=lambda d: d != preferred)
