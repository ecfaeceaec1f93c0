"""Where weight files live (torch.hub's cache, shared with torchvision) and whether they are intact."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import ChecksumError
from .catalogue import WeightFile

_READ_SIZE = 1 << 20


def cache_dir() -> Path:
    """``<torch.hub.get_dir()>/checkpoints``: honours ``TORCH_HOME`` and ``torch.hub.set_dir``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cache_path(entry: WeightFile) -> Path:
    """The cached file of ``entry`` (it may not exist)."""
    return cache_dir() / entry.filename


def sha256_of(path: Path) -> str:
    """Hex sha256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(entry: WeightFile, path: Path) -> str:
    """The sha256 of ``path``; raises ChecksumError when it is not ``entry``'s file."""
    digest = sha256_of(path)
    if not entry.matches(digest):
        raise ChecksumError(
            f"{path} is not the expected {entry.filename}: expected {entry.check}, got sha256 {digest}",
            path=path,
            values={"expected": entry.sha256 or entry.name_prefix, "actual": digest},
            hint=f"univseg weights fetch {entry.name} --force",
        )
    return digest


@dataclass(frozen=True)
class FileCheck:
    """The state of one cached file: ``status`` is ``ok``, ``mismatch`` or ``missing``."""

    entry: WeightFile
    path: Path
    status: str
    digest: str | None = None


def check_cached(entry: WeightFile) -> FileCheck:
    """Hash the cached file of ``entry``, if present, and compare it with the catalogue."""
    path = cache_path(entry)
    if not path.is_file():
        return FileCheck(entry, path, "missing")
    digest = sha256_of(path)
    return FileCheck(entry, path, "ok" if entry.matches(digest) else "mismatch", digest)
