"""Weak-to-strong consistency over several domains with different label spaces, with and without
the paper's entropy alignment.

    fixmatch    Sohn et al., NeurIPS 2020, as UniMatch's code applies it to segmentation: per domain,
                pseudo-labels from the domain's own head on the weak view of an unlabeled image
                supervise one strong view (colour, grayscale, blur, CutMix) where their confidence
                reaches ``method.consistency.threshold``.
    unimatch    Yang et al., CVPR 2023: fixmatch with two strong views and a feature-perturbed
                weak view (``Dropout2d`` on the encoder features): L_u = fp_weight * L_fp +
                (1 - fp_weight) * mean(L_s1, L_s2).
    univ-match  unimatch plus Kalluri et al.'s within- and cross-domain entropy alignment of the
                weak views' embeddings (``method.lambda_within`` / ``lambda_cross``, after
                ``method.warmup_iters``). With ``method.consistency.cross_domain`` (ours) each
                domain's unlabeled pixels are also pseudo-labeled in every other domain j's label
                space: head j's arg-max on the weak view where its confidence reaches the threshold
                and it names the class of the nearest of j's centroids; head j's CE on the strong
                views, weighted by ``cross_domain_weight`` (term ``cross_pl``).

Levers (``method.consistency``): the threshold; ``teacher: ema``, pseudo-labels from an
exponential moving average of the model in eval mode (Mean Teacher / UniMatch V2) instead of the
training pass (each domain's own pseudo-labels; univ-match's cross-domain ones still come from the
training pass); ``weak_view: geometric``, UniMatch's weak view without colour jitter. Logged every
step: each domain's share of confident valid pixels (``confident_<d>``) and, per log interval, the
weighted unlabeled/supervised loss ratio (``unsup_to_sup``); with ``diagnostics`` the per-class
precision, recall and coverage of the confident pseudo-labels against the labels on disk (pseudo_labels.py).

Total loss: sum over domains of CE(labeled) + weight * L_u (+ alignment). UniMatch's code halves
the whole sum; with AdamW that changes nothing, with SGD it is half the learning rate.

Per step each domain has two encoder passes in the one model call: its labeled and weak unlabeled
images together (shared BatchNorm batch statistics, as in UniMatch), and its strong views. CutMix
pastes a box of the next image of the same domain's batch (``roll`` by one) into each strong
view; the pseudo-labels, confidences and padding masks are pasted the same way. A pixel's loss
counts where it is confident; the sum is divided by the number of real (non-padding) pixels.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..data.label_space import LabelSpace
from ..errors import ConfigError
from ..losses import nearest_centroid
from .base import METHODS, Batches, CentroidSource, Method, RunContext
from .pseudo_labels import EmaTeacher, count_terms, diagnostic_record, loss_ratio, pseudo_label_counts
from .universal import UniversalSemiSupervised


def cutmix(values: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Paste, inside ``boxes[i]`` [B,H,W] (bool), the same place of ``values[(i + 1) % B]`` into ``values[i]``.

    ``values`` is [B,H,W] or [B,C,H,W]; the result has its shape and dtype.
    """
    partner = values.roll(-1, dims=0)
    mask = boxes if values.dim() == 3 else boxes.unsqueeze(1)
    return torch.where(mask, partner, values)


