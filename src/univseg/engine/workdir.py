"""A training work dir: refuse to write over another run, and one training process per folder.

``prepare_work_dir`` decides what happens to a folder that already holds a run (checkpoints):
continue it (``resume``), move it aside (``overwrite``: renamed to ``<dir>.old-<time>``, nothing
deleted) or refuse. ``WorkDirLock`` is an exclusive lock file (``<dir>/.lock`` holding host and
pid) so a second training on the same folder stops with a message instead of mixing two runs;
the lock of a process that no longer runs on this host is taken over with a note.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from ..errors import WorkDirError
from ..utils.files import check_writable_folder

RUN_FILES = ("latest.pt", "best.pt")


def holds_run(work_dir: Path) -> bool:
    """Whether ``work_dir`` holds a checkpoint of an earlier run."""
    return any((work_dir / name).is_file() for name in RUN_FILES)


def prepare_work_dir(work_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """Make ``work_dir`` ready for a run; returns where an overwritten run was moved (else None).

    Raises WorkDirError when the folder holds a run and neither ``resume`` nor ``overwrite`` is set,
    WriteError when files cannot be created in it (a file in its place, no permission, read-only).
    """
    if resume and overwrite:
        raise WorkDirError("--resume and --overwrite contradict each other: continue the run or start over, not both")
    check_writable_folder(work_dir, "--work-dir")
    if resume or not holds_run(work_dir):
        return None
    if not overwrite:
        found = [n for n in RUN_FILES if (work_dir / n).is_file()]
        source = "" if "latest.pt" in found else " (from best.pt: the run stopped before writing latest.pt)"
        raise WorkDirError(
            f"{work_dir} holds a run ({', '.join(found)}); continue it with --resume{source}, start over with "
            "--overwrite (the old run is moved aside, not deleted), or choose another --work-dir",
            path=work_dir,
        )
    aside = work_dir.with_name(f"{work_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while aside.exists():
        aside = aside.with_name(f"{work_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    WorkDirLock(work_dir).check_free()
    work_dir.rename(aside)
    return aside


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkDirLock:
    """Exclusive use of a work dir by one training process (a context manager)."""

    def __init__(self, work_dir: Path) -> None:
        self.path = Path(work_dir) / ".lock"
        self.held = False

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _is_stale(self, owner: dict | None) -> bool:
        if owner is None:
            return False  # being written right now, or not ours to judge: treat as held
        return owner.get("host") == socket.gethostname() and not _alive(int(owner.get("pid", -1)))

    def check_free(self) -> None:
        """Raise WorkDirError if another live process holds the lock."""
        if self.path.is_file():
            owner = self._owner()
            if not self._is_stale(owner):
                raise self._held_error(owner)

    def _held_error(self, owner: dict | None) -> WorkDirError:
        who = f"process {owner.get('pid')} on {owner.get('host')}" if owner else "another process"
        return WorkDirError(
            f"{self.path.parent} is in use by {who} (lock file {self.path}); wait for it to finish or choose "
            "another --work-dir. If no such process runs any more, delete the lock file.",
            path=self.path.parent,
        )

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if not self._is_stale(owner):
                    raise self._held_error(owner) from None
                print(f"note: removing the stale lock {self.path} of process {owner.get('pid')}, which no longer runs")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(record)
            self.held = True
            return
        raise self._held_error(self._owner())

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "WorkDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
