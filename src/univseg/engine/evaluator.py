"""Evaluation: per-domain mIoU in each domain's own label space, from dataset-level confusion matrices."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.domain import Domain, eval_loader
from ..data.label_space import LabelSpace
from ..data.mapping import ClassMapping
from ..errors import CheckpointError, StopRequested
from ..utils import dist
from ..utils.table import markdown_table
from .inference import InferenceSettings, infer_logits
from .metrics import ConfusionMatrix
from .precision import autocast, resolve_amp


@dataclass(frozen=True)
class HeadChoice:
    """Which head scores a domain, and the class mapping into the domain's label space (None: same space)."""

    head: str
    mapping: ClassMapping | None

    def describe(self) -> str:
        if self.mapping is None:
            return self.head
        return f"{self.head} via {self.mapping.src.name}->{self.mapping.dst.name}"


def choose_head(
    heads: Mapping[str, LabelSpace], domain_name: str, space: LabelSpace, mapping_files: Mapping[str, Path] | None = None
) -> HeadChoice | None:
    """The head to score a domain with: its own head, else a head with an identical label space, else
    a head with a class mapping (from ``mapping_files`` keyed 'SRC->DST', then the built-in ones)."""
    if domain_name in heads:
        own = heads[domain_name]
        if own.names != space.names:
            raise CheckpointError(
                f"head '{domain_name}' of the model predicts {own.names} but domain '{domain_name}' of the config is "
                f"labeled {space.names}; evaluate with the config the model was trained with",
                values={"head": own.names, "domain": space.names},
            )
        return HeadChoice(domain_name, None)
    for head, ls in heads.items():
        if ls.names == space.names:
            return HeadChoice(head, None)
    for head, ls in heads.items():
        path = (mapping_files or {}).get(f"{ls.name}->{space.name}")
        if path is not None:
            return HeadChoice(head, ClassMapping.from_yaml(path, ls, space))
    for head, ls in heads.items():
        mapping = ClassMapping.builtin(ls, space)
        if mapping is not None:
            return HeadChoice(head, mapping)
    return None


