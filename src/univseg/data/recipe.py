"""The domain recipe: how one domain's config becomes its splits, labeled subset and unlabeled pool.

Training (:func:`univseg.data.domain.build_domain`), ``univseg split``
(:mod:`univseg.data.split_tool`) and ``univseg data check`` (:mod:`univseg.data.check`) all call
:func:`select_domain`, so they agree on which images are labeled, which form the unlabeled pool
and which split-level problems stop a run. The steps:

1. the ``dataset`` entry is resolved into a type and validated parameters;
2. the train split, the val split and each extra unlabeled split are built, each once;
3. the train and val splits must have images and labels;
4. the labeled subset is drawn from the train split (``labeled``: count / fraction + seed, or a
   split file);
5. the unlabeled pool is gathered (``unlabeled``: train images, extra splits, extra folders, or a
   split file looked up in those; ``max_images`` keeps a deterministic subset).

By default the first problem raises its :class:`~univseg.errors.UnivsegError`. With
``tolerant=True`` every step that can still run does, each problem is kept in
``DomainSelection.problems`` with the step it stopped, and label files missing from a split are
collected in ``missing_labels`` instead of failing the split; ``univseg data check`` reports them all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, TypeVar

from ..errors import DataError, UnivsegError
from .base import SegDataset, image_folder_dataset
from .datasets._common import collect_missing_labels
from .domain_config import DomainConfig, UnlabeledConfig
from .label_space import LabelSpace
from .registry import DatasetSource, resolve_dataset
from .splits import match_pool_entries, match_split_entries, read_split_file, select_subset

T = TypeVar("T")

#: The step of the recipe a problem stopped: resolving the dataset, building or checking a split,
#: drawing the labeled subset, or gathering the unlabeled pool (extra folders included).
Stage = Literal["dataset", "split", "labeled", "unlabeled"]

#: Why the train / val split must be labeled, for the message when it is not.
_NEEDS_LABELS = {"train": "it cannot provide the labeled subset", "val": "pick a labeled split for evaluation"}


class EmptySplitError(DataError):
    """The train or val split of a domain has no images."""


class UnlabeledSplitError(DataError):
    """The train or val split of a domain has no labels."""


@dataclass(frozen=True)
class RecipeProblem:
    """A problem met by a tolerant :func:`select_domain`: its step, the split (or ``dir:<folder>``) and the error."""

    stage: Stage
    error: UnivsegError
    split: str | None = None


@dataclass
class DomainSelection:
    """What the recipe made of one domain; in tolerant mode, what could not be made is None / absent."""

    config: DomainConfig
    index: int  # position of the domain in the experiment config
    dataset: DatasetSource | None = None
    splits: dict[str, SegDataset] = field(default_factory=dict)  # built splits by name (train, val, extra)
    folders: dict[Path, SegDataset] = field(default_factory=dict)  # extra unlabeled image folders
    missing_labels: dict[str, list[tuple[Path, Path]]] = field(default_factory=dict)  # split -> (image, label)
    labeled: list[int] | None = None  # sorted indices into the train split
    pool: list[tuple[SegDataset, int]] | None = None  # the unlabeled pool, in training order
    problems: list[RecipeProblem] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def where(self) -> str:
        """How messages name the domain: ``domains[i] (name)``."""
        return f"domains[{self.index}] ({self.config.name})"

    @property
    def train(self) -> SegDataset | None:
        return self.splits.get(self.config.train_split)

    @property
    def val(self) -> SegDataset | None:
        return self.splits.get(self.config.val_split)

    @property
    def label_space(self) -> LabelSpace | None:
        """The label space of the first split built (None when none could be built)."""
        return next((ds.label_space for ds in self.splits.values()), None)

    def roles(self) -> dict[str, list[str]]:
        """Split name -> its uses in this domain ('train', 'val', 'unlabeled'), in build order."""
        c = self.config
        out: dict[str, list[str]] = {}
        uses = [(c.train_split, "train"), (c.val_split, "val"), *((s, "unlabeled") for s in c.unlabeled.extra_splits)]
        for split, role in uses:
            out.setdefault(split, []).append(role)
        return out


def select_domain(config: DomainConfig, index: int, seed: int, *, tolerant: bool = False) -> DomainSelection:
    """Apply the recipe (see the module docstring) to domain ``config``, at position ``index`` of the
    experiment; ``seed`` is the experiment seed (labeled subset unless ``labeled.seed``, pool cap).

    Raises the first problem's UnivsegError, or with ``tolerant`` records every problem in
    ``problems`` and returns what could be made.
    """
    sel = DomainSelection(config, index)
    step = _Steps(sel.problems, tolerant)
    dataset = step("dataset", None, resolve_dataset, config.dataset, f"domains[{index}].dataset")
    if dataset is None:
        return sel
    sel.dataset = dataset
    for split in sel.roles():
        ds = step("split", split, _build_split, dataset, split, sel.missing_labels if tolerant else None)
        if ds is not None:
            sel.splits[split] = ds
    usable: dict[str, bool] = {}
    for split, role in ((config.train_split, "train"), (config.val_split, "val")):
        ds = sel.splits.get(split)
        problem = _split_problem(sel.where, ds, split, role) if ds is not None else None
        if problem is not None:
            step.fail("split", split, problem)
        usable[role] = ds is not None and problem is None
    train = sel.train
    if train is not None and usable["train"]:
        sel.labeled = step("labeled", config.train_split, _labeled_subset, sel, train, seed)
    space = sel.label_space or LabelSpace.from_names("unknown", ["unknown"])
    for folder in config.unlabeled.extra_dirs:
        ds = step("unlabeled", f"dir:{folder}", image_folder_dataset, folder, space)
        if ds is not None:
            sel.folders[Path(folder)] = ds
    extra = [sel.splits.get(s) for s in config.unlabeled.extra_splits]
    extra += [sel.folders.get(Path(f)) for f in config.unlabeled.extra_dirs]
    if train is not None and sel.labeled is not None and all(ds is not None for ds in extra):
        sel.pool = step("unlabeled", None, _unlabeled_pool, config.unlabeled, train, sel.labeled, extra, seed)
    return sel


class _Steps:
    """Runs the recipe's steps: the first problem raises, or (tolerant) each is recorded and None returned."""

    def __init__(self, problems: list[RecipeProblem], tolerant: bool) -> None:
        self.problems = problems
        self.tolerant = tolerant

    def __call__(self, stage: Stage, split: str | None, fn: Callable[..., T], *args) -> T | None:
        try:
            return fn(*args)
        except UnivsegError as e:
            if not self.tolerant:
                raise
            self.problems.append(RecipeProblem(stage, e, split))
            return None

    def fail(self, stage: Stage, split: str | None, error: UnivsegError) -> None:
        if not self.tolerant:
            raise error
        self.problems.append(RecipeProblem(stage, error, split))