def masked_pseudo_label_ce(
    logits: torch.Tensor, pseudo: torch.Tensor, confident: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Sum of the per-pixel CE of ``logits`` [B,K,H,W] against ``pseudo`` [B,H,W] over pixels that are
    ``confident`` and ``valid``, divided by the number of ``valid`` pixels (UniMatch's normalisation);
    0 with a graph when no pixel is valid."""
    loss = F.cross_entropy(logits.float(), pseudo, reduction="none")
    keep = confident & valid
    n_valid = valid.sum()
    if int(n_valid) == 0:
        return logits.sum() * 0.0
    return (loss * keep).sum() / n_valid


def agreeing_pseudo_labels(
    weak_logits: torch.Tensor, nearest: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pseudo-labels [B,H,W], kept [B,H,W] bool) from one head's weak-view ``weak_logits`` [B,K,H,W]:
    the arg-max, kept where its softmax probability reaches ``threshold`` and it equals ``nearest``
    (the class of the nearest centroid in the same label space, [B,H,W])."""
    conf, pseudo = weak_logits.detach().float().softmax(1).max(1)
    return pseudo, (conf >= threshold) & (pseudo == nearest)


def strong_views_ce(
    strong_logits: torch.Tensor, pseudo: torch.Tensor, keep: torch.Tensor, valid: torch.Tensor, boxes: torch.Tensor
) -> torch.Tensor:
    """Mean over the S strong views (rows of ``strong_logits`` [S*B,K,H,W], view-major) of the masked
    pseudo-label CE, with the pseudo-labels, kept and valid masks CutMixed by ``boxes`` [B,S,H,W]."""
    views = strong_logits.split(pseudo.shape[0])
    return torch.stack([
        masked_pseudo_label_ce(view, cutmix(pseudo, boxes[:, s]), cutmix(keep, boxes[:, s]), cutmix(valid, boxes[:, s]))
        for s, view in enumerate(views)
    ]).mean()


class WeakToStrong(UniversalSemiSupervised):
    """Supervised CE, weak-to-strong consistency per domain and optionally the entropy alignment (module doc)."""

    splits_by_pass = False  # the weak view of the unlabeled images shares the labeled images' encoder pass

    def __init__(
        self,
        cfg: Any,
        label_spaces: Mapping[str, LabelSpace],
        embed_dim: int,
        strong_views: int,
        feature_dropout: float,
        lambda_cross: float = 0.0,
        lambda_within: float = 0.0,
    ) -> None:
        super().__init__(cfg, label_spaces, embed_dim, lambda_cross=lambda_cross, lambda_within=lambda_within)
        self.aligns = self.needs_unlabeled
        self.needs_unlabeled = True
        self.strong_views = strong_views
        self.feature_dropout = feature_dropout
        self.fp_weight = cfg.consistency.fp_weight if feature_dropout > 0 else 0.0
        self.geometric_weak = cfg.consistency.weak_view == "geometric"
        self.unlabeled_labels = cfg.consistency.diagnostics
        self.teacher: EmaTeacher | None = None
        self._student: list[nn.Module] = []  # the trained model (a list: not a submodule of the method)
        self.cross_domain = cfg.consistency.cross_domain
        if self.cross_domain and not self.aligns:
            raise ConfigError(
                f"method.consistency.cross_domain needs the class centroids of 'univ-match'; method '{cfg.name}' has "
                "none: set method.name=univ-match or method.consistency.cross_domain=false",
                key="method.consistency.cross_domain",
            )

    def attach(self, run: RunContext) -> None:
        """With ``teacher: ema``, the teacher starts as a copy of the run's model (and is saved with the method)."""
        if self.cfg.consistency.teacher == "ema":
            if run.model is None:
                raise ValueError("method.consistency.teacher: ema needs the run's model (RunContext.model)")
            self._student = [run.model]
            self.teacher = EmaTeacher(run.model, self.cfg.consistency.teacher_momentum)

    def before_step(self, iteration: int, centroid_source: CentroidSource) -> None:
        if self.aligns:
            super().before_step(iteration, centroid_source)
        if self.teacher is not None:
            self.teacher.update(self._student[0], iteration)

    def log_record(self, means: Mapping[str, float]) -> dict[str, float | None]:
        """The interval's means, the weighted unlabeled/supervised loss ratio and the diagnostics' ratios."""
        return {**diagnostic_record(means, self.label_spaces), **loss_ratio(means, "unsup", self.cfg.consistency.weight)}

    def losses(self, model: nn.Module, batches: Batches) -> dict[str, torch.Tensor]:
        align = self.aligns and self.bank.ready
        inputs, n_labeled, n_unlabeled = {}, {}, {}
        for d, b in batches.items():
            n_labeled[d] = b["image"].shape[0]
            n_unlabeled[d] = b["unlabeled"].shape[0] if "strong" in b else 0
            if n_unlabeled[d] == 0:  # a domain without unlabeled images: supervised only
                inputs[d] = b["image"]
                continue
            strong = b["strong"]  # [B, S, 3, H, W]
            mixed = [cutmix(strong[:, s], b["cutmix"][:, s]) for s in range(strong.shape[1])]
            inputs[d] = [torch.cat([b["image"], b["unlabeled"]]), torch.cat(mixed)]
        cross = align and self.cross_domain and len(self.label_spaces) > 1
        outputs = model(inputs, embed=align, feature_dropout=self.feature_dropout, all_heads=cross)
        teacher = self._teacher_logits(batches, n_unlabeled)

        terms: dict[str, torch.Tensor] = {}
        total = self.supervised(outputs, n_labeled, batches, terms, update_bank=align)
        unlabeled = [
            self._consistency(out[d], out.get("fp"), n_labeled[d], n_unlabeled[d], batches[d], d, terms, teacher.get(d))
            for d, out in outputs.items()
            if n_unlabeled[d] > 0
        ]
        if unlabeled:
            u = torch.stack(unlabeled).sum()
            terms["unsup"] = u.detach()
            total = total + self.cfg.consistency.weight * u
        if align:
            rows = {d: slice(n_labeled[d], n_labeled[d] + n_unlabeled[d]) for d in outputs}
            total = total + self.alignment(outputs, rows, batches, terms)
        if cross:
            total = total + self.cfg.consistency.cross_domain_weight * self._cross_domain(
                outputs, n_labeled, n_unlabeled, batches, terms
            )
        terms["loss"] = total
        return terms

    def _teacher_logits(self, batches: Batches, n_unlabeled: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """The EMA teacher's logits on each domain's weak views ({} without a teacher)."""
        if self.teacher is None:
            return {}
        return self.teacher({d: b["unlabeled"] for d, b in batches.items() if n_unlabeled[d] > 0})

    def _cross_domain(
        self,
        outputs: Mapping[str, Mapping[str, torch.Tensor]],
        n_labeled: Mapping[str, int],
        n_unlabeled: Mapping[str, int],
        batches: Batches,
        terms: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """Sum over ordered pairs i != j of head j's strong-view CE against its agreeing weak-view
        pseudo-labels on domain i's unlabeled images (terms ``cross_pl``, ``cross_kept_<i>_<j>``)."""
        losses = []
        for i, out in outputs.items():
            n, nu = n_labeled[i], n_unlabeled[i]
            if nu == 0:
                continue
            batch = batches[i]
            weak_emb = out["embedding"][n:n + nu].detach()
            size = tuple(batch["unlabeled"].shape[-2:])
            for j in self.label_spaces:
                if j == i:
                    continue
                with torch.no_grad():
                    centroids, valid_classes = self.bank.get(j)
                    nearest = nearest_centroid(
                        weak_emb, centroids, valid_classes, size, self.cfg.similarity, self.cfg.cosine_upsample
                    )
                    pseudo, keep = agreeing_pseudo_labels(out[j][n:n + nu], nearest, self.cfg.consistency.threshold)
                losses.append(strong_views_ce(out[j][n + nu:], pseudo, keep, batch["unlabeled_valid"], batch["cutmix"]))
                terms[f"cross_kept_{i}_{j}"] = (keep & batch["unlabeled_valid"]).float().mean()
        total = torch.stack(losses).sum() if losses else next(iter(outputs.values()))["embedding"].sum() * 0.0
        terms["cross_pl"] = total.detach()
        return total

    def _consistency(
        self,
        logits: torch.Tensor,
        fp_logits: torch.Tensor | None,
        n: int,
        nu: int,
        batch: Mapping[str, torch.Tensor],
        domain: str,
        terms: dict[str, torch.Tensor],
        teacher_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """L_u of one domain from its rows: [labeled n | weak nu | strong views S * nu]; the pseudo-labels
        come from ``teacher_logits`` [nu,K,H,W] when given, else from the weak rows."""
        weak = logits[n:n + nu] if teacher_logits is None else teacher_logits
        with torch.no_grad():
            conf, pseudo = weak.detach().float().softmax(1).max(1)
            confident = conf >= self.cfg.consistency.threshold
        valid = batch["unlabeled_valid"]
        strong = strong_views_ce(logits[n + nu:], pseudo, confident, valid, batch["cutmix"])
        terms[f"strong_{domain}"] = strong.detach()
        terms[f"confident_{domain}"] = (confident & valid).sum() / valid.sum().clamp(min=1)
        if "unlabeled_label" in batch:
            space = self.label_spaces[domain]
            counts = pseudo_label_counts(
                pseudo, confident, valid, batch["unlabeled_label"], space.num_classes, space.ignore_index
            )
            terms.update(count_terms(domain, space, counts))
        if fp_logits is None or self.fp_weight == 0:
            return strong
        fp = masked_pseudo_label_ce(fp_logits[n:n + nu], pseudo, confident, valid)
        terms[f"fp_{domain}"] = fp.detach()
        return self.fp_weight * fp + (1 - self.fp_weight) * strong


@METHODS.register("fixmatch")
def fixmatch(cfg: Any, label_spaces: Mapping[str, LabelSpace], embed_dim: int) -> Method:
    """FixMatch per domain in one model: one strong view, no feature perturbation, no alignment."""
    return WeakToStrong(cfg, label_spaces, embed_dim, strong_views=1, feature_dropout=0.0)


@METHODS.register("unimatch")
def unimatch(cfg: Any, label_spaces: Mapping[str, LabelSpace], embed_dim: int) -> Method:
    """UniMatch per domain in one model: two strong views and the feature-perturbed view, no alignment."""
    return WeakToStrong(cfg, label_spaces, embed_dim, strong_views=2, feature_dropout=cfg.consistency.feature_dropout)


@METHODS.register("univ-match")
def univ_match(cfg: Any, label_spaces: Mapping[str, LabelSpace], embed_dim: int) -> Method:
    """UniMatch plus the within- and cross-domain entropy alignment of the weak views' embeddings."""
    return WeakToStrong(
        cfg, label_spaces, embed_dim, strong_views=2, feature_dropout=cfg.consistency.feature_dropout,
        lambda_cross=cfg.lambda_cross, lambda_within=cfg.lambda_within,
    )
