"""The 'adversarial' baseline: Hung, Tsai, Liou, Lin, Yang, "Adversarial Learning for Semi-Supervised
Semantic Segmentation", BMVC 2018, trained over several domains with one universal model.

Each trained domain k gets its own fully-convolutional discriminator D_k on K_k-channel probability
maps (label spaces differ). Per step, for every domain::

    L_seg = L_ce + lambda_adv * L_adv(labeled) + lambda_adv_unlabeled * L_adv(unlabeled) + lambda_semi * L_semi
    L_adv = BCE(D(softmax(S(x))), 1)                       (labeled: over non-ignored pixels)
    L_semi = CE(S(x_u), argmax S(x_u)) over unlabeled pixels with sigmoid(D(softmax(S(x_u)))) > T_semi
    L_D   = BCE(D(one-hot(y)), 1) + BCE(D(softmax(S(x)).detach()), 0)   (ignore pixels excluded)

``losses`` builds L_seg with D frozen (its parameters do not require grad, so the model's backward
reaches the model through D but leaves D's weights alone) and stashes the detached probabilities;
``auxiliary_losses`` then gives L_D from the stash, which the trainer minimises with the Adam
optimizer the method asks for (``auxiliary_optimizers``), on the same poly schedule as the model. As in the authors'
code, D sees the predictions of labeled and unlabeled images as fake, and the one-hot ground truth
(zeros at ignore pixels, excluded from the loss) as real.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..data.label_space import LabelSpace
from ..losses import supervised_ce
from ..models.universal import upsample
from .base import METHODS, AuxiliaryOptimizer, Batches, CentroidSource, Method
from .pseudo_labels import loss_ratio


class Discriminator(nn.Module):
    """Hung et al.'s FCN discriminator: five 4x4 stride-2 convs (ndf, 2ndf, 4ndf, 8ndf, 1 channels),
    LeakyReLU(0.2) between them; the 1-channel logit map is upsampled (bilinear) to the input size."""

    def __init__(self, num_classes: int, ndf: int = 64) -> None:
        super().__init__()
        chans = [num_classes, ndf, ndf * 2, ndf * 4, ndf * 8]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(chans[-1], 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        """[B, K, H, W] class probabilities -> [B, 1, H, W] logits of 'comes from the ground truth'."""
        return upsample(self.net(probs), tuple(probs.shape[-2:]))


def masked_bce(logits: torch.Tensor, target: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean BCE-with-logits (float32) of ``logits`` [B,1,H,W] against the constant ``target`` over
    the pixels where ``mask`` [B,H,W] is True (all when None); 0 with a graph when none are."""
    x = logits.float().squeeze(1)
    loss = F.binary_cross_entropy_with_logits(x, torch.full_like(x, float(target)), reduction="none")
    if mask is None:
        return loss.mean()
    if not bool(mask.any()):
        return x.sum() * 0.0
    return loss[mask].mean()