def _build_split(
    dataset: DatasetSource, split: str, missing: dict[str, list[tuple[Path, Path]]] | None
) -> SegDataset:
    """Build ``split``; with ``missing``, images without a label file are recorded there instead of failing."""
    if missing is None:
        return dataset.build(split)
    with collect_missing_labels() as lost:
        ds = dataset.build(split)
    missing[split] = lost
    return ds


def _split_problem(where: str, ds: SegDataset, split: str, role: str) -> DataError | None:
    """Why the train / val split ``ds`` cannot serve (no images, no labels), or None."""
    if len(ds) == 0:
        return EmptySplitError(f"{where}: {role} split '{split}' is empty", hint="pick a split with images")
    if not ds.has_labels:
        why = _NEEDS_LABELS[role]
        return UnlabeledSplitError(f"{where}: {role} split '{split}' has no labels; {why}", hint=why)
    return None


def _labeled_subset(sel: DomainSelection, train: SegDataset, seed: int) -> list[int]:
    """Sorted indices of the labeled subset of ``train``, by the domain's ``labeled`` rule.

    Raises DataError naming the domain when the rule asks for more images than the split has,
    or naming the split file and its unknown entries.
    """
    lab = sel.config.labeled
    if lab.split_file is not None:
        return match_split_entries(train, read_split_file(lab.split_file), str(lab.split_file))
    try:
        return select_subset(len(train), lab.count, lab.fraction, seed if lab.seed is None else lab.seed)
    except ValueError as e:
        raise DataError(
            f"{sel.where}.labeled: {e} in split '{sel.config.train_split}'", key=f"domains[{sel.index}].labeled"
        ) from None


def _unlabeled_pool(
    u: UnlabeledConfig, train: SegDataset, labeled: list[int], extra: list[SegDataset], seed: int
) -> list[tuple[SegDataset, int]]:
    """The unlabeled pool as ``(dataset, index)`` items, in a fixed order.

    By rule: the train images (minus the labeled ones unless ``include_labeled``), then each extra
    split, then each extra folder (``extra``, in that order). With ``split_file`` the file's entries
    are looked up in those same sources (train split first) instead. ``max_images`` then keeps a
    deterministic subset (experiment ``seed``), preserving the order.
    """
    sources = [train, *extra]
    if u.split_file is not None:
        pairs = match_pool_entries(sources, read_split_file(u.split_file), str(u.split_file))
        items = [(sources[d], i) for d, i in pairs]
    else:
        items = []
        if u.use_train:
            chosen = set(labeled)
            items += [(train, i) for i in range(len(train)) if u.include_labeled or i not in chosen]
        for ds in extra:
            items += [(ds, i) for i in range(len(ds))]
    if u.max_images is not None and len(items) > u.max_images:
        items = [items[i] for i in select_subset(len(items), u.max_images, None, seed)]
    return items