def size_groups(batch: Mapping[str, Any]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images [n, 3, H, W], labels [n, H, W])`` of a collated batch, one group per image size.

    A batch of equal sizes is one group; a batch of mixed sizes (kept as lists by ``collate``) is
    grouped by size, in order of first appearance, so equal-size images still share a forward pass.
    """
    images, labels = batch["image"], batch["label"]
    if not isinstance(images, list) and not isinstance(labels, list):
        yield images, labels
        return
    groups: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for img, lab in zip(images, labels):
        groups.setdefault((tuple(img.shape), tuple(lab.shape)), []).append((img, lab))
    for members in groups.values():
        yield torch.stack([m[0] for m in members]), torch.stack([m[1] for m in members])


@torch.inference_mode()
def predict_labels(
    model: torch.nn.Module,
    images: torch.Tensor,
    head: str,
    amp: str = "none",
    inference: InferenceSettings = InferenceSettings(),
) -> torch.Tensor:
    """Arg-max class ids [B, H, W] of head ``head`` for a batch of 0..255 float images, computed
    as ``inference`` says (default: whole image, no test-time augmentation)."""
    device = next(model.parameters()).device
    with autocast(device, amp):
        logits = infer_logits(model, images.to(device), [head], inference)[head]
    return logits.argmax(1)


def evaluate_domain(
    model: torch.nn.Module,
    domain: Domain,
    choice: HeadChoice,
    batch_size: int = 4,
    amp: str = "none",
    max_images: int | None = None,
    num_workers: int = 0,
    progress: bool = True,
    inference: InferenceSettings = InferenceSettings(),
    stop: Callable[[], bool] | None = None,
) -> ConfusionMatrix:
    """Confusion matrix of ``model`` on ``domain``'s val split (sharded over ranks, then summed),
    predicted as ``inference`` says. ``stop`` is asked before every batch; when it says so,
    StopRequested is raised."""
    view = domain.val
    n = len(view) if max_images is None else min(max_images, len(view))
    indices = list(range(dist.rank(), n, dist.world_size()))
    loader = eval_loader(view, batch_size, num_workers, indices)
    cm = ConfusionMatrix(domain.label_space.num_classes, domain.label_space.ignore_index)
    lut = torch.tensor(choice.mapping.lut) if choice.mapping is not None else None
    bar = tqdm(loader, desc=f"eval {domain.name}", leave=False, disable=not (progress and dist.is_main()))
    for batch in bar:
        if stop is not None and stop():
            raise StopRequested
        for img, lab in size_groups(batch):
            pred = predict_labels(model, img, choice.head, amp, inference).cpu()
            if lut is not None:
                pred = lut[pred]
            cm.update(pred, lab)
    cm.mat = dist.all_reduce_sum(cm.mat.to(next(model.parameters()).device)).cpu()
    return cm


def evaluate(
    model: torch.nn.Module,
    heads: Mapping[str, LabelSpace],
    domains: list[Domain],
    eval_cfg,
    amp: str = "none",
    num_workers: int = 0,
    progress: bool = True,
    source: str | Path | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Score ``model`` on every domain; returns ``{"domains": {name: summary}, "mean_mIoU": float, "amp": str}``
    (``amp``: the autocast precision the predictions ran in, resolved).

    Predictions follow the inference keys of ``eval_cfg`` (mode, crop, stride, flip, scales).
    mIoU values are fractions in [0, 1]. Each scored domain also holds its ``confusion`` matrix (pixel
    counts as nested lists: rows = ground-truth class, columns = predicted class, plus a last column
    for predictions a class mapping sends nowhere; see :class:`ConfusionMatrix`), which
    ``univseg report`` draws. Domains no head can be mapped to are reported with
    ``"skipped"`` and the reason, and left out of the mean; when that is every domain, CheckpointError
    names the heads and the domains (``source``: the checkpoint the model comes from, if any).
    ``stop`` (e.g. "a stop signal arrived") is asked between batches: StopRequested ends the evaluation.
    """
    choices = {d.name: choose_head(heads, d.name, d.label_space, eval_cfg.mappings) for d in domains}
    if domains and all(c is None for c in choices.values()):
        raise _nothing_to_score(heads, domains, source)
    amp = resolve_amp(amp, next(model.parameters()).device)
    inference = InferenceSettings.from_config(eval_cfg)
    was_training = model.training
    model.eval()
    results: dict[str, Any] = {}
    try:
        for domain in domains:
            choice = choices[domain.name]
            if choice is None:
                results[domain.name] = {
                    "skipped": f"no head of the model ({', '.join(f'{h}: {ls.name}' for h, ls in heads.items())}) "
                    f"maps to label space '{domain.label_space.name}'; add eval.mappings['SRC->{domain.label_space.name}']"
                }
                continue
            cm = evaluate_domain(
                model, domain, choice, eval_cfg.batch_size, amp, eval_cfg.max_images, num_workers, progress, inference, stop
            )
            results[domain.name] = {"head": choice.describe(), **cm.summary(domain.label_space.names),
                                    "confusion": cm.mat.tolist()}
    finally:
        model.train(was_training)
    scored = [r["mIoU"] for r in results.values() if r.get("mIoU") is not None]
    return {"domains": results, "mean_mIoU": float(np.mean(scored)) if scored else None, "amp": amp}


def _nothing_to_score(heads: Mapping[str, LabelSpace], domains: list[Domain], source: str | Path | None) -> CheckpointError:
    """The error when no head of the model fits (or maps to) any domain of the config."""
    model = f"checkpoint {source}" if source is not None else "the model"
    have = ", ".join(f"'{h}' ({ls.name}: {ls.num_classes} classes)" for h, ls in heads.items())
    want = ", ".join(f"'{d.name}' ({d.label_space.name}: {d.label_space.num_classes} classes)" for d in domains)
    hint = (
        "evaluate with the config the model was trained with, or add a class mapping "
        "eval.mappings['HEAD_SPACE->DOMAIN_SPACE'] (a YAML file)"
    )
    return CheckpointError(
        f"no head of {model} fits any domain of the config: its heads are {have}; the config's domains are {want} "
        f"(no head has a domain's label space or a class mapping into it); {hint}",
        path=source, values={"heads": list(heads), "domains": [d.name for d in domains]}, hint=hint,
    )


def results_table(results: Mapping[str, Any]) -> str:
    """Per-domain summary plus one per-class IoU table per domain, in percent, as Markdown."""
    rows = []
    for name, r in results["domains"].items():
        if "skipped" in r:
            rows.append([name, "-", "-", "-", r["skipped"]])
        else:
            rows.append([name, _pct(r["mIoU"]), _pct(r["pixel_acc"]), _pct(r["mean_class_acc"]), r["head"]])
    rows.append(["mean", _pct(results["mean_mIoU"]), "", "", ""])
    parts = [markdown_table(["domain", "mIoU", "pixel acc", "mean acc", "head"], rows)]
    for name, r in results["domains"].items():
        if "per_class_iou" in r:
            per = [[cls, _pct(v)] for cls, v in r["per_class_iou"].items()]
            parts.append(f"\n{name} per-class IoU\n" + markdown_table(["class", "IoU"], per))
    return "\n".join(parts)


def _pct(v: float | None) -> float | None:
    return None if v is None else 100.0 * v
