"""Domains: a dataset + its label space + labeled subset + unlabeled pool + val split + batch sizes,
and the strong views of unlabeled images for weak-to-strong consistency (FixMatch / UniMatch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import ConfigError, DataError, MissingLabelError
from .base import SegDataset
from .domain_config import UNIMATCH_STRONG_TRANSFORMS, CutMixConfig, DomainConfig
from .label_space import IGNORE_INDEX, LabelSpace
from .recipe import select_domain
from .transforms import TRANSFORMS, Compose, build_transforms, cutmix_box, load_arrays


@dataclass(frozen=True)
class StrongViews:
    """How an unlabeled item's ``count`` strong views are made: ``transforms`` (photometric) applied
    to its weak view, each view with a CutMix box drawn by ``cutmix``. With ``with_labels`` the item
    also carries the image's label where the dataset has one (pseudo-label diagnostics only)."""

    transforms: Compose
    cutmix: CutMixConfig
    count: int
    with_labels: bool = False


class SampleView(torch.utils.data.Dataset):
    """A list of (dataset, index) samples with transforms; items are dicts of tensors.

    ``view[(i, seed)]`` augments with a generator seeded by ``seed`` (so a sample's augmentation
    is a pure function of the sampler's output); ``view[i]`` uses seed 0. Items hold ``image``
    (float32 [3,H,W]), ``index`` and, with labels, ``label`` (int64 [H,W]).

    With ``strong`` (unlabeled views only), ``image`` is the weak view — the very image the view
    without ``strong`` gives for the same (index, seed) — and items also hold, for S = ``strong.count``:

    * ``valid``: bool [H,W], False where a crop or pad of the weak transforms added padding;
    * ``strong``: float32 [S,3,H,W], independent strong views of the weak view (same geometry);
    * ``cutmix``: bool [S,H,W], each strong view's CutMix box (all False when none was drawn);
    * ``label`` (with ``strong.with_labels``): int64 [H,W], the weak view's label, all
      :data:`IGNORE_INDEX` for an image without one; never used for training.

    Their randomness is drawn from the same generator after the weak view's.

    ``domain`` (the domain's name) is named in the DataErrors raised while reading a sample.
    """

    def __init__(
        self,
        items: Sequence[tuple[SegDataset, int]],
        transforms: Compose,
        with_labels: bool,
        strong: StrongViews | None = None,
        domain: str | None = None,
    ) -> None:
        if strong is not None and with_labels:
            raise ValueError("strong views are made for unlabeled samples only")
        self.items = list(items)
        self.transforms = transforms
        self.with_labels = with_labels
        self.strong = strong
        self.domain = domain

    def __len__(self) -> int:
        return len(self.items)

    def sample_id(self, i: int) -> str:
        ds, j = self.items[i]
        return ds.sample_id(j)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, seed = key if isinstance(key, tuple) else (key, 0)
        ds, j = self.items[i]
        try:
            image, label = ds.load_pair(j) if self.with_labels else (ds.load_image(j), None)
        except DataError as e:
            raise _in_domain(e, self.domain) from None
        if self.with_labels and label is None:
            raise MissingLabelError(f"sample '{ds.sample_id(j)}' has no label but is used as labeled data")
        g = torch.Generator().manual_seed(int(seed))
        if self.strong is not None:
            return {"index": i, **self._strong_item(*self._unlabeled_arrays(ds, j, image), g)}
        img, lab = self.transforms(*load_arrays(image, label), g)
        out = {"image": img, "index": i}
        if lab is not None:
            out["label"] = lab
        return out

    def _unlabeled_arrays(self, ds: SegDataset, j: int, image: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image (and, with ``strong.with_labels``, the label or an all-ignore one) of unlabeled sample ``j``."""
        assert self.strong is not None
        if not self.strong.with_labels:
            return load_arrays(image, None)[0], None
        try:
            label = ds.load_pair(j)[1]
        except DataError as e:
            raise _in_domain(e, self.domain) from None
        img, lab = load_arrays(image, label)
        return img, torch.full(img.shape[-2:], IGNORE_INDEX, dtype=torch.int64) if lab is None else lab

    def _strong_item(self, image: torch.Tensor, label: torch.Tensor | None, g: torch.Generator) -> dict[str, torch.Tensor]:
        """The weak view of ``image``, its ``valid`` mask, strong views and CutMix boxes (and ``label``, moved alike)."""
        assert self.strong is not None
        weak, valid, label = self.transforms.track_padding(image, g, label)
        cm = self.strong.cutmix
        views, boxes = [], []
        for _ in range(self.strong.count):
            views.append(self.strong.transforms(weak, None, g)[0])
            boxes.append(cutmix_box((weak.shape[-2], weak.shape[-1]), cm.p, cm.area, cm.ratio, g))
        item = {"image": weak, "valid": valid, "strong": torch.stack(views), "cutmix": torch.stack(boxes)}
        return item if label is None else {**item, "label": label}


def _in_domain(e: DataError, domain: str | None) -> DataError:
    """``e`` with ``domain '<domain>': `` before its message (the same error when ``domain`` is None)."""
    if domain is None:
        return e
    return type(e)(f"domain '{domain}': {e.message}", path=e.path, key=e.key, values=e.values, hint=e.hint)


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
    strong_transforms: Compose  # photometric, making the strong views of unlabeled images
    cutmix: CutMixConfig

    def unlabeled_view(
        self, strong_views: int, geometric_weak: bool = False, with_labels: bool = False
    ) -> SampleView | None:
        """The unlabeled pool (None without one); with ``strong_views`` > 0 its items also carry
        that many strong views, CutMix boxes and the ``valid`` mask (see :class:`SampleView`), the
        weak view takes only the geometric train transforms with ``geometric_weak`` (UniMatch's weak
        view), and items carry their labels with ``with_labels`` (diagnostics)."""
        if strong_views < 0:
            raise ValueError(f"strong_views must be >= 0, got {strong_views}")
        if self.unlabeled is None or strong_views == 0:
            return self.unlabeled
        strong = StrongViews(self.strong_transforms, self.cutmix, strong_views, with_labels)
        weak = self.unlabeled.transforms.geometric() if geometric_weak else self.unlabeled.transforms
        return SampleView(self.unlabeled.items, weak, with_labels=False, strong=strong, domain=self.unlabeled.domain)


def build_strong_transforms(transforms: list[dict[str, Any]] | None, where: str, key: str) -> Compose:
    """Build a strong-view pipeline (None: :data:`UNIMATCH_STRONG_TRANSFORMS`) whose config sits at
    ``where`` (message prefix) / ``key`` (dotted key).

    Raises ConfigError like :func:`build_transforms`, or naming ``key[i]`` for a geometric transform:
    strong views share the weak view's geometry.
    """
    pipeline = build_transforms(UNIMATCH_STRONG_TRANSFORMS if transforms is None else transforms, where=where)
    geometric = [(i, t.name) for i, t in enumerate(pipeline) if t.geometric]
    if geometric:
        raise ConfigError(
            "\n".join(
                f"{where}[{i}]: '{name}' is geometric, but strong views keep the geometry of the weak view; "
                "move it to train_transforms"
                for i, name in geometric
            ),
            key=f"{key}[{geometric[0][0]}]",
            hint=f"strong_transforms takes photometric transforms only ({', '.join(_photometric_names())})",
        )
    return pipeline


def _photometric_names() -> list[str]:
    return [name for name in TRANSFORMS.names() if not TRANSFORMS.get(name).geometric]


def build_domain(cfg: DomainConfig, index: int, seed: int) -> Domain:
    """Build domain ``cfg`` (at position ``index`` of the experiment) by the recipe of :mod:`univseg.data.recipe`.

    ``seed`` is the experiment seed. Raises the recipe's first problem (UnivsegError).
    """
    sel = select_domain(cfg, index, seed)
    train, val, pool = sel.train, sel.val, sel.pool
    train_tf = build_transforms(cfg.train_transforms, where=f"{sel.where}.train_transforms")
    val_tf = build_transforms(cfg.val_transforms, where=f"{sel.where}.val_transforms")
    strong_tf = build_strong_transforms(
        cfg.strong_transforms, where=f"{sel.where}.strong_transforms", key=f"domains.{cfg.name}.strong_transforms"
    )
    labeled_items = [(train, i) for i in sel.labeled]
    return Domain(
        name=cfg.name,
        label_space=train.label_space,
        labeled=SampleView(labeled_items, train_tf, with_labels=True, domain=cfg.name),
        unlabeled=SampleView(pool, train_tf, with_labels=False, domain=cfg.name) if pool else None,
        val=SampleView([(val, i) for i in range(len(val))], val_tf, with_labels=True, domain=cfg.name),
        centroid_view=SampleView(labeled_items, val_tf, with_labels=True, domain=cfg.name),
        batch_size=cfg.batch_size,
        unlabeled_batch_size=cfg.unlabeled_batch_size,
        strong_transforms=strong_tf,
        cutmix=cfg.cutmix,
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
