"""Atomic file writes: a crash or a full disk never leaves a half-written checkpoint, prediction or
result file.

Every write goes to a temporary file in the target's folder (``.<name>.<random>.tmp``), is flushed
to disk, then renamed onto the target with ``os.replace`` (and the folder flushed too). When anything fails before the rename,
the temporary file is removed and the target is exactly as it was. Writes that name what they
write (``what="checkpoint"``; the text, JSON and tensor helpers always do) raise an ``OSError`` (disk
full, no permission) as :class:`~univseg.errors.WriteError` naming the file.
"""
from __future__ import annotations

import json
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
    """``torch.save``, with its write failures (RuntimeErrors from the zip writer) raised as OSError."""
    try:
        torch.save(obj, path)
    except RuntimeError as e:
        raise OSError(f"torch.save failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def atomic_torch_save(obj: Any, path: str | Path, what: str = "file", before_replace: Callable[[], None] | None = None) -> None:
    """``torch.save`` of ``obj`` through :func:`atomic_write`."""
    atomic_write(path, lambda p: _torch_save(obj, p), what, before_replace)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text), "file")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
