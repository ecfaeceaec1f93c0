"""The 'souly' baseline: Souly, Spampinato, Shah, "Semi Supervised Semantic Segmentation Using Generative
Adversarial Network", ICCV 2017, trained over several domains with one universal model.

Each trained domain k gets a DCGAN generator G_k (Radford et al., ICLR 2016) that turns noise into
images, and the segmentation network doubles as a (K_k+1)-way discriminator: the K_k logits of the
domain's head plus a "fake" logit f_k, a 1x1 conv on the shared embedding E owned by the method.
With p_fake = softmax([l_1..l_K, f])_{K+1}, i.e. log(p_fake / (1 - p_fake)) = f - logsumexp(l), per
step and domain (Souly et al. Sec. 3.1, after Salimans et al., NeurIPS 2016, Sec. 5)::

    L_seg  = L_ce + lambda_gan * (L_real + L_fake)
    L_ce   = CE over the K classes on labeled pixels (Salimans' -log p(y | x, y < K+1): f plays no part)
    L_real = -log(1 - p_fake) over real pixels (labeled, except ignore pixels, and unlabeled)
    L_fake = -log p_fake over the pixels of generated images G_k(z), z ~ U(-1, 1)^nz
    L_G    = || mean f_E(x_real) - mean f_E(G_k(z')) ||^2 / D   (souly.generator_loss: feature_matching,
             the default: Salimans Sec. 3.1, whose K+1 scheme Souly et al. follow; f_E: the D-channel
             embedding averaged over images and pixels; x_real: the step's unlabeled images, its
             labeled ones without unlabeled)
    L_G    = -log(1 - p_fake) over the pixels of G_k(z')        (souly.generator_loss: fool, the
             non-saturating generator loss of Goodfellow et al. 2014, Sec. 3)

The two readings of "the generator is trained to fool the discriminator" are both offered because
this module was written from the papers' descriptions without Souly et al.'s code; both train the
generator only.

``losses`` puts the generated images (no gradient to G) into the one model call, after the domain's
unlabeled images, with the fake heads frozen: the model learns from L_seg, the fake heads not. After
the model's step the trainer runs two auxiliary steps, each with its own Adam optimizer
(``auxiliary_optimizers``) on the trainer's schedule:

    fake_heads   lambda_gan * (L_real + L_fake) again, from the stashed (detached) embeddings and
                 logits: the gradient the fake heads would have had in the model's backward (in
                 float32; the trainer zeroes an auxiliary optimizer's gradients before its
                 backward, so they could not be collected there).
    generators   L_G on fresh noise z' against the model after its step (DCGAN's alternation) and
                 the fake heads as they were in it (a copy: their own step runs first), the model
                 run through ``torch.func.functional_call`` on detached copies of its parameters
                 and buffers: the generator loss has no path to the model's weights
                 (no gradient, under DDP no gradient hook) and leaves its BatchNorm statistics as they were.

The generators draw a global batch of noise for all processes and each takes its own share, so
ranks see different images and their random state stays in step; generated images are made at
``image_size`` (a square side, or [H, W] such as the training crop) and resized to the crop of the
images they join where it differs.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.parallel import DistributedDataParallel

from ..data.label_space import LabelSpace
from ..losses import supervised_ce
from ..models.universal import upsample
from ..utils import dist
from .adversarial import masked_bce
from .base import METHODS, AuxiliaryOptimizer, Batches, Method


def generator_layout(size: int | tuple[int, int]) -> tuple[tuple[int, int], int]:
    """(first map (h0, w0), number of doublings s) of a generator for ``size``: a square 4 * 2^k gives
    ((4, 4), k) as in DCGAN; (H, W) gives the most doublings that keep the first map's shorter side
    >= 4 and a first map of ceil(H / 2^s) x ceil(W / 2^s), so that h0 * 2^s >= H and w0 * 2^s >= W."""
    if isinstance(size, int):
        return (4, 4), int(math.log2(size // 4))
    h, w = size
    stages = max(1, int(math.log2(min(h, w) / 4)))
    return (-(-h // 2**stages), -(-w // 2**stages)), stages


class Generator(nn.Module):
    """DCGAN generator (Radford et al. 2016, Fig. 1 and Sec. 3): z [N, nz] -> an h0 x w0 map of
    ngf * 2^(s-1) channels -> s transposed convs (4x4, stride 2) halving the channels -> tanh, with
    BatchNorm (batch statistics only) and ReLU between; images on the model's 0..255 input scale (tanh
    mapped linearly). ``size`` is a square side 4 * 2^s (DCGAN's 4x4 first map) or (H, W), e.g. the
    training crop: then the output h0 * 2^s x w0 * 2^s is cropped at its centre to (H, W)
    (:func:`generator_layout`). Weights are initialised N(0, 0.02) as in DCGAN."""

    def __init__(self, nz: int, ngf: int, size: int | tuple[int, int]) -> None:
        super().__init__()
        first, stages = generator_layout(size)
        chans = [ngf * 2 ** (stages - 1 - i) for i in range(stages)]
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, chans[0], first, 1, 0, bias=False)]
        for c_in, c_out in zip(chans, chans[1:]):
            layers += [nn.BatchNorm2d(c_in, track_running_stats=False), nn.ReLU(inplace=True)]
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False))
        layers += [nn.BatchNorm2d(chans[-1], track_running_stats=False), nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(chans[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.nz = nz
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Noise [N, nz] -> images [N, 3, *size] in [0, 255]."""
        out = self.net(z[:, :, None, None])
        (h, w), (oh, ow) = self.size, out.shape[-2:]
        top, left = (oh - h) // 2, (ow - w) // 2
        return (out[..., top:top + h, left:left + w] + 1.0) * 127.5


def gan_terms(
    logits: torch.Tensor, fake_logit: torch.Tensor, label: torch.Tensor, n_real: int, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_real, L_fake) of one domain (float32 means, see the module doc).

    ``logits`` [B, K, H, W] and ``fake_logit`` [B, 1, H, W] hold the labeled images first
    (``label`` [n, H, W]; their ignore pixels are left out), then the other real images up to row
    ``n_real``, then the generated ones. -log(1 - p_fake) and -log p_fake are BCE-with-logits of
    f - logsumexp(l) against 0 and 1.
    """
    margin = fake_logit.float() - logits.float().logsumexp(1, keepdim=True)
    valid = label != ignore_index
    real_mask = torch.cat([valid, valid.new_ones((n_real - label.shape[0], *valid.shape[1:]))])
    return masked_bce(margin[:n_real], 0.0, real_mask), masked_bce(margin[n_real:], 1.0)


@METHODS.register("souly")
class SoulyGAN(Method):
    """Souly et al. 2017 over the trained domains: one generator and one fake head per domain (module doc).

    Logged terms: ``ce_<domain>``, ``sup`` (sum of the CEs), ``real`` and ``fake`` (sums over domains of
    L_real and L_fake), ``gan`` (their weighted contribution, so ``loss = sup + gan``) and, from
    ``auxiliary_losses``, ``g_loss`` (sum over domains of the generator loss L_G).
    """

    needs_unlabeled = True

    def __init__(self, cfg: Any, label_spaces: Mapping[str, LabelSpace], embed_dim: int) -> None:
        super().__init__(cfg, label_spaces, embed_dim)
        self.scfg = cfg.souly
        self.generators = nn.ModuleDict(
            {k: Generator(self.scfg.nz, self.scfg.ngf, self.scfg.image_size) for k in self.label_spaces}
        )
        self.fake_heads = nn.ModuleDict({k: nn.Conv2d(embed_dim, 1, 1) for k in self.label_spaces})
        self._stash: dict[str, Any] = {}

    def auxiliary_optimizers(self) -> dict[str, AuxiliaryOptimizer]:
        lr, betas = self.scfg.lr, tuple(self.scfg.betas)
        return {
            name: AuxiliaryOptimizer(
                list(module.parameters()), lr, lambda params: torch.optim.Adam(params, lr=lr, betas=betas)
            )
            for name, module in (("fake_heads", self.fake_heads), ("generators", self.generators))
        }

    def generate(self, domain: str, n: int, size: tuple[int, int]) -> torch.Tensor:
        """``n`` images [n, 3, *size] (0..255) of ``domain``'s generator from fresh noise: this process's
        share of a global draw of ``world_size * n`` noise vectors."""
        gen = self.generators[domain]
        z = torch.rand(dist.world_size(), n, gen.nz, device=self.fake_heads[domain].weight.device) * 2 - 1
        return upsample(gen(z[dist.rank()]).float(), size)

    # ------------------------------------------------------------------ segmentation network (discriminator)
    def losses(self, model: nn.Module, batches: Batches) -> dict[str, torch.Tensor]:
        self.fake_heads.requires_grad_(False)
        with_fakes, real_images, n_real = {}, {}, {}
        for d, b in batches.items():
            unlabeled = b["unlabeled"] if "unlabeled" in b and b["unlabeled"].shape[0] > 0 else None
            real_images[d] = b["image"] if unlabeled is None else unlabeled
            n_fake = self.scfg.batch_size or real_images[d].shape[0]
            with torch.no_grad():
                fakes = self.generate(d, n_fake, tuple(real_images[d].shape[-2:])).to(b["image"].dtype)
            with_fakes[d] = {**b, "unlabeled": fakes if unlabeled is None else torch.cat([unlabeled, fakes])}
            n_real[d] = b["image"].shape[0] + (0 if unlabeled is None else unlabeled.shape[0])
        outputs, _ = self.run_model(model, with_fakes, unlabeled=True, embed=True)

        terms: dict[str, torch.Tensor] = {}
        sup = real_sum = fake_sum = 0.0
        self._stash = {"model": model, "domains": {}}
        for d, out in outputs.items():
            ls, label, logits = self.label_spaces[d], batches[d]["label"], out[d]
            ce = supervised_ce(logits[: label.shape[0]], label, ls.ignore_index)
            terms[f"ce_{d}"] = ce.detach()
            sup = sup + ce
            fake_logit = upsample(self.fake_heads[d](out["embedding"]), tuple(logits.shape[-2:]))
            real, fake = gan_terms(logits, fake_logit, label, n_real[d], ls.ignore_index)
            real_sum, fake_sum = real_sum + real, fake_sum + fake
            self._stash["domains"][d] = {
                "logits": logits.detach(), "embedding": out["embedding"].detach(), "label": label,
                "n_real": n_real[d], "real_images": real_images[d], "n_fake": logits.shape[0] - n_real[d],
            }
        gan = self.scfg.lambda_gan * (real_sum + fake_sum)
        terms.update(sup=sup.detach(), real=real_sum.detach(), fake=fake_sum.detach(), gan=gan.detach(), loss=sup + gan)
        return terms

    # ------------------------------------------------------------------ fake heads and generators
    def fake_head_loss(self, domain: str, logits: torch.Tensor, embedding: torch.Tensor, n_real: int, label: torch.Tensor) -> torch.Tensor:
        """lambda_gan * (L_real + L_fake) of ``domain`` from detached model outputs: gradient to its fake head only."""
        fake_logit = upsample(self.fake_heads[domain](embedding.float()), tuple(logits.shape[-2:]))
        real, fake = gan_terms(logits, fake_logit, label, n_real, self.label_spaces[domain].ignore_index)
        return self.scfg.lambda_gan * (real + fake)

    def generator_loss(self, model: nn.Module, domain: str, real_images: torch.Tensor, n_fake: int) -> torch.Tensor:
        """L_G of ``n_fake`` new images of ``domain``'s generator (``souly.generator_loss``, module doc), from
        one pass over ``real_images`` and the generated ones together (shared BatchNorm batch statistics,
        as in the model's step).

        ``model`` (the UniversalModel) runs on detached copies of its parameters and buffers and the fake
        head on a detached copy of its weights: the loss has a path to the generator only and the model's state is
        left as it was.
        """
        fakes = self.generate(domain, n_fake, tuple(real_images.shape[-2:])).to(real_images.dtype)
        fool = self.scfg.generator_loss == "fool"
        state = {n: p.detach() for n, p in model.named_parameters()} | {n: b.clone() for n, b in model.named_buffers()}
        out = functional_call(
            model, state, (torch.cat([real_images, fakes]),), {"heads": [domain] if fool else [], "embed": True, "domain": domain}
        )
        real_f, fake_f = out["embedding"].float().split([real_images.shape[0], n_fake])
        if not fool:
            return (real_f.mean((0, 2, 3)) - fake_f.mean((0, 2, 3))).pow(2).mean()
        head = self.fake_heads[domain]
        logits = out[domain][real_images.shape[0]:].float()
        fake_logit = upsample(nn.functional.conv2d(fake_f, head.weight.detach().clone(), head.bias.detach().clone()), tuple(logits.shape[-2:]))
        return masked_bce(fake_logit - logits.logsumexp(1, keepdim=True), 0.0)

    def auxiliary_losses(self, iteration: int) -> dict[str, dict[str, torch.Tensor]]:
        if not self._stash:
            return {}
        stash, self._stash = self._stash, {}
        model = stash["model"].module if isinstance(stash["model"], DistributedDataParallel) else stash["model"]
        self.fake_heads.requires_grad_(True)
        head_loss = g_loss = 0.0
        for d, s in stash["domains"].items():
            head_loss = head_loss + self.fake_head_loss(d, s["logits"], s["embedding"], s["n_real"], s["label"])
            g_loss = g_loss + self.generator_loss(model, d, s["real_images"], s["n_fake"])
        return {"fake_heads": {"loss": head_loss}, "generators": {"loss": g_loss, "g_loss": g_loss.detach()}}
