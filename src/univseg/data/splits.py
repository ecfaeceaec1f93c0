"""Labeled-subset selection and split files ('image [label]' per line, as UniMatch/mmseg use)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .base import DataError, FileSegDataset, SegDataset


def select_subset(n: int, count: int | None = None, fraction: float | None = None, seed: int = 0) -> list[int]:
    """Sorted indices of a deterministic random subset of ``range(n)`` (all when neither is given).

    The subset for a larger count contains the subset for a smaller one (same permutation).
    """
    if count is None and fraction is None:
        return list(range(n))
    k = count if count is not None else max(1, int(round(fraction * n)))
    if k > n:
        raise ValueError(f"asked for {k} images but only {n} are available")
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(int(i) for i in perm[:k])


def read_split_file(path: str | Path) -> list[str]:
    """The first column (image path) of every non-empty, non-comment line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file not found: {path}")
    entries = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append(line.split()[0])
    return entries


def sample_keys(dataset: SegDataset, i: int) -> list[str]:
    """The names by which a split file may refer to sample ``i``."""
    keys = [dataset.sample_id(i)]
    if isinstance(dataset, FileSegDataset):
        p = dataset.images[i]
        keys += [p.name, p.stem, str(p)]
        if dataset.root is not None:
            try:
                keys.append(str(p.relative_to(dataset.root)))
            except ValueError:
                pass
    return keys


def match_split_entries(dataset: SegDataset, entries: Sequence[str], origin: str) -> list[int]:
    """Indices of ``dataset`` named by split-file entries; unknown entries raise DataError naming them."""
    lookup: dict[str, int] = {}
    for i in range(len(dataset)):
        for key in sample_keys(dataset, i):
            lookup.setdefault(key, i)
    found, missing = [], []
    for e in entries:
        i = lookup.get(e, lookup.get(e.lstrip("./")))
        (missing if i is None else found).append(e if i is None else i)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{origin}: {len(missing)} entries match no image of the split: {shown}")
    return sorted(set(found))


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