def one_hot_labels(label: torch.Tensor, num_classes: int, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(one-hot [B,K,H,W] float32 with all-zero vectors at ignore pixels, valid mask [B,H,W])."""
    valid = label != ignore_index
    onehot = F.one_hot(torch.where(valid, label, torch.zeros_like(label)).long(), num_classes)
    return onehot.permute(0, 3, 1, 2).float() * valid.unsqueeze(1), valid


def semi_loss(
    logits: torch.Tensor, d_logits: torch.Tensor, t_semi: float, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-training CE of unlabeled ``logits`` [B,K,H,W] towards their own argmax on the pixels whose
    discriminator confidence sigmoid(``d_logits``) [B,1,H,W] exceeds ``t_semi``; returns (loss, mask)."""
    with torch.no_grad():
        confident = torch.sigmoid(d_logits.float()).squeeze(1) > t_semi
        target = logits.argmax(1)
        target[~confident] = ignore_index
    return supervised_ce(logits, target, ignore_index), confident


@METHODS.register("adversarial")
class AdversarialSemiSupervised(Method):
    """Hung et al. 2018 over the trained domains, one discriminator per domain (see the module doc).

    Logged terms: ``ce_<domain>``, ``sup`` (sum of the CEs), ``adv`` and ``semi`` (their weighted
    contributions, so ``loss = sup + adv + semi``; ``semi`` only from iteration ``semi_start`` on),
    ``confident_<domain>`` (the share of unlabeled pixels the discriminator lets self-train) and, per
    log interval, ``unsup_to_sup`` (semi / sup)
    and, from ``auxiliary_losses``, ``d_loss`` (sum over domains of the unweighted discriminator loss).
    The discriminators' Adam learning rate starts at ``method.adversarial.lr`` and follows the
    trainer's schedule (poly decay over ``train.iters``), like the model's.
    """

    needs_unlabeled = True

    def __init__(self, cfg, label_spaces: Mapping[str, LabelSpace], embed_dim: int) -> None:
        super().__init__(cfg, label_spaces, embed_dim)
        self.acfg = cfg.adversarial
        self.discriminators = nn.ModuleDict(
            {k: Discriminator(ls.num_classes, self.acfg.ndf) for k, ls in self.label_spaces.items()}
        )
        self.discriminators.requires_grad_(False)
        self.iteration = 0
        self._stash: dict[str, dict[str, torch.Tensor]] = {}

    def auxiliary_optimizers(self) -> dict[str, AuxiliaryOptimizer]:
        betas = tuple(self.acfg.betas)
        return {
            "discriminators": AuxiliaryOptimizer(
                list(self.discriminators.parameters()),
                self.acfg.lr,
                lambda params: torch.optim.Adam(params, lr=self.acfg.lr, betas=betas),
            )
        }

    def before_step(self, iteration: int, centroid_source: CentroidSource) -> None:
        self.iteration = iteration

    def log_record(self, means: Mapping[str, float]) -> dict[str, float]:
        """The interval's means and the self-training/supervised loss ratio (``unsup_to_sup``)."""
        return {**means, **loss_ratio(means, "semi")}

    # ------------------------------------------------------------------ segmentation network
    def losses(self, model: nn.Module, batches: Batches) -> dict[str, torch.Tensor]:
        a = self.acfg
        semi_on = self.iteration >= a.semi_start
        self.discriminators.requires_grad_(False)
        outputs, n_labeled = self.run_model(model, batches, unlabeled=True, embed=False)

        terms: dict[str, torch.Tensor] = {}
        sup = adv = semi = 0.0
        any_unlabeled = False
        self._stash = {}
        for d, out in outputs.items():
            n, ls = n_labeled[d], self.label_spaces[d]
            logits, label = out[d], batches[d]["label"]
            ce = supervised_ce(logits[:n], label, ls.ignore_index)
            terms[f"ce_{d}"] = ce.detach()
            sup = sup + ce
            probs = logits.float().softmax(1)
            d_out = self.discriminators[d](probs)
            valid = label != ls.ignore_index
            adv = adv + a.lambda_adv * masked_bce(d_out[:n], 1.0, valid)
            if logits.shape[0] > n:
                any_unlabeled = True
                adv = adv + a.lambda_adv_unlabeled * masked_bce(d_out[n:], 1.0)
                if semi_on:
                    loss_semi, confident = semi_loss(logits[n:], d_out[n:].detach(), a.t_semi, ls.ignore_index)
                    terms[f"confident_{d}"] = confident.float().mean()
                    semi = semi + a.lambda_semi * loss_semi
            self._stash[d] = {"probs": probs.detach(), "label": label}
        total = sup + adv
        terms["sup"] = sup.detach()
        terms["adv"] = adv.detach()
        if semi_on and any_unlabeled:
            total = total + semi
            terms["semi"] = semi.detach()
        terms["loss"] = total
        return terms

    # ------------------------------------------------------------------ discriminators
    def discriminator_loss(self, domain: str, probs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """BCE(D(one-hot GT), 1) + BCE(D(probs), 0) for one domain; ``probs`` holds the labeled
        images first (``label.shape[0]`` of them), whose ignore pixels are excluded in both terms."""
        ls, disc = self.label_spaces[domain], self.discriminators[domain]
        n = label.shape[0]
        onehot, valid = one_hot_labels(label, ls.num_classes, ls.ignore_index)
        real = masked_bce(disc(onehot), 1.0, valid)
        fake_mask = torch.cat([valid, valid.new_ones((probs.shape[0] - n, *valid.shape[1:]))])
        fake = masked_bce(disc(probs.float()), 0.0, fake_mask)
        return real + fake

    def auxiliary_losses(self, iteration: int) -> dict[str, dict[str, torch.Tensor]]:
        if not self._stash:
            return {}
        self.discriminators.requires_grad_(True)
        self.discriminators.train()
        d_loss = 0.0
        for d, s in self._stash.items():
            d_loss = d_loss + self.discriminator_loss(d, s["probs"], s["label"])
        self._stash = {}
        return {"discriminators": {"loss": d_loss, "d_loss": d_loss.detach()}}
