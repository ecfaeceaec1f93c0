"""Kalluri et al. 2019, "Universal Semi-Supervised Semantic Segmentation", and its presets.

L = L_sup + lambda_1 L_{u,c} + lambda_2 L_{u,w}. Presets (each states its lambdas here):

    single      one domain, supervised only            lambda_1 = lambda_2 = 0
    joint       Univ-basic: all domains, supervised    lambda_1 = lambda_2 = 0
    univ-cross  + cross-domain entropy                 lambda_1 = method.lambda_cross, lambda_2 = 0
    univ-full   + within-domain entropy                lambda_1 = method.lambda_cross, lambda_2 = method.lambda_within
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..data.label_space import LabelSpace
from ..errors import ConfigError
from ..losses import CentroidBank, alignment_entropies, supervised_ce
from .base import METHODS, Batches, CentroidSource, Method, batches_device


class UniversalSemiSupervised(Method):
    """Supervised CE per domain plus entropy alignment of unlabeled embeddings to class centroids.

    losses(): one model call over all domains -> per-domain CE on labeled pixels; once the
    centroids exist, the entropy of unlabeled embeddings of domain i against the centroids of
    domain j, summed over ordered pairs i != j (cross) and i == j (within). The centroid bank is a
    submodule (buffers), set from the labeled sets when the warm-up ends (``before_step``) and,
    in ``ema`` mode, updated from every labeled batch (synchronised across ranks).
    """

    splits_by_pass = True  # every loss term reads one encoder pass's graph (the centroids are not differentiated)

    def __init__(
        self, cfg: Any, label_spaces: Mapping[str, LabelSpace], embed_dim: int, lambda_cross: float, lambda_within: float
    ) -> None:
        super().__init__(cfg, label_spaces, embed_dim)
        self.lambda_cross = lambda_cross
        self.lambda_within = lambda_within
        self.needs_unlabeled = lambda_cross > 0 or lambda_within > 0
        self.bank = CentroidBank(
            {k: ls.num_classes for k, ls in self.label_spaces.items()}, embed_dim, cfg.centroids.mode, cfg.centroids.momentum
        )

    def before_step(self, iteration: int, centroid_source: CentroidSource) -> None:
        if self.needs_unlabeled and not self.bank.ready and iteration >= self.cfg.warmup_iters:
            for domain, (sums, counts) in centroid_source().items():
                self.bank.set_from_sums(domain, sums, counts)
            self.bank.ready = True

    def losses(self, model: nn.Module, batches: Batches) -> dict[str, torch.Tensor]:
        align = self.needs_unlabeled and self.bank.ready
        outputs, n_labeled = self.run_model(model, batches, unlabeled=align, embed=align)
        terms: dict[str, torch.Tensor] = {}
        total = self.supervised(outputs, n_labeled, batches, terms, update_bank=align)
        if align:
            rows = {d: slice(n_labeled[d], None) for d in outputs}
            total = total + self.alignment(outputs, rows, batches, terms)
        terms["loss"] = torch.as_tensor(total, device=batches_device(batches))  # a constant 0: nothing to learn from
        return terms

    def supervised(
        self,
        outputs: Mapping[str, Mapping[str, torch.Tensor]],
        n_labeled: Mapping[str, int],
        batches: Batches,
        terms: dict[str, torch.Tensor],
        update_bank: bool,
    ) -> torch.Tensor:
        """Sum over domains of the CE of the first ``n_labeled`` rows (terms ``ce_<d>``, ``sup``);
        with ``update_bank`` their embeddings also update an ``ema`` centroid bank (a frozen bank
        reads nothing: skipped). The per-class sums come from the embedding at feature resolution
        (``class_sums`` scatters the labels' bilinear weights; no upsampled embedding)."""
        sup = 0.0
        for d, out in outputs.items():
            n = n_labeled[d]
            if n == 0:  # unlabeled images alone (train.backward: pass)
                continue
            label = batches[d]["label"]
            ce = supervised_ce(out[d][:n], label, self.label_spaces[d].ignore_index)
            terms[f"ce_{d}"] = ce.detach()
            sup = sup + ce
            if update_bank and self.bank.mode == "ema":
                self.bank.update(d, out["embedding"][:n].detach(), label, self.label_spaces[d].ignore_index)
        if isinstance(sup, torch.Tensor):
            terms["sup"] = sup.detach()
        return sup

    def alignment(
        self,
        outputs: Mapping[str, Mapping[str, torch.Tensor]],
        rows: Mapping[str, slice],
        batches: Batches,
        terms: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """lambda_within * within + lambda_cross * cross entropy of each domain's unlabeled embedding
        rows (``rows[d]``) against the centroids (terms ``ent_within``, ``ent_cross``).

        At ``entropy_resolution: input`` the scores are those of the embedding upsampled to the
        image size, computed without materialising it (``method.cosine_upsample``)."""
        unlabeled_emb = {}
        for d, out in outputs.items():
            emb = out["embedding"][rows[d]]
            if emb.shape[0] > 0:
                at_input = self.cfg.entropy_resolution == "input"
                unlabeled_emb[d] = (emb, tuple(batches[d]["unlabeled"].shape[-2:]) if at_input else tuple(emb.shape[-2:]))
        if not unlabeled_emb:
            return torch.zeros((), device=batches_device(batches))
        within, cross = self._entropies(unlabeled_emb)
        total = 0.0
        if self.lambda_within > 0:
            terms["ent_within"] = within.detach()
            total = total + self.lambda_within * within
        if self.lambda_cross > 0:
            terms["ent_cross"] = cross.detach()
            total = total + self.lambda_cross * cross
        return total

    def _entropies(self, unlabeled_emb: Mapping[str, tuple[torch.Tensor, tuple[int, int]]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum over i of H(e_i, c_i), sum over ordered pairs i != j of H(e_i, c_j)) from
        ``{i: (embedding, size the entropy is taken at)}``; each domain's embedding is scored
        against all the centroid sets it needs in one pass (normalised once)."""
        within = cross = next(iter(unlabeled_emb.values()))[0].new_zeros(())
        for i, (emb, size) in unlabeled_emb.items():
            targets = [j for j in self.label_spaces if (self.lambda_within if i == j else self.lambda_cross) > 0]
            if not targets:
                continue
            entropies = alignment_entropies(
                emb, [self.bank.get(j) for j in targets], self.cfg.similarity, self.cfg.temperature, size,
                self.cfg.cosine_upsample,
            )
            for j, h in zip(targets, entropies):
                if i == j:
                    within = within + h
                else:
                    cross = cross + h
        return within, cross


@METHODS.register("single")
def single(cfg: Any, label_spaces: Mapping[str, LabelSpace], embed_dim: int) -> Method:
    """Supervised training on one domain (lambda_1 = lambda_2 = 0)."""
    if len(label_spaces) != 1:
        raise ConfigError(
            f"method 'single' trains one domain but got {sorted(label_spaces)}; "
            "set method.domains to one domain, e.g. --set method.domains=[NAME]",
            key="method.domains",
        )
    return UniversalSemiSupervised(cfg, label_spaces, embed_dim, lambda_cross=0.0, lambda_within=0.0)


@METHODS.register("joint")
def joint(cfg: Any, label_spaces: Mapping[str, LabelSpace], embed_dim: int) -> Method:
    """Univ-basic: supervised training of all domains in one model (lambda_1 = lambda_2 = 0)."""
    return UniversalSemiSupervised(cfg, label_spaces, embed_dim, lambda_cross=0.0, lambda_within=0.0)


@METHODS.register("univ-cross")
def univ_cross(cfg: Any, label_spaces: Mapping[str, LabelSpace], embed_dim: int) -> Method:
    """Univ-cross: lambda_1 = method.lambda_cross, lambda_2 = 0."""
    return UniversalSemiSupervised(cfg, label_spaces, embed_dim, lambda_cross=cfg.lambda_cross, lambda_within=0.0)


@METHODS.register("univ-full")
def univ_full(cfg: Any, label_spaces: Mapping[str, LabelSpace], embed_dim: int) -> Method:
    """Univ-full: lambda_1 = method.lambda_cross, lambda_2 = method.lambda_within."""
    return UniversalSemiSupervised(
        cfg, label_spaces, embed_dim, lambda_cross=cfg.lambda_cross, lambda_within=cfg.lambda_within
    )
