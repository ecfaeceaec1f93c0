"""Domains: a dataset + its label space + labeled subset + unlabeled pool + val split + batch sizes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import MissingLabelError
from .base import SegDataset
from .domain_config import DomainConfig
from .label_space import LabelSpace
from .recipe import select_domain
from .transforms import Compose, build_transforms, load_arrays


class SampleView(torch.utils.data.Dataset):
    """A list of (dataset, index) samples with transforms; items are dicts of tensors.

    ``view[(i, seed)]`` augments with a generator seeded by ``seed`` (so a sample's augmentation
    is a pure function of the sampler's output); ``view[i]`` uses seed 0.
    """

    def __init__(self, items: Sequence[tuple[SegDataset, int]], transforms: Compose, with_labels: bool) -> None:
        self.items = list(items)
        self.transforms = transforms
        self.with_labels = with_labels

    def __len__(self) -> int:
        return len(self.items)

    def sample_id(self, i: int) -> str:
        ds, j = self.items[i]
        return ds.sample_id(j)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, seed = key if isinstance(key, tuple) else (key, 0)
        ds, j = self.items[i]
        if self.with_labels:
            image, label = ds.load_pair(j)
            if label is None:
                raise MissingLabelError(f"sample '{ds.sample_id(j)}' has no label but is used as labeled data")
        else:
            image, label = ds.load_image(j), None
        g = torch.Generator().manual_seed(int(seed))
        img, lab = self.transforms(*load_arrays(image, label), g)
        out = {"image": img, "index": i}
        if lab is not None:
            out["label"] = lab
        return out


@dataclass
class Domain:
    """Everything later stages need to know about one domain, described once."""

    name: str
    label_space: LabelSpace
    labeled: SampleView
    unlabeled: SampleView | None
    val: SampleView
    centroid_view: SampleView  # the labeled images with evaluation transforms
    batch_size: int
    unlabeled_batch_size: int


def build_domain(cfg: DomainConfig, index: int, seed: int) -> Domain:
    """Build domain ``cfg`` (at position ``index`` of the experiment) by the recipe of :mod:`univseg.data.recipe`.

    ``seed`` is the experiment seed. Raises the recipe's first problem (UnivsegError).
    """
    sel = select_domain(cfg, index, seed)
    train, val, pool = sel.train, sel.val, sel.pool
    train_tf = build_transforms(cfg.train_transforms, where=f"{sel.where}.train_transforms")
    val_tf = build_transforms(cfg.val_transforms, where=f"{sel.where}.val_transforms")
    labeled_items = [(train, i) for i in sel.labeled]
    return Domain(
        name=cfg.name,
        label_space=train.label_space,
        labeled=SampleView(labeled_items, train_tf, with_labels=True),
        unlabeled=SampleView(pool, train_tf, with_labels=False) if pool else None,
        val=SampleView([(val, i) for i in range(len(val))], val_tf, with_labels=True),
        centroid_view=SampleView(labeled_items, val_tf, with_labels=True),
        batch_size=cfg.batch_size,
        unlabeled_batch_size=cfg.unlabeled_batch_size,
    )


def build_domains(cfg) -> list[Domain]:
    """Build every domain of an experiment Config, in config order."""
    return [build_domain(d, i, cfg.seed) for i, d in enumerate(cfg.domains)]


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch; images of different sizes are kept as lists."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if isinstance(values[0], torch.Tensor):
            same = all(v.shape == values[0].shape for v in values)
            out[key] = torch.stack(values) if same else values
        else:
            out[key] = torch.as_tensor(values)
    return out


def eval_loader(view: SampleView, batch_size: int, num_workers: int = 0, indices: Sequence[int] | None = None):
    """A sequential loader over ``view`` (optionally a subset) that leaves the global RNG untouched."""
    data = view if indices is None else torch.utils.data.Subset(view, list(indices))
    return torch.utils.data.DataLoader(
        data, batch_size=batch_size, num_workers=num_workers, collate_fn=collate, generator=torch.Generator()
    )


def iter_images(batch: dict[str, Any]):
    """Yield ``(images [B,3,H,W], labels [B,H,W])`` groups of a collated batch (one per image when sizes differ)."""
    images, labels = batch["image"], batch["label"]
    if not isinstance(images, list):
        yield images, labels
        return
    for img, lab in zip(images, labels):
        yield img.unsqueeze(0), lab.unsqueeze(0)
