"""'cycada': Hoffman, Tzeng, Park, Zhu, Isola, Saenko, Efros, Darrell, "CyCADA: Cycle-Consistent Adversarial
Domain Adaptation", ICML 2018, for one labeled source domain A and one unlabeled target domain B.

The model has one head, B's; A's labels are mapped to B's classes with the class mapping evaluation uses
(``eval.mappings`` or a built-in one). f_A is the frozen source segmenter: the model of ``model.init_from``
(the ``single-<A>`` run in ``univseg experiment``), its head for A's label space. Two stages, as in the paper:

Pixel stage (iterations < ``pixel_iters``; the model is left alone, only the auxiliary optimizers step).
A CycleGAN (Zhu et al. 2017): ResNet generators G_AB, G_BA and PatchGAN discriminators D_A, D_B on images
downscaled by ``downscale`` and scaled to [-1, 1]; x_A are A's labeled and unlabeled images, x_B all of B's
images (labels never read)::

    L_G   = L_gan + lambda_cycle * (L_cyc + lambda_identity * L_idt) + lambda_sem * L_sem
    L_gan = MSE(D_B(G_AB(x_A)), 1) + MSE(D_A(G_BA(x_B)), 1)                          (LSGAN)
    L_cyc = |G_BA(G_AB(x_A)) - x_A|_1 + |G_AB(G_BA(x_B)) - x_B|_1
    L_idt = |G_AB(x_B) - x_B|_1 + |G_BA(x_A) - x_A|_1
    L_sem = CE(f_A(G_AB(x_A)), argmax f_A(x_A)) + CE(f_A(G_BA(x_B)), argmax f_A(x_B))   (CyCADA Eq. 4)
    L_D   = 1/2 [MSE(D_B(x_B), 1) + MSE(D_B(G_AB(x_A)), 0)] + 1/2 [MSE(D_A(x_A), 1) + MSE(D_A(G_BA(x_B)), 0)]

f_A sees the translations resized back to the input size on the 0..255 scale. ``losses`` stashes the
images and returns a constant (the trainer then skips the model's backward and step);
``auxiliary_losses`` returns L_G (optimizer ``generators``) and L_D with detached translations
(``image_discriminators``), both Adam as in CycleGAN, stepped in that order.

Segmentation stage (from ``pixel_iters`` on; the CycleGAN is frozen). The model S trains on the
translations G_AB(x_A) of A's labeled images with the mapped labels, and aligns its output distribution
on B to the one on the translations with an output-level discriminator D_F (Hung et al.'s FCN
discriminator on softmax maps, CyCADA's ``discrim_score``)::

    L_S   = CE(S(G_AB(x_A)), map(y_A)) + lambda_adv * BCE(D_F(softmax S(x_B)), 1)
    L_D_F = BCE(D_F(softmax S(G_AB(x_A))), 1) + BCE(D_F(softmax S(x_B)), 0)   (optimizer ``feature_discriminator``)

Deviations, for one training loop: no history pool of generated images (CycleGAN's pool_size 50: the
discriminators see the current translations), the translations are made on the fly instead of once for
the dataset, and every optimizer follows the trainer's one learning-rate schedule over ``train.iters``.
Grids of translated samples are written to ``<work_dir>/translations/`` at the end of the pixel stage
and at the last iteration.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..data.label_space import LabelSpace
from ..errors import ConfigError
from ..losses import supervised_ce
from ..models.universal import upsample
from ..utils import dist
from ..utils.files import atomic_write
from .adversarial import Discriminator, masked_bce
from .base import METHODS, AuxiliaryOptimizer, Batches, CentroidSource, Method, RunContext


def _init_normal(module: nn.Module) -> None:
    """CycleGAN's initialisation ('normal'): conv weights N(0, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ResidualBlock(nn.Module):
    """Two reflection-padded 3x3 conv + InstanceNorm layers (ReLU between) plus the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator: c7s1-ngf, d2ngf, d4ngf, ``blocks`` residual blocks, u2ngf, ungf,
    c7s1-3 and tanh; InstanceNorm without affine parameters. Maps [B,3,H,W] in [-1, 1] to the same
    shape for H and W multiples of 4."""

    def __init__(self, ngf: int = 64, blocks: int = 6) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(inplace=True)]
        for mult in (1, 2):
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1),
                nn.InstanceNorm2d(ngf * mult * 2), nn.ReLU(inplace=True),
            ]
        layers += [ResidualBlock(ngf * 4) for _ in range(blocks)]
        for mult in (4, 2):
            layers += [
                nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1),
                nn.InstanceNorm2d(ngf * mult // 2), nn.ReLU(inplace=True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        _init_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """CycleGAN's PatchGAN: ``layers`` 4x4 stride-2 convs (ndf, 2ndf, ... channels, at most 8ndf; InstanceNorm
    from the second), a 4x4 stride-1 conv-norm, then a 4x4 stride-1 conv to one logit per patch; LeakyReLU(0.2)."""

    def __init__(self, ndf: int = 64, layers: int = 3) -> None:
        super().__init__()
        chans = [3] + [ndf * min(2**i, 8) for i in range(layers + 1)]
        seq: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(chans[:-1], chans[1:])):
            seq.append(nn.Conv2d(c_in, c_out, 4, stride=2 if i < layers else 1, padding=1))
            if i > 0:
                seq.append(nn.InstanceNorm2d(c_out))
            seq.append(nn.LeakyReLU(0.2, inplace=True))
        seq.append(nn.Conv2d(chans[-1], 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*seq)
        _init_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] images in [-1, 1] -> [B,1,h,w] patch logits (real: high)."""
        return self.net(x)


