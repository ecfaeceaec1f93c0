"""A lock file that keeps two concurrent downloads of the same dataset into the same root apart."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from ...errors import DownloadError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


@contextlib.contextmanager
def dataset_lock(root: Path, name: str) -> Iterator[None]:
    """Hold ``root/.univseg_download_<name>.lock`` for the ``with`` block.

    A lock left by a process that no longer exists is taken over; one held by a live process
    raises :class:`DownloadError`.
    """
    lock = root / f".univseg_download_{name}.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _pid_alive(pid):
                raise DownloadError(
                    f"another 'univseg data download {name}' (pid {pid}) is working in {root}; wait for it to "
                    f"finish (or, if no such process exists, delete {lock})"
                ) from None
            lock.unlink(missing_ok=True)  # stale lock of a killed run
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    else:  # pragma: no cover - lost a race twice
        raise DownloadError(f"cannot lock {lock}; delete it if no other download is running")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
