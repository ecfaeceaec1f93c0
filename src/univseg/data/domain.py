"""Domains: a dataset + its label space + labeled subset + unlabeled pool + val split + batch sizes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .base import DataError, FileSegDataset, SegDataset
from .label_space import LabelSpace
from .registry import build_dataset
from .splits import match_pool_entries, match_split_entries, read_split_file, select_subset
from .transforms import Compose, build_transforms, load_arrays

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


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
                raise DataError(f"sample '{ds.sample_id(j)}' has no label but is used as labeled data")
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


def image_folder_dataset(folder: Path, label_space: LabelSpace) -> FileSegDataset:
    """All images under ``folder`` (recursive, sorted) as an unlabeled dataset."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"unlabeled image folder not found: {folder}")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {folder}")
    return FileSegDataset(label_space, images, None, root=folder)


def build_domain(cfg, index: int, seed: int) -> Domain:
    """Build domain ``cfg`` (a DomainConfig at position ``index`` of the experiment)."""
    from ..config import dataset_params  # local import: config imports data

    where = f"domains[{index}] ({cfg.name})"
    type_name = cfg.dataset["type"]
    params = dataset_params(cfg)
    train = build_dataset(type_name, params, cfg.train_split)
    val = build_dataset(type_name, params, cfg.val_split)
    if not train.has_labels:
        raise DataError(f"{where}: split '{cfg.train_split}' has no labels; it cannot provide the labeled subset")
    if not val.has_labels:
        raise DataError(f"{where}: val split '{cfg.val_split}' has no labels; pick a labeled split for evaluation")
    if len(train) == 0:
        raise DataError(f"{where}: split '{cfg.train_split}' is empty")
    labeled_idx = labeled_indices(cfg, train, seed, where)
    unlabeled_items = unlabeled_pool(cfg, train, labeled_idx, type_name, params, seed)
    train_tf = build_transforms(cfg.train_transforms, where=f"{where}.train_transforms")
    val_tf = build_transforms(cfg.val_transforms, where=f"{where}.val_transforms")
    labeled_items = [(train, i) for i in labeled_idx]
    return Domain(
        name=cfg.name,
        label_space=train.label_space,
        labeled=SampleView(labeled_items, train_tf, with_labels=True),
        unlabeled=SampleView(unlabeled_items, train_tf, with_labels=False) if unlabeled_items else None,
        val=SampleView([(val, i) for i in range(len(val))], val_tf, with_labels=True),
        centroid_view=SampleView(labeled_items, val_tf, with_labels=True),
        batch_size=cfg.batch_size,
        unlabeled_batch_size=cfg.unlabeled_batch_size,
    )


def labeled_indices(cfg, train: SegDataset, seed: int, where: str | None = None) -> list[int]:
    """Sorted indices of the labeled subset of ``train`` by the rule of DomainConfig ``cfg``.

    ``seed`` is the experiment seed (used unless ``cfg.labeled.seed`` is set). Raises DataError
    naming the domain when the rule asks for more images than the split has, or naming the split
    file and its unknown entries.
    """
    where = where or f"domain '{cfg.name}'"
    lab = cfg.labeled
    if lab.split_file is not None:
        return match_split_entries(train, read_split_file(lab.split_file), str(lab.split_file))
    try:
        return select_subset(len(train), lab.count, lab.fraction, seed if lab.seed is None else lab.seed)
    except ValueError as e:
        raise DataError(f"{where}.labeled: {e} in split '{cfg.train_split}'") from None


def unlabeled_pool(cfg, train: SegDataset, labeled_idx: list[int], type_name: str, params, seed: int):
    """The unlabeled pool of DomainConfig ``cfg`` as ``(dataset, index)`` items, in a fixed order.

    By rule: the train images (minus the labeled ones unless ``include_labeled``), then each extra
    split, then each extra folder. With ``unlabeled.split_file`` the file's entries are looked up
    in those same sources (train split, extra splits, extra folders, in that order) instead.
    ``max_images`` then keeps a deterministic subset (experiment ``seed``), preserving the order.
    """
    u = cfg.unlabeled
    sources = [train] + [build_dataset(type_name, params, split) for split in u.extra_splits]
    sources += [image_folder_dataset(folder, train.label_space) for folder in u.extra_dirs]
    if u.split_file is not None:
        pairs = match_pool_entries(sources, read_split_file(u.split_file), str(u.split_file))
        items = [(sources[d], i) for d, i in pairs]
    else:
        items = []
        if u.use_train:
            chosen = set(labeled_idx)
            items += [(train, i) for i in range(len(train)) if u.include_labeled or i not in chosen]
        for extra in sources[1:]:
            items += [(extra, i) for i in range(len(extra))]
    if u.max_images is not None and len(items) > u.max_images:
        items = [items[i] for i in select_subset(len(items), u.max_images, None, seed)]
    return items


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