def lsgan(pred: torch.Tensor, target: float) -> torch.Tensor:
    """LSGAN loss: mean squared difference (float32) of discriminator outputs from ``target``."""
    return (pred.float() - target).pow(2).mean()


def semantic_consistency(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """One term of CyCADA's L_sem: CE of f_A's ``logits`` [B,K,H,W] on translated images against the
    arg-max of f_A's ``reference`` logits on the original images (a target only: no gradient)."""
    return supervised_ce(logits, reference.detach().argmax(1))


def _side(n: int, downscale: int) -> int:
    """``n / downscale`` rounded to a multiple of 4 (the generators' two stride-2 levels), at least 4."""
    return max(4, 4 * round(n / downscale / 4))


def image_grid(rows: list[torch.Tensor]) -> np.ndarray:
    """HxWx3 uint8 image of [3,h,w] 0..255 ``rows`` stacked top to bottom, narrower ones padded black on the right."""
    width = max(r.shape[-1] for r in rows)
    grid = torch.cat([F.pad(r.float(), (0, width - r.shape[-1])) for r in rows], dim=1)
    return grid.round().clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()


@METHODS.register("cycada")
class Cycada(Method):
    """CyCADA from domain ``method.cycada.source`` to ``method.cycada.target`` (see the module doc).

    Logged terms: pixel stage ``gan``, ``cycle``, ``identity``, ``sem`` (unweighted), ``g_loss`` (L_G)
    and ``d_image`` (L_D); segmentation stage ``ce_<target>``, ``adv`` (weighted), ``loss`` and ``d_feat``.
    """

    needs_unlabeled = True

    def __init__(self, cfg: Any, label_spaces: Mapping[str, LabelSpace], embed_dim: int) -> None:
        super().__init__(cfg, label_spaces, embed_dim)
        c = self.ccfg = cfg.cycada
        self.generators = nn.ModuleDict({k: ResnetGenerator(c.ngf, c.res_blocks) for k in ("ab", "ba")})
        self.image_discriminators = nn.ModuleDict({k: PatchDiscriminator(c.ndf, c.d_layers) for k in ("a", "b")})
        self.feature_discriminator = Discriminator(self.label_spaces[c.target].num_classes, c.feat_ndf)
        self.image_discriminators.requires_grad_(False)
        self.feature_discriminator.requires_grad_(False)
        self.iteration = 0
        self._stash: dict[str, Any] = {}
        self._run: RunContext | None = None
        self._source: tuple[nn.Module, str] | None = None  # frozen f_A and its head; not part of the state
        self._label_map: torch.Tensor | None = None  # source train id (or ignore) -> target train id (or ignore)

    # ------------------------------------------------------------------ set-up
    def attach(self, run: RunContext) -> None:
        """Take the source -> target class mapping and the frozen source segmenter f_A from the run."""
        c = self.ccfg
        mapping = run.class_mapping(c.source, c.target)
        target_space = self.label_spaces[c.target]
        if mapping is None:
            raise ConfigError(
                f"method.cycada: no class mapping from domain '{c.source}' to domain '{c.target}' (label space "
                f"'{target_space.name}'); add one as eval.mappings['SOURCE_SPACE->{target_space.name}'] (a YAML file)",
                key="eval.mappings",
            )
        model, spaces = run.init_model()
        heads = [h for h in sorted(spaces, key=lambda h: h != c.source) if spaces[h].names == mapping.src.names]
        if not heads:
            raise ConfigError(
                f"model.init_from: the checkpoint's heads ({', '.join(spaces)}) have none in the label space "
                f"'{mapping.src.name}' of the source '{c.source}'; give the checkpoint of a model trained on it",
                key="model.init_from",
            )
        src = mapping.src
        table = torch.full((max(src.num_classes, src.ignore_index) + 1,), target_space.ignore_index, dtype=torch.long)
        lut = torch.tensor(mapping.lut, dtype=torch.long)
        table[: src.num_classes] = torch.where(lut >= 0, lut, table[: src.num_classes])
        self._run, self._source, self._label_map = run, (model, heads[0]), table

    def data_domains(self) -> list[str]:
        return [self.ccfg.source, self.ccfg.target]

    def auxiliary_optimizers(self) -> dict[str, AuxiliaryOptimizer]:
        c = self.ccfg

        def adam(module: nn.Module, lr: float, betas: tuple[float, float]) -> AuxiliaryOptimizer:
            return AuxiliaryOptimizer(list(module.parameters()), lr, lambda params: torch.optim.Adam(params, lr=lr, betas=betas))

        return {
            "generators": adam(self.generators, c.lr, tuple(c.betas)),
            "image_discriminators": adam(self.image_discriminators, c.lr, tuple(c.betas)),
            "feature_discriminator": adam(self.feature_discriminator, c.feat_lr, tuple(c.feat_betas)),
        }

    def before_step(self, iteration: int, centroid_source: CentroidSource) -> None:
        self.iteration = iteration

    # ------------------------------------------------------------------ pieces
    def to_gan(self, images: torch.Tensor) -> torch.Tensor:
        """0..255 images [B,3,H,W] -> the CycleGAN's input: downscaled (antialiased; sides multiples of 4), in [-1, 1]."""
        h, w = images.shape[-2:]
        size = (_side(h, self.ccfg.downscale), _side(w, self.ccfg.downscale))
        x = images.float()
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return x / 127.5 - 1.0

    @staticmethod
    def from_gan(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """A generator's [-1, 1] output -> 0..255 images of ``size`` (bilinear)."""
        return (upsample(x, tuple(size)) + 1.0) * 127.5

    def translate(self, images: torch.Tensor, direction: str) -> torch.Tensor:
        """0..255 images translated by generator ``direction`` ('ab' or 'ba'), at their own size and scale."""
        return self.from_gan(self.generators[direction](self.to_gan(images)), tuple(images.shape[-2:]))

    def map_labels(self, label: torch.Tensor) -> torch.Tensor:
        """Source labels [B,H,W] in the target's label space (classes without a counterpart: ignore)."""
        return self._label_map.to(label.device)[label.long()]

    def source_logits(self, images: torch.Tensor) -> torch.Tensor:
        """f_A's logits of 0..255 images in the source label space."""
        model, head = self._source
        return model(images, heads=[head])[head]

    def pixel_losses(self, a: torch.Tensor, b: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(L_G terms, L_D terms), each with ``loss``, of source images ``a`` and target images ``b`` (0..255)."""
        c, g, d = self.ccfg, self.generators, self.image_discriminators
        real_a, real_b = self.to_gan(a), self.to_gan(b)
        fake_b, fake_a = g["ab"](real_a), g["ba"](real_b)
        d.requires_grad_(False)
        gan = lsgan(d["b"](fake_b), 1.0) + lsgan(d["a"](fake_a), 1.0)
        cycle = F.l1_loss(g["ba"](fake_b), real_a) + F.l1_loss(g["ab"](fake_a), real_b)
        identity = F.l1_loss(g["ab"](real_b), real_b) + F.l1_loss(g["ba"](real_a), real_a)
        with torch.no_grad():
            ref_a, ref_b = self.source_logits(a), self.source_logits(b)
        sem = semantic_consistency(self.source_logits(self.from_gan(fake_b, tuple(a.shape[-2:]))), ref_a)
        sem = sem + semantic_consistency(self.source_logits(self.from_gan(fake_a, tuple(b.shape[-2:]))), ref_b)
        g_loss = gan + c.lambda_cycle * (cycle + c.lambda_identity * identity) + c.lambda_sem * sem
        d.requires_grad_(True)
        fake_a, fake_b = fake_a.detach(), fake_b.detach()
        d_loss = 0.5 * (lsgan(d["b"](real_b), 1.0) + lsgan(d["b"](fake_b), 0.0))
        d_loss = d_loss + 0.5 * (lsgan(d["a"](real_a), 1.0) + lsgan(d["a"](fake_a), 0.0))
        g_terms = {"loss": g_loss, "g_loss": g_loss.detach(), "gan": gan.detach(), "cycle": cycle.detach(),
                   "identity": identity.detach(), "sem": sem.detach()}
        return g_terms, {"loss": d_loss, "d_image": d_loss.detach()}

    # ------------------------------------------------------------------ the trainer's calls
    def losses(self, model: nn.Module, batches: Batches) -> dict[str, torch.Tensor]:
        c = self.ccfg
        src, tgt = batches[c.source], batches[c.target]
        b = torch.cat([tgt["image"], tgt["unlabeled"]]) if "unlabeled" in tgt else tgt["image"]
        if self.iteration < c.pixel_iters:
            a = torch.cat([src["image"], src["unlabeled"]]) if "unlabeled" in src else src["image"]
            self._stash = {"a": a, "b": b}
            return {"loss": torch.zeros((), device=b.device)}
        if self.iteration in (c.pixel_iters, self._run.iters - 1):
            name = "end_of_pixel_stage" if self.iteration == c.pixel_iters else "end_of_training"
            self.save_samples(src["image"], b, name)
        with torch.no_grad():
            fake_b = self.translate(src["image"], "ab")
        n = fake_b.shape[0]
        together = self.cfg.unlabeled_forward == "together" and fake_b.shape[-2:] == b.shape[-2:]
        logits = model({c.target: torch.cat([fake_b, b]) if together else [fake_b, b]})[c.target][c.target]
        ce = supervised_ce(logits[:n], self.map_labels(src["label"]), self.label_spaces[c.target].ignore_index)
        probs = logits.float().softmax(1)
        self.feature_discriminator.requires_grad_(False)
        adv = c.lambda_adv * masked_bce(self.feature_discriminator(probs[n:]), 1.0)
        self._stash = {"probs": probs.detach(), "n": n}
        return {f"ce_{c.target}": ce.detach(), "adv": adv.detach(), "loss": ce + adv}

    def auxiliary_losses(self, iteration: int) -> dict[str, dict[str, torch.Tensor]]:
        stash, self._stash = self._stash, {}
        if not stash:
            return {}
        if "probs" not in stash:
            g_terms, d_terms = self.pixel_losses(stash["a"], stash["b"])
            return {"generators": g_terms, "image_discriminators": d_terms}
        self.feature_discriminator.requires_grad_(True)
        probs, n = stash["probs"], stash["n"]
        disc = self.feature_discriminator
        d_loss = masked_bce(disc(probs[:n]), 1.0) + masked_bce(disc(probs[n:]), 0.0)
        return {"feature_discriminator": {"loss": d_loss, "d_feat": d_loss.detach()}}

    @torch.no_grad()
    def save_samples(self, a: torch.Tensor, b: torch.Tensor, name: str) -> None:
        """Write ``<work_dir>/translations/<name>.png`` (rank 0): rows [x_A | G_AB(x_A)] for the first
        ``samples`` source images, then [x_B | G_BA(x_B)] for the first target images."""
        k = self.ccfg.samples
        if k == 0 or not dist.is_main():
            return
        a, b = a[:k].float(), b[:k].float()
        rows = [torch.cat(pair, dim=-1) for pair in zip(a, self.translate(a, "ab").float())]
        rows += [torch.cat(pair, dim=-1) for pair in zip(b, self.translate(b, "ba").float())]
        grid = image_grid(rows)
        path = self._run.work_dir / "translations" / f"{name}.png"
        atomic_write(path, lambda p: Image.fromarray(grid).save(p, format="PNG"), "translation samples")
