"""``univseg data check``: scan every file of every domain of a config and report what is wrong.

:func:`check_data` builds each domain's splits exactly as training does (same adapters, same
labeled-subset and unlabeled-pool rules), then reads every image and label through the dataset's
own ``load_image`` / ``load_label`` so each adapter's decoding is respected. It never stops at
the first problem: build failures (missing root, missing split) are reported per domain, and
every unreadable or truncated file, out-of-space label value, image/label size mismatch and
missing label is reported with the file it concerns.

Example::

    from univseg.config import load_config
    from univseg.data.check import check_data

    report = check_data(load_config("exp.yaml"))
    print(report.format())
    if not report.ok:
        raise SystemExit(1)

Severity: an *error* makes the data unusable for this config (training or evaluation would stop
on it, or the data is silently wrong); a *warning* is worth a look but does not stop anything
(a broken label of a train image outside the labeled subset, a class absent from the labeled
subset, the same image in the train and val splits, a symbolic link that is broken or loops:
training skips it with a warning).
"""
from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..errors import LabelValueError, MissingFileError, SizeMismatchError, UnivsegError
from .base import FileSegDataset, SegDataset, check_same_size, collect_bad_links, missing_reason
from .domain_config import DomainConfig
from .label_space import LabelSpace
from .recipe import EmptySplitError, RecipeProblem, UnlabeledSplitError, select_domain

Severity = Literal["error", "warning"]

#: Problem kinds, with what they mean.
PROBLEM_KINDS: dict[str, str] = {
    "build": "a split could not be built (missing root or split folder, bad list file, ...)",
    "no_labels": "a split that must be labeled (train, val) has no labels",
    "empty": "a split has no images",
    "labeled_subset": "the labeled-subset rule cannot be applied (count too large, unknown split-file entries)",
    "unlabeled_pool": "the unlabeled pool cannot be built (unknown split-file entries, missing folder)",
    "unreadable_image": "an image file cannot be decoded (corrupt or truncated)",
    "unreadable_label": "a label file cannot be decoded (corrupt, truncated, colour instead of ids)",
    "missing_label": "an image of a labeled split has no label file",
    "label_values": "a label file holds values outside the domain's label space",
    "size_mismatch": "an image and its label have different sizes",
    "class_absent": "a class has no pixel in the labeled subset or the val split",
    "overlap": "the same image file is in two splits (train/val leak)",
    "bad_link": "a symbolic link in a dataset folder is broken or loops; what it stands for is skipped",
}


@dataclass
class Problem:
    """One problem found by the check; ``file`` names the offending file (or sample) when there is one."""

    domain: str
    kind: str
    message: str
    severity: Severity = "error"
    split: str | None = None
    file: str | None = None
    values: dict[Any, int] | None = None  # label_values: raw value (or colour) -> pixel count

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "domain": self.domain,
            "split": self.split,
            "severity": self.severity,
            "kind": self.kind,
            "file": self.file,
            "message": self.message,
        }
        if self.values is not None:
            d["values"] = {str(k): int(v) for k, v in self.values.items()}
        return d


@dataclass
class ClassStats:
    """Pixel and image counts per train id of a label space over some labels."""

    num_classes: int
    pixels: np.ndarray = field(init=False)
    images: np.ndarray = field(init=False)
    ignore_pixels: int = 0
    labels: int = 0

    def __post_init__(self) -> None:
        self.pixels = np.zeros(self.num_classes, dtype=np.int64)
        self.images = np.zeros(self.num_classes, dtype=np.int64)

    def add(self, counts: np.ndarray, ignore_index: int) -> None:
        """Add one label's histogram (``counts[v]`` = pixels of value v, length > ignore_index)."""
        k = self.num_classes
        self.pixels += counts[:k]
        self.images += counts[:k] > 0
        self.ignore_pixels += int(counts[ignore_index]) if ignore_index < len(counts) else 0
        self.labels += 1

    def to_dict(self, names: Sequence[str]) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "pixels": {n: int(v) for n, v in zip(names, self.pixels)},
            "images_with_class": {n: int(v) for n, v in zip(names, self.images)},
            "ignore_pixels": int(self.ignore_pixels),
        }


