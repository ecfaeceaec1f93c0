"""Labeled-subset selection and split files ('image [label]' per line, as UniMatch/mmseg use)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import DataError
from .base import FileSegDataset, SegDataset, read_text_file


def select_subset(n: int, count: int | None = None, fraction: float | None = None, seed: int = 0) -> list[int]:
    """Sorted indices of a deterministic random subset of ``range(n)`` (all when neither is given).

    ``fraction`` selects ``fraction * n`` images rounded half up (at least one). The subset for a
    larger count contains the subset for a smaller one (same permutation of the same seed).
    """
    if count is None and fraction is None:
        return list(range(n))
    k = count if count is not None else max(1, math.floor(fraction * n + 0.5))
    if k > n:
        raise ValueError(f"asked for {k} images but only {n} are available")
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in perm[:k])


def read_split_file(path: str | Path) -> list[str]:
    """The first column (image path) of every non-empty, non-comment line; MissingFileError when absent."""
    entries = []
    for line in read_text_file(Path(path), "split file").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append(line.split()[0])
    return entries


def _exact_keys(dataset: SegDataset, i: int) -> list[str]:
    """Names that identify sample ``i`` exactly: sample id, path relative to the root, stored path."""
    keys = [dataset.sample_id(i)]
    if isinstance(dataset, FileSegDataset):
        p = dataset.images[i]
        if dataset.root is not None:
            try:
                keys.append(str(p.relative_to(dataset.root)))
            except ValueError:
                pass
        keys.append(str(p))
    return keys


def _loose_keys(dataset: SegDataset, i: int) -> list[str]:
    """Shorter names of sample ``i`` (file name, stem), usable when they are unambiguous."""
    if isinstance(dataset, FileSegDataset):
        p = dataset.images[i]
        return [p.name, p.stem]
    return []


def sample_keys(dataset: SegDataset, i: int) -> list[str]:
    """The names by which a split file may refer to sample ``i``."""
    return _exact_keys(dataset, i) + _loose_keys(dataset, i)


def match_pool_entries(datasets: Sequence[SegDataset], entries: Sequence[str], origin: str) -> list[tuple[int, int]]:
    """``(dataset position, index)`` pairs named by split-file entries, sorted and deduplicated.

    An entry may be a sample's path relative to its dataset root, its stored path, its sample id,
    or (when no other sample shares it) its file name or stem. Exact names win over file names,
    and earlier datasets over later ones. Unknown or ambiguous entries raise DataError naming
    them and ``origin`` (the split file, also its ``path``); ``values`` holds the entries as
    ``{"missing": [...], "ambiguous": [...]}``.
    """
    lookup: dict[str, tuple[int, int]] = {}
    for d, ds in enumerate(datasets):
        for i in range(len(ds)):
            for key in _exact_keys(ds, i):
                lookup.setdefault(key, (d, i))
    loose: dict[str, set[tuple[int, int]]] = {}
    for d, ds in enumerate(datasets):
        for i in range(len(ds)):
            for key in _loose_keys(ds, i):
                if key not in lookup:
                    loose.setdefault(key, set()).add((d, i))
    ambiguous_keys = {k for k, v in loose.items() if len(v) > 1}
    lookup.update({k: next(iter(v)) for k, v in loose.items() if len(v) == 1})
    found: set[tuple[int, int]] = set()
    missing, ambiguous = [], []
    for e in entries:
        for cand in (e, e[2:] if e.startswith("./") else e, e.lstrip("/")):
            if cand in lookup:
                found.add(lookup[cand])
                break
        else:
            (ambiguous if e in ambiguous_keys else missing).append(e)
    if missing or ambiguous:
        parts = []
        if missing:
            parts.append(f"{len(missing)} entries match no image of the split: {_shown(missing)}")
        if ambiguous:
            parts.append(
                f"{len(ambiguous)} entries name several images (give the path relative to the dataset root): {_shown(ambiguous)}"
            )
        raise DataError(f"{origin}: " + "; ".join(parts), path=origin, values={"missing": missing, "ambiguous": ambiguous})
    return sorted(found)


def match_split_entries(dataset: SegDataset, entries: Sequence[str], origin: str) -> list[int]:
    """Indices of ``dataset`` named by split-file entries; unknown entries raise DataError naming them."""
    return [i for _, i in match_pool_entries([dataset], entries, origin)]


def _shown(names: Sequence[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def split_lines(dataset: SegDataset, indices: Iterable[int], with_labels: bool) -> list[str]:
    """Split-file lines for ``indices``: relative image path, then the label path when known."""
    lines = []
    for i in indices:
        if isinstance(dataset, FileSegDataset):
            img = _relative(dataset.images[i], dataset.root)
            if with_labels and dataset.labels is not None:
                lines.append(f"{img} {_relative(dataset.labels[i], dataset.root)}")
            else:
                lines.append(img)
        else:
            lines.append(dataset.sample_id(i))
    return lines


def _relative(p: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return str(p.relative_to(root))
        except ValueError:
            pass
    return str(p)
