"""The tables ``univseg weights list`` and ``univseg weights verify`` print."""
from __future__ import annotations

from typing import Sequence

from ...utils.table import markdown_table
from .cache import FileCheck, cache_dir, cache_path, check_cached
from .catalogue import IMAGENET_MEAN, IMAGENET_STD, WEIGHTS, get_weights


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def weights_table() -> str:
    """One row per backbone and catalogue entry: file name, checksum, local presence, sources.

    Followed by the input normalisation of weights not trained with torchvision's ImageNet one.
    """
    from ..backbones import BACKBONES

    rows, notes = [], []
    for name in sorted(set(BACKBONES.names()) | set(WEIGHTS.names())):
        if name not in WEIGHTS:
            rows.append([name, "-", "-", "-", "no ImageNet weights"])
            notes.append(f"{name}: {BACKBONES.get(name).no_imagenet_reason or 'no ImageNet weights known'}")
            continue
        entry = WEIGHTS.get(name)
        present = "yes" if cache_path(entry).is_file() else "no"
        checksum = entry.sha256 or (f"prefix {entry.name_prefix} (file name)" if entry.name_prefix else "none")
        rows.append([name, entry.filename, checksum, present, "; ".join(entry.sources)])
        if (entry.mean, entry.std) != (IMAGENET_MEAN, IMAGENET_STD):
            notes.append(f"{name}: trained with model.mean: {_fmt(entry.mean)}, model.std: {_fmt(entry.std)} "
                         "(used with pretrained: imagenet unless the config sets them)")
    table = markdown_table(["backbone", "file", "sha256", "local", "sources"], rows)
    footer = [f"cache: {cache_dir()}  (fetch with: univseg weights fetch NAME)", *notes]
    return "\n".join([table, "", *footer])


def verify_cached(names: Sequence[str] = ()) -> list[FileCheck]:
    """Hash the cached files of ``names`` (default: every catalogue entry whose file is present)."""
    if names:
        return [check_cached(get_weights(n)) for n in names]
    checks = [check_cached(WEIGHTS.get(n)) for n in WEIGHTS.names()]
    return [c for c in checks if c.status != "missing"]


def verify_table(checks: Sequence[FileCheck]) -> str:
    """The result of :func:`verify_cached` as a table, with what to do about bad files."""
    rows = [[c.entry.name, c.path, c.status, c.digest or "-"] for c in checks]
    lines = [markdown_table(["backbone", "file", "status", "sha256"], rows)] if rows else [
        f"no weight file in {cache_dir()} (fetch with: univseg weights fetch NAME)"
    ]
    lines += [f"{c.entry.name}: expected {c.entry.check}; replace it with: univseg weights fetch {c.entry.name} --force"
              for c in checks if c.status == "mismatch"]
    return "\n".join(lines)