@dataclass
class SplitReport:
    """What was found in one split (or extra image folder) of a domain."""

    name: str  # split name, or 'dir:<folder>' for an extra unlabeled folder
    roles: list[str]  # 'train', 'val', 'unlabeled'
    images: int = 0  # images in the split
    labeled: int = 0  # images with a label file
    scanned: int = 0  # images read by the check
    labels_checked: bool = False  # whether the labels were read
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> images
    stats: ClassStats | None = None

    @property
    def partial(self) -> bool:
        return self.scanned < self.images

    def size_summary(self) -> dict[str, Any] | None:
        if not self.sizes:
            return None
        ws = [w for w, _ in self.sizes]
        hs = [h for _, h in self.sizes]
        (cw, ch), cn = self.sizes.most_common(1)[0]
        return {
            "min": [min(ws), min(hs)],
            "max": [max(ws), max(hs)],
            "most_common": [cw, ch],
            "most_common_count": cn,
            "distinct": len(self.sizes),
        }

    def to_dict(self, names: Sequence[str]) -> dict[str, Any]:
        return {
            "name": self.name,
            "roles": list(self.roles),
            "images": self.images,
            "labeled": self.labeled,
            "scanned": self.scanned,
            "partial": self.partial,
            "labels_checked": self.labels_checked,
            "sizes": self.size_summary(),
            "classes": self.stats.to_dict(names) if self.stats is not None else None,
        }


@dataclass
class DomainReport:
    """The check of one domain: its splits, subset/pool sizes, class statistics and problems."""

    name: str
    dataset: str
    label_space: LabelSpace | None = None
    splits: list[SplitReport] = field(default_factory=list)
    labeled_rule: str = "all"
    labeled_subset: int | None = None  # size of the labeled subset (None: could not be determined)
    labeled_stats: ClassStats | None = None  # class statistics over the labeled subset
    unlabeled_pool: int | None = None  # size of the unlabeled pool (None: could not be determined)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def split(self, name: str) -> SplitReport | None:
        return next((s for s in self.splits if s.name == name), None)

    def add(self, kind: str, message: str, *, severity: Severity = "error", split: str | None = None,
            file: str | Path | None = None, values: dict[Any, int] | None = None) -> None:
        self.problems.append(Problem(self.name, kind, message, severity, split, None if file is None else str(file), values))

    def to_dict(self) -> dict[str, Any]:
        names = self.label_space.names if self.label_space is not None else []
        return {
            "name": self.name,
            "ok": self.ok,
            "dataset": self.dataset,
            "label_space": None if self.label_space is None else {
                "name": self.label_space.name,
                "classes": names,
                "ignore_index": self.label_space.ignore_index,
            },
            "labeled_rule": self.labeled_rule,
            "labeled_subset": self.labeled_subset,
            "labeled_subset_classes": self.labeled_stats.to_dict(names) if self.labeled_stats is not None else None,
            "unlabeled_pool": self.unlabeled_pool,
            "splits": [s.to_dict(names) for s in self.splits],
            "problems": [p.to_dict() for p in self.problems],
        }


