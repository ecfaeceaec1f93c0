"""The contract every training method fulfils, and the registry the methods register into.

A method is an ``nn.Module``: its state (centroid buffers, auxiliary networks such as
discriminators) is saved with ``state_dict``, moved with ``.to`` and kept identical across
ranks by the method itself. The trainer owns every optimizer and the one learning-rate
schedule; a method only says which auxiliary parameters need one (``auxiliary_optimizers``).

Per iteration the trainer calls::

    method.before_step(t, centroid_source)          # e.g. compute centroids once warm-up ends
    terms = method.losses(model, batches)           # {'loss': total, other terms...}
    terms['loss'].backward(); optimizers['model'].step()   # both skipped for a loss without a graph (a constant)
    for name, aux in method.auxiliary_losses(t).items():   # e.g. the discriminators' own loss
        aux['loss'].backward(); optimizers[name].step()

Before training (and before a resumed run loads the method's state) the trainer calls
``method.attach(RunContext(...))``: the run's work dir, iteration budget, the class mappings
evaluation uses, the model of ``model.init_from`` and the model being trained, for methods that
need more than their heads. Every ``train.log_interval`` the trainer logs
``method.log_record(means)``: the interval's mean terms, plus what the method derives from them.

``batches[domain]`` holds, for every domain of ``method.data_domains()`` (default: the heads'),
``image`` [B,3,H,W] and ``label`` [B,H,W] of labeled images and,
when ``needs_unlabeled`` (and the domain has unlabeled images), ``unlabeled`` [B',3,H,W]. A method
with ``strong_views = S > 0`` also gets, per unlabeled image, ``strong`` [B',S,3,H,W] (photometric
strong views of the same crop), ``cutmix`` [B',S,H,W] (bool CutMix boxes) and
``unlabeled_valid`` [B',H,W] (bool, False on padding); its weak view (``unlabeled``) has only the
geometric train transforms when ``geometric_weak``, and with ``unlabeled_labels`` the batch also
holds ``unlabeled_label`` [B',H,W] (the images' labels, 255 where none: diagnostics only).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..data.label_space import LabelSpace
from ..data.mapping import ClassMapping
from ..registry import Registry

# (domain name -> (per-class embedding sums [K, D], pixel counts [K])) over a domain's labeled set
CentroidSource = Callable[[], Mapping[str, tuple[torch.Tensor, torch.Tensor]]]
Batches = Mapping[str, Mapping[str, torch.Tensor]]


def batches_device(batches: Batches) -> torch.device:
    """The device the step's images are on."""
    return next(iter(next(iter(batches.values())).values())).device


@dataclass(frozen=True)
class AuxiliaryOptimizer:
    """An optimizer the trainer builds, schedules and checkpoints for a method's auxiliary networks.

    ``build(params)`` makes the optimizer; its learning rate follows the trainer's schedule scaled
    to ``lr`` (the rate at iteration 0).
    """

    params: list[nn.Parameter]
    lr: float
    build: Callable[[list[nn.Parameter]], torch.optim.Optimizer]


@dataclass(frozen=True)
class RunContext:
    """What the trainer tells a method about its run (:meth:`Method.attach`).

    ``model``: the model being trained, on the run's device. ``class_mapping(src, dst)``: the mapping evaluation uses to score domain ``src``'s label space on
    domain ``dst`` (``eval.mappings``, else a built-in one; identity for equal label spaces), None when
    there is none. ``init_model()``: the model of ``model.init_from`` (eval mode, frozen, on the run's
    device) and its heads' label spaces; ConfigError when ``model.init_from`` is not set.
    """

    work_dir: Path
    iters: int
    class_mapping: Callable[[str, str], ClassMapping | None]
    init_model: Callable[[], tuple[nn.Module, Mapping[str, LabelSpace]]]
    model: nn.Module | None = None  # the model being trained (not wrapped for DistributedDataParallel)


class Method(nn.Module):
    """Base class: what loss one step computes from per-domain batches (see the module doc)."""

    needs_unlabeled: bool = False
    strong_views: int = 0  # strong views per unlabeled image: batches then hold strong, cutmix, unlabeled_valid
    splits_by_pass: bool = False  # losses() also takes a domain's labeled or unlabeled images alone (train.backward: pass)
    geometric_weak: bool = False  # with strong views: the weak view takes only the geometric train transforms
    unlabeled_labels: bool = False  # with strong views: batches also hold unlabeled_label (diagnostics only)

    def __init__(self, cfg: Any, label_spaces: Mapping[str, LabelSpace], embed_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.label_spaces = dict(label_spaces)
        self.embed_dim = embed_dim

    def attach(self, run: RunContext) -> None:
        """Hook once before training, with what the method may need from the run (nothing by default)."""

    def log_record(self, means: Mapping[str, float]) -> dict[str, float]:
        """The record logged for a log interval from its mean loss terms (default: the means themselves)."""
        return dict(means)

    def data_domains(self) -> list[str]:
        """Domains whose batches ``losses`` receives: the heads' by default (a method may read others' data)."""
        return list(self.label_spaces)

    def before_step(self, iteration: int, centroid_source: CentroidSource) -> None:
        """Hook before the step of ``iteration``."""

    def run_model(
        self, model: nn.Module, batches: Batches, unlabeled: bool, embed: bool
    ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, int]]:
        """One model call over every domain's labeled images and, if ``unlabeled``, its unlabeled ones.

        Returns the model's outputs (per domain: the labeled images' rows first, then the unlabeled
        ones) and the number of labeled images per domain (0 for a batch without ``image``: its
        unlabeled images alone; a domain with no images to run is left out). ``method.unlabeled_forward`` decides
        whether the unlabeled images share the labeled images' encoder pass (``together``: one set
        of BatchNorm batch statistics over both) or get their own (``separate``).
        """
        inputs, n_labeled = {}, {}
        for d, b in batches.items():
            parts = [b["image"]] if "image" in b else []  # a batch of unlabeled images alone (train.backward: pass)
            if unlabeled and "unlabeled" in b and b["unlabeled"].shape[0] > 0:
                parts.append(b["unlabeled"])
            if not parts:
                continue
            n_labeled[d] = b["image"].shape[0] if "image" in b else 0
            inputs[d] = parts[0] if len(parts) == 1 else parts if self.cfg.unlabeled_forward == "separate" else torch.cat(parts)
        if not inputs:
            return {}, n_labeled
        heads = [d for d in inputs if n_labeled[d] > 0]  # unlabeled images alone: the embedding, no logits
        return model(inputs, embed=embed, heads=heads), n_labeled

    def losses(self, model: nn.Module, batches: Batches) -> dict[str, torch.Tensor]:
        """The loss terms of one step for the model's optimizer; ``'loss'`` is what is minimised."""
        raise NotImplementedError

    def auxiliary_optimizers(self) -> dict[str, AuxiliaryOptimizer]:
        """Optimizers the method's auxiliary networks need, by name (none by default)."""
        return {}

    def auxiliary_losses(self, iteration: int) -> dict[str, dict[str, torch.Tensor]]:
        """After the model's step: ``{optimizer name: terms with 'loss'}`` for each auxiliary optimizer."""
        return {}


METHODS: Registry[Callable[..., Method]] = Registry("method")


def build_method(cfg: Any, label_spaces: Mapping[str, LabelSpace], embed_dim: int) -> Method:
    """Build the method named ``cfg.name`` (a MethodConfig) for the trained domains' label spaces."""
    return METHODS.get(cfg.name)(cfg, label_spaces, embed_dim)
