"""Data-loading worker processes: stop signals are the main process's, and so is their end."""
from __future__ import annotations

import atexit
import functools
import multiprocessing
import signal
from pathlib import Path
from typing import Any


def worker_ignores_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: SIGTERM and SIGINT sent to the whole process group (Ctrl-C, ``kill --
    -PGID``, a scheduler stopping a job) are the main process's to handle (finish the step, checkpoint);
    a worker killed by them would crash the main process instead."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def _end_workers() -> None:
    """At exit, end the child processes that ignore SIGTERM (these workers): multiprocessing's own exit
    handler, which runs after this one, would send them SIGTERM and wait for them for ever."""
    stopping = [p for p in multiprocessing.active_children() if p.daemon and _ignores_sigterm(p.pid)]
    if stopping and hasattr(signal, "SIGCHLD"):  # torch's handler would report the kill as a worker failure
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for process in stopping:
        process.kill()


def _ignores_sigterm(pid: int | None) -> bool:
    """Whether process ``pid`` ignores SIGTERM (Linux: /proc; elsewhere every daemon child is taken to)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    ignored = next((line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), "0")
    return bool(int(ignored, 16) >> (signal.SIGTERM - 1) & 1)


@functools.cache
def _end_workers_at_exit() -> None:
    atexit.register(_end_workers)


def worker_options(num_workers: int) -> dict[str, Any]:
    """DataLoader keyword arguments for ``num_workers`` workers that leave stop signals to the main process."""
    if num_workers == 0:
        return {}
    _end_workers_at_exit()
    return {"worker_init_fn": worker_ignores_stop_signals}
