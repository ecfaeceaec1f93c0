"""Atomic file writes: a crash or a full disk never leaves a half-written checkpoint, prediction or
result file.

Every write goes to a temporary file in the target's folder (``.<name>.<random>.tmp``), is flushed
to disk, then renamed onto the target with ``os.replace`` (and the folder flushed too). When anything fails before the rename,
the temporary file is removed and the target is exactly as it was. Writes that name what they
write (``what="checkpoint"``; the text, JSON and tensor helpers always do) raise an ``OSError`` (disk
full, no permission) as :class:`~univseg.errors.WriteError` naming the file.
"""
from __future__ import annotations

import glob
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import WriteError


def atomic_write(
    path: str | Path,
    write: Callable[[Path], None],
    what: str | None = None,
    before_replace: Callable[[], None] | None = None,
) -> None:
    """Call ``write(tmp_path)`` on a temporary file in the same folder, then rename it onto ``path``.

    ``before_replace`` runs after the temporary file is complete, just before the rename (e.g. to
    keep the previous file under another name). With ``what`` (e.g. ``"checkpoint"``) an OSError is
    raised as WriteError naming ``path`` and saying whether a previous file is intact; without it
    (``write`` may raise OSErrors of its own, e.g. a download) it propagates unchanged.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as e:
        if what is None or isinstance(e, WriteError):
            raise
        raise _write_error(path, what, e) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (the rename) to disk where the platform allows opening folders."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not support fsync of a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def _write_error(path: Path, what: str, e: OSError) -> WriteError:
    """The WriteError of a failed write of ``path``: the reason, and what is left on disk."""
    reason = e.strerror or str(e) or type(e).__name__
    state = f"the previous {what} {path} is intact" if path.is_file() else f"no {what} was written to {path}"
    hint = "free disk space (or fix the folder's permissions) and try again"
    return WriteError(f"cannot write {what} {path}: {reason}; {state}; {hint}", path=path, hint=hint)


def _torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` into a file opened here, so that a failed write (a full disk) raises the OSError of
    the operating system ("No space left on device"), not the zip writer's RuntimeError; a RuntimeError
    without one behind it is raised as OSError."""
    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as e:
        cause = e.__cause__ or e.__context__
        if isinstance(cause, OSError):
            raise cause from None
        raise OSError(f"torch.save failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def atomic_torch_save(obj: Any, path: str | Path, what: str = "file", before_replace: Callable[[], None] | None = None) -> None:
    """``torch.save`` of ``obj`` through :func:`atomic_write`."""
    atomic_write(path, lambda p: _torch_save(obj, p), what, before_replace)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text), "file")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON (see :func:`strict_json`) through :func:`atomic_write`."""
    atomic_write_text(path, json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n")


def strict_json(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None, so that it dumps as strict JSON
    (``Infinity`` and ``NaN`` are not JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def remove_stale_temporaries(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the temporary files :func:`atomic_write` left in ``folder`` for targets ``names`` when its
    process was killed mid-write (each as large as the file it was writing); returns them. Call it only
    while no other process writes there (e.g. holding the work dir's lock)."""
    stale = sorted(p for name in names for p in folder.glob(f".{glob.escape(name)}.*.tmp") if p.is_file())
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def check_writable_folder(folder: Path, flag: str) -> None:
    """Check that ``folder`` can hold files without creating it: it, or the nearest folder above it
    that exists, is a folder in which a file can be created (a test file is created and deleted).
    WriteError naming ``flag`` (the option that chose the folder) and the folder otherwise: a file
    where the folder or one above it should be, no permission, a read-only file system."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        where = f"{flag} {folder} is a file" if existing == folder else f"{flag} {folder}: {existing} is a file"
        raise WriteError(f"{where}, not a folder; give a folder (it is created when missing)", path=existing, key=flag)
    try:
        fd, name = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=existing)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise WriteError(
            f"{flag} {folder}: cannot write there ({e.strerror or e}); choose a folder you can write to "
            "(or fix its permissions)", path=folder, key=flag,
        ) from None
