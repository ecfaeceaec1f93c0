"""Training methods, registered by name: what loss one step computes from per-domain batches."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..config import ConfigError
from ..data.label_space import LabelSpace
from ..losses import CentroidBank, alignment_entropy, supervised_ce
from ..models.universal import upsample
from ..registry import Registry

# (domain name -> (per-class embedding sums [K, D], pixel counts [K])) over a domain's labeled set
CentroidSource = Callable[[], Mapping[str, tuple[torch.Tensor, torch.Tensor]]]


class Method:
    """Base class. The trainer calls, every iteration::

        method.prepare(iteration, centroid_source)      # e.g. compute centroids once warm-up ends
        terms = method.losses(model, batches)           # {'loss': total, other terms...}
        terms['loss'].backward(); optimizer.step()
        terms |= method.after_step(iteration)           # e.g. a discriminator's own update

    ``batches[domain]`` holds ``image`` [B,3,H,W] and ``label`` [B,H,W] of labeled images and,
    when ``needs_unlabeled``, ``unlabeled`` [B',3,H,W].
    """

    needs_unlabeled: bool = False
    total_iters: int | None = None  # the run's train.iters, set by the trainer (for schedules of auxiliary nets)

    def __init__(self, cfg, label_spaces: Mapping[str, LabelSpace], embed_dim: int) -> None:
        self.cfg = cfg
        self.label_spaces = dict(label_spaces)
        self.embed_dim = embed_dim

    def prepare(self, iteration: int, centroid_source: CentroidSource) -> None:
        """Hook before the step of ``iteration``."""

    def forward(
        self, model: nn.Module, batches: Mapping[str, Mapping[str, Any]], unlabeled: bool, embed: bool
    ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, int]]:
        """One model call over every domain's labeled images and, if ``unlabeled``, its unlabeled ones.

        Returns the model's outputs (per domain: the labeled images' rows first, then the unlabeled
        ones) and the number of labeled images per domain. ``method.unlabeled_forward`` decides
        whether the unlabeled images share the labeled images' encoder pass (``together``: one set
        of BatchNorm batch statistics over both) or get their own (``separate``).
        """
        inputs, n_labeled = {}, {}
        for d, b in batches.items():
            n_labeled[d] = b["image"].shape[0]
            inputs[d] = b["image"]
            if unlabeled and "unlabeled" in b and b["unlabeled"].shape[0] > 0:
                parts = [b["image"], b["unlabeled"]]
                inputs[d] = parts if self.cfg.unlabeled_forward == "separate" else torch.cat(parts)
        return model(inputs, embed=embed), n_labeled

    def losses(self, model: nn.Module, batches: Mapping[str, Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_step(self, iteration: int) -> dict[str, torch.Tensor]:
        """Hook after the model's optimizer step, e.g. to update auxiliary networks; returns terms to log."""
        return {}

    def to(self, device: torch.device) -> "Method":
        return self

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` saved."""


class UniversalSemiSupervised(Method):
    """Kalluri et al. 2019: L = L_sup + lambda_1 L_{u,c} + lambda_2 L_{u,w}.

    losses(): one model call over all domains -> per-domain CE on labeled pixels; once the
    centroids exist, the entropy of unlabeled embeddings of domain i against the centroids of
    domain j, summed over ordered pairs i != j (cross) and i == j (within). With both lambdas 0
    this is supervised joint training (Univ-basic) or, on one domain, single-domain training.
    """

    def __init__(
        self, cfg, label_spaces: Mapping[str, LabelSpace], embed_dim: int, lambda_cross: float, lambda_within: float
    ) -> None:
        super().__init__(cfg, label_spaces, embed_dim)
        self.lambda_cross = lambda_cross
        self.lambda_within = lambda_within
        self.needs_unlabeled = lambda_cross > 0 or lambda_within > 0
        self.bank = CentroidBank(
            {k: ls.num_classes for k, ls in self.label_spaces.items()}, embed_dim, cfg.centroids.mode, cfg.centroids.momentum
        )

    def to(self, device: torch.device) -> "UniversalSemiSupervised":
        self.bank.to(device)
        return self

    def prepare(self, iteration: int, centroid_source: CentroidSource) -> None:
        if self.needs_unlabeled and not self.bank.ready and iteration >= self.cfg.warmup_iters:
            for domain, (sums, counts) in centroid_source().items():
                self.bank.set_from_sums(domain, sums, counts)
            self.bank.ready = True

    def losses(self, model: nn.Module, batches: Mapping[str, Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        align = self.needs_unlabeled and self.bank.ready
        outputs, n_labeled = self.forward(model, batches, unlabeled=align, embed=align)

        terms: dict[str, torch.Tensor] = {}
        sup = 0.0
        unlabeled_emb = {}
        for d, out in outputs.items():
            n = n_labeled[d]
            label = batches[d]["label"]
            ce = supervised_ce(out[d][:n], label, self.label_spaces[d].ignore_index)
            terms[f"ce_{d}"] = ce.detach()
            sup = sup + ce
            if align:
                emb = out["embedding"]
                size = tuple(label.shape[-2:])
                self.bank.update(d, upsample(emb[:n].detach(), size), label, self.label_spaces[d].ignore_index)
                if emb.shape[0] > n:
                    unlabeled_emb[d] = upsample(emb[n:], size) if self.cfg.entropy_resolution == "input" else emb[n:]
        total = sup
        terms["sup"] = sup.detach()
        if align and unlabeled_emb:
            within, cross = self._entropies(unlabeled_emb)
            if self.lambda_within > 0:
                terms["ent_within"] = within.detach()
                total = total + self.lambda_within * within
            if self.lambda_cross > 0:
                terms["ent_cross"] = cross.detach()
                total = total + self.lambda_cross * cross
        terms["loss"] = total
        return terms

    def _entropies(self, unlabeled_emb: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum over i of H(e_i, c_i), sum over ordered pairs i != j of H(e_i, c_j))."""
        within = cross = next(iter(unlabeled_emb.values())).new_zeros(())
        for i, emb in unlabeled_emb.items():
            for j in self.label_spaces:
                weight = self.lambda_within if i == j else self.lambda_cross
                if weight == 0:
                    continue
                c, valid = self.bank.get(j)
                h = alignment_entropy(emb, c, valid, self.cfg.similarity, self.cfg.temperature)
                if i == j:
                    within = within + h
                else:
                    cross = cross + h
        return within, cross

    def state_dict(self) -> dict[str, Any]:
        return {"centroids": self.bank.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.bank.load_state_dict(state["centroids"])


METHODS: Registry[Callable[..., Method]] = Registry("method")


def _universal(lambda_cross: bool, lambda_within: bool) -> Callable[..., Method]:
    def build(cfg, label_spaces: Mapping[str, LabelSpace], embed_dim: int) -> Method:
        return UniversalSemiSupervised(
            cfg,
            label_spaces,
            embed_dim,
            lambda_cross=cfg.lambda_cross if lambda_cross else 0.0,
            lambda_within=cfg.lambda_within if lambda_within else 0.0,
        )

    return build


def _single(cfg, label_spaces: Mapping[str, LabelSpace], embed_dim: int) -> Method:
    if len(label_spaces) != 1:
        raise ConfigError(
            f"method 'single' trains one domain but got {sorted(label_spaces)}; "
            "set method.domains to one domain, e.g. --set method.domains=[NAME]"
        )
    return _universal(False, False)(cfg, label_spaces, embed_dim)


METHODS.register("single", _single)
METHODS.register("joint", _universal(False, False))
METHODS.register("univ-cross", _universal(True, False))
METHODS.register("univ-full", _universal(True, True))


def build_method(cfg, label_spaces: Mapping[str, LabelSpace], embed_dim: int) -> Method:
    """Build the method named ``cfg.name`` for the trained domains' label spaces."""
    return METHODS.get(cfg.name)(cfg, label_spaces, embed_dim)


from . import adversarial  # noqa: E402,F401  (registers the "adversarial" method)