@dataclass
class DataReport:
    """Result of :func:`check_data` over all domains of a config."""

    domains: list[DomainReport]
    max_files: int | None = None

    @property
    def problems(self) -> list[Problem]:
        return [p for d in self.domains for p in d.problems]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """False when any problem makes the data unusable for this config (any error)."""
        return not self.errors

    def domain(self, name: str) -> DomainReport:
        for d in self.domains:
            if d.name == name:
                return d
        raise KeyError(f"no domain '{name}' in the report; domains: {', '.join(d.name for d in self.domains)}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe plain data (ints, strings, lists, dicts)."""
        return {
            "ok": self.ok,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "max_files": self.max_files,
            "domains": [d.to_dict() for d in self.domains],
        }

    def format(self) -> str:
        """Human-readable report: per domain a summary table, a per-class pixel table, the problems."""
        out: list[str] = []
        for d in self.domains:
            out += _format_domain(d)
            out.append("")
        n_err, n_warn = len(self.errors), len(self.warnings)
        partial = f" (first {self.max_files} files per split only)" if self.max_files is not None else ""
        verdict = "OK" if self.ok else "NOT OK"
        out.append(f"{verdict}: {len(self.domains)} domain(s), {n_err} error(s), {n_warn} warning(s){partial}")
        return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# the check
# ----------------------------------------------------------------------------------------------

def check_data(cfg, *, max_files: int | None = None, progress: bool = True) -> DataReport:
    """Check every domain of Config ``cfg``: counts, sizes, class pixels and all problems.

    Args:
        cfg: the experiment :class:`~univseg.config.Config`.
        max_files: read at most the first N samples of each split (None: all); counts still
            cover the whole split, class statistics and file problems only the samples read.
        progress: show a tqdm bar per split (on stderr).

    Returns:
        A :class:`DataReport`; ``.ok`` is False when any error was found.
    """
    if max_files is not None and max_files < 0:
        raise ValueError(f"max_files must be >= 0, got {max_files}")
    return DataReport(
        [check_domain(d, i, cfg.seed, max_files=max_files, progress=progress) for i, d in enumerate(cfg.domains)],
        max_files=max_files,
    )


def check_domain(dcfg: DomainConfig, index: int, seed: int, *, max_files: int | None = None,
                 progress: bool = True) -> DomainReport:
    """Check domain ``dcfg``, at position ``index`` of the experiment (see :func:`check_data`).

    ``seed`` is the experiment seed; the splits, labeled subset and unlabeled pool come from the
    tolerant recipe (:func:`univseg.data.recipe.select_domain`), whose problems are all reported.
    """
    with collect_bad_links() as links:
        sel = select_domain(dcfg, index, seed, tolerant=True)
    rep = DomainReport(name=dcfg.name, dataset=str(dcfg.dataset.get("type")), label_space=sel.label_space,
                       labeled_rule=_rule(dcfg))
    _add_recipe_problems(rep, sel.problems)
    for link, problem in links:
        rep.add("bad_link", f"{link} is {problem}; it is skipped: fix or remove the link", severity="warning", file=link)
    rep.labeled_subset = None if sel.labeled is None else len(sel.labeled)
    rep.unlabeled_pool = None if sel.pool is None else len(sel.pool)

    roles = sel.roles()
    for split, ds in sel.splits.items():
        missing = {str(im): lab for im, lab in sel.missing_labels.get(split, [])}
        read_labels = ("train" in roles[split] or "val" in roles[split]) and ds.has_labels
        sr = SplitReport(split, roles[split], images=len(ds), labeled=(len(ds) - len(missing)) if ds.has_labels else 0)
        rep.splits.append(sr)
        if not read_labels:
            for img, lab in missing.items():
                rep.add("missing_label", _missing_label(img, lab, f"the adapter does not build split '{split}' (used as "
                        "unlabeled data) while labels are missing: add it or remove the image"), split=split, file=img)
        in_subset = set(sel.labeled) if (split == dcfg.train_split and sel.labeled is not None) else None
        if in_subset is not None:
            rep.labeled_stats = ClassStats(ds.label_space.num_classes)
        _scan(rep, sr, ds, read_labels=read_labels, missing=missing, subset=in_subset,
              max_files=max_files, progress=progress)
    for folder, ds in sel.folders.items():
        sr = SplitReport(f"dir:{folder}", ["unlabeled"], images=len(ds))
        rep.splits.append(sr)
        _scan(rep, sr, ds, read_labels=False, missing={}, subset=None, max_files=max_files, progress=progress)

    _coverage_warnings(rep, dcfg, sel.train, sel.val)
    return rep


def _add_recipe_problems(rep: DomainReport, problems: Sequence[RecipeProblem]) -> None:
    """Report the recipe's problems; one failure of several splits (same error type and path, e.g. a
    missing root) is reported once, naming all the splits."""
    builds: dict[tuple[type, str], Problem] = {}
    for p in problems:
        kind = _recipe_kind(p)
        same = (type(p.error), p.error.path) if kind == "build" and p.error.path is not None else None
        if same in builds:
            builds[same].split = f"{builds[same].split}, {p.split}"
            continue
        rep.add(kind, p.error.message, split=p.split)
        if same is not None:
            builds[same] = rep.problems[-1]


def _recipe_kind(p: RecipeProblem) -> str:
    if isinstance(p.error, EmptySplitError):
        return "empty"
    if isinstance(p.error, UnlabeledSplitError):
        return "no_labels"
    return {"dataset": "build", "split": "build", "labeled": "labeled_subset", "unlabeled": "unlabeled_pool"}[p.stage]


def _label_kind(e: Exception) -> str:
    """The problem kind of an exception raised while reading a label."""
    if isinstance(e, MissingFileError):
        return "missing_label"
    if isinstance(e, LabelValueError):
        return "label_values"
    return "unreadable_label"


def _missing_label(image: str, label: str | Path, todo: str = "add the label or remove the image") -> str:
    return f"image {image} has no label file (expected {label}){missing_reason(Path(label))}; {todo}"


def _scan(rep: DomainReport, sr: SplitReport, ds: SegDataset, *, read_labels: bool, missing: dict[str, Path],
          subset: set[int] | None, max_files: int | None, progress: bool) -> None:
    """Read the first ``max_files`` samples of ``ds`` (all when None), recording sizes, classes and problems."""
    space = ds.label_space
    n = len(ds) if max_files is None else min(len(ds), max_files)
    sr.labels_checked = read_labels
    if read_labels:
        sr.stats = ClassStats(space.num_classes)
    k, ignore = space.num_classes, space.ignore_index
    bar = tqdm(range(n), desc=f"check {rep.name}/{sr.name}", unit="img", leave=False, disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    for i in bar:
        sr.scanned += 1
        img_file = _image_file(ds, i)
        image = None
        try:
            image = ds.load_image(i)
            sr.sizes[(int(image.shape[1]), int(image.shape[0]))] += 1
        except Exception as e:  # a UnivsegError from the adapter; anything else is reported too, never fatal
            rep.add("unreadable_image", _msg(e, img_file), split=sr.name, file=_file(e, img_file))
        if not read_labels:
            continue
        # A broken label outside the labeled subset is never read by this config: a warning.
        sev: Severity = "error" if subset is None or i in subset else "warning"
        if img_file in missing:
            rep.add("missing_label", _missing_label(img_file, missing[img_file]), split=sr.name, file=img_file)
            continue
        lab_file = _label_file(ds, i)
        try:
            label = ds.load_label(i)
        except Exception as e:
            kind = _label_kind(e)
            rep.add(kind, _msg(e, lab_file), severity="error" if kind == "missing_label" else sev, split=sr.name,
                    file=_file(e, lab_file), values=e.values if isinstance(e, LabelValueError) else None)
            continue
        if label is None:
            rep.add("missing_label", f"sample '{ds.sample_id(i)}' ({img_file}) has no label", split=sr.name, file=img_file)
            continue
        if image is not None:
            try:
                check_same_size(ds, i, image, label)
            except SizeMismatchError as e:
                rep.add("size_mismatch", e.message, severity=sev, split=sr.name, file=_file(e, lab_file))
                continue
        counts = _histogram(label, ignore)
        usable = image is not None  # a pair with an unreadable image is checked but not counted
        odd = [v for v in np.flatnonzero(counts) if v >= k and v != ignore]
        if odd:
            rep.add("label_values", f"{lab_file}: decoded label holds values {[int(v) for v in odd]} that are neither a "
                    f"class (0..{k - 1}) nor ignore ({ignore}); the dataset adapter is wrong",
                    severity=sev, split=sr.name, file=lab_file, values={int(v): int(counts[v]) for v in odd})
            continue
        if not usable:
            continue
        sr.stats.add(counts, ignore)  # type: ignore[union-attr]
        if subset is not None and i in subset and rep.labeled_stats is not None:
            rep.labeled_stats.add(counts, ignore)
    bar.close()


def _histogram(label: np.ndarray, ignore: int) -> np.ndarray:
    """Pixels per value of a decoded label (length >= ignore + 1)."""
    flat = np.asarray(label).ravel()
    if flat.size and flat.min() < 0:
        flat = flat[flat >= 0]
    counts = np.bincount(flat.astype(np.int64), minlength=max(256, ignore + 1))
    return counts


def _coverage_warnings(rep: DomainReport, dcfg, train: SegDataset | None, val: SegDataset | None) -> None:
    """Classes absent from the labeled subset / val split (full scans only); train/val file overlap."""
    names = rep.label_space.names if rep.label_space is not None else []
    checks = []
    tr = rep.split(dcfg.train_split)
    if rep.labeled_stats is not None and tr is not None and not tr.partial and rep.labeled_stats.labels:
        checks.append(("labeled subset", rep.labeled_stats, dcfg.train_split))
    va = rep.split(dcfg.val_split)
    if va is not None and va.stats is not None and not va.partial and va.stats.labels:
        checks.append((f"val split '{dcfg.val_split}'", va.stats, dcfg.val_split))
    for what, stats, split in checks:
        absent = [n for n, v in zip(names, stats.pixels) if v == 0]
        if absent:
            rep.add("class_absent", f"classes with no pixel in the {what}: {', '.join(absent)}",
                    severity="warning", split=split)
    if isinstance(train, FileSegDataset) and isinstance(val, FileSegDataset) and dcfg.train_split != dcfg.val_split:
        shared = sorted({p.resolve() for p in train.images} & {p.resolve() for p in val.images})
        if shared:
            shown = ", ".join(str(p) for p in shared[:5]) + (f" and {len(shared) - 5} more" if len(shared) > 5 else "")
            rep.add("overlap", f"{len(shared)} image(s) are in both split '{dcfg.train_split}' and val split "
                    f"'{dcfg.val_split}': {shown}; evaluation would be on training images", severity="warning",
                    split=dcfg.val_split, file=str(shared[0]))


def _image_file(ds: SegDataset, i: int) -> str:
    path = ds.image_file(i)
    return ds.sample_id(i) if path is None else str(path)


def _label_file(ds: SegDataset, i: int) -> str:
    path = ds.label_file(i)
    return f"{ds.sample_id(i)} (label)" if path is None else str(path)


def _file(e: Exception, fallback: str) -> str:
    """The file an exception concerns: its ``path`` field when it has one, else ``fallback``."""
    return e.path if isinstance(e, UnivsegError) and e.path is not None else fallback


def _msg(e: Exception, file: str) -> str:
    """A problem's message: a UnivsegError's own (it names the file); anything else prefixed with ``file``."""
    return e.message if isinstance(e, UnivsegError) else f"{file}: {type(e).__name__}: {e}"


def _rule(dcfg) -> str:
    lab = dcfg.labeled
    if lab.split_file is not None:
        return f"split file {lab.split_file}"
    seed = "" if lab.seed is None else f", seed {lab.seed}"
    if lab.count is not None:
        return f"count {lab.count}{seed}"
    if lab.fraction is not None:
        return f"fraction {lab.fraction}{seed}"
    return "all"


# ----------------------------------------------------------------------------------------------
# formatting
# ----------------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ", right: set[int] | None = None) -> list[str]:
    right = right if right is not None else set(range(1, len(header)))
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return indent + "  ".join(c.rjust(w) if j in right else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))).rstrip()

    return [line(cells[0]), indent + "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]


def _wxh(v: Sequence[int]) -> str:
    return f"{v[0]}x{v[1]}"


def _format_domain(d: DomainReport) -> list[str]:
    space = d.label_space
    head = f"Domain '{d.name}' (dataset {d.dataset}"
    if space is not None:
        head += f", label space '{space.name}': {space.num_classes} classes, ignore {space.ignore_index}"
    out = [head + ")"]
    rows = []
    for s in d.splits:
        sz = s.size_summary()
        sizes = "-" if sz is None else (
            f"{_wxh(sz['min'])} / {_wxh(sz['max'])} / {_wxh(sz['most_common'])} ({sz['most_common_count']})"
        )
        labeled = s.labeled if s.labels_checked or s.labeled else "-"
        rows.append([s.name, ",".join(s.roles), s.images, labeled, s.scanned, sizes])
    if rows:
        out += _table(["split", "use", "images", "labeled", "read", "size WxH: min / max / most common (n)"], rows,
                      right={2, 3, 4})
    sub = "?" if d.labeled_subset is None else str(d.labeled_subset)
    pool = "?" if d.unlabeled_pool is None else str(d.unlabeled_pool)
    out.append(f"  labeled subset: {sub} images ({d.labeled_rule}); unlabeled pool: {pool} images")

    columns: list[tuple[str, ClassStats]] = [(s.name, s.stats) for s in d.splits if s.stats is not None and s.stats.labels]
    train_rep = next((s for s in d.splits if "train" in s.roles), None)
    if (d.labeled_stats is not None and d.labeled_stats.labels and train_rep is not None and train_rep.stats is not None
            and d.labeled_stats.labels != train_rep.stats.labels):
        columns.insert(1 if columns else 0, ("labeled", d.labeled_stats))
    if space is not None and columns:
        header = ["class"]
        for name, _ in columns:
            header += [f"{name} pixels", "%", "images"]
        rows = []
        totals = [int(st.pixels.sum() + st.ignore_pixels) or 1 for _, st in columns]
        for k, cname in enumerate(space.names + ["(ignore)"]):
            row: list[Any] = [f"{k:>3} {cname}" if k < space.num_classes else f"    {cname}"]
            for (name, st), tot in zip(columns, totals):
                px = int(st.pixels[k]) if k < space.num_classes else int(st.ignore_pixels)
                row += [f"{px:,}", f"{100.0 * px / tot:.2f}", int(st.images[k]) if k < space.num_classes else "",]
            rows.append(row)
        out.append("")
        out += _table(header, rows, right=set(range(1, len(header))))

    errors = [p for p in d.problems if p.severity == "error"]
    warns = [p for p in d.problems if p.severity == "warning"]
    if d.problems:
        out.append("")
        out.append(f"  problems: {len(errors)} error(s), {len(warns)} warning(s)")
        for p in errors + warns:
            where = f"[{p.split}] " if p.split else ""
            text = p.message.replace("\n", "\n      ")
            out.append(f"  {p.severity.upper():7s} {p.kind}: {where}{text}")
    else:
        out.append("  no problems found")
    return out
