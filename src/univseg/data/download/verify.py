"""Check a downloaded archive against its expected size and checksum, and remember verified files.

A verified file gets a sidecar ``<file>.verified.json`` (size, mtime and digests) so that an
unchanged file is not hashed again on the next run.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ...errors import ChecksumError
from .archive import Archive

_READ_SIZE = 1 << 20


def file_digests(path: Path, algorithms: tuple[str, ...] = ("sha256",)) -> dict[str, str]:
    """Hex digests of ``path`` for the given hashlib algorithm names, in one pass."""
    hashes = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(_READ_SIZE):
            for h in hashes.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashes.items()}


def verify_archive(archive: Archive, path: Path) -> dict[str, str]:
    """Digests of ``path``; raises ChecksumError (after deleting ``path``) on a size / digest mismatch."""
    actual_size = path.stat().st_size
    if archive.size is not None and actual_size != archive.size:
        path.unlink()
        raise ChecksumError(
            f"size mismatch for {archive.filename} (from {archive.url}): expected {archive.size} bytes, "
            f"got {actual_size}. The file was deleted; run the same command again to download it afresh."
        )
    algos = ("sha256", "md5") if archive.md5 else ("sha256",)
    digests = file_digests(path, algos)
    exp = archive.expected()
    if exp is not None and digests[exp[0]] != exp[1]:
        path.unlink()
        raise ChecksumError(
            f"checksum mismatch for {archive.filename} (from {archive.url}): expected {exp[0]} {exp[1]}, "
            f"got {digests[exp[0]]}. The file was deleted; run the same command again to download it afresh "
            "(if this keeps happening, the file on the server has changed: please report it)."
        )
    return digests


def sidecar(path: Path) -> Path:
    """The file that records the digests of a verified ``path``."""
    return path.with_name(path.name + ".verified.json")


def recorded_digests(archive: Archive, path: Path) -> dict[str, str] | None:
    """Digests recorded when ``path`` was verified, if the file is unchanged since (saves re-hashing)."""
    try:
        rec = json.loads(sidecar(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return None
    if rec.get("size") != st.st_size or rec.get("mtime_ns") != st.st_mtime_ns:
        return None
    digests = rec.get("digests", {})
    exp = archive.expected()
    if exp is not None and digests.get(exp[0]) != exp[1]:
        return None
    if archive.md5 and "md5" not in digests:
        return None
    return digests


def record_digests(path: Path, digests: dict[str, str]) -> None:
    """Write the sidecar of ``path`` (atomically) with its current size, mtime and ``digests``."""
    st = path.stat()
    data = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "digests": digests}
    tmp = sidecar(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, sidecar(path))
