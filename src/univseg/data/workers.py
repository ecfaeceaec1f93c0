"""Data-loading worker processes: stop signals are the main process's, and so is their end."""
from __future__ import annotations

import atexit
import functools
import signal
from typing import Any, Iterator

_TRACKED: list[Any] = []  # worker processes (multiprocessing.Process) of the training loaders


def worker_ignores_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: SIGTERM and SIGINT sent to the whole process group (Ctrl-C, ``kill --
    -PGID``, a scheduler stopping a job) are the main process's to handle (finish the step, checkpoint);
    a worker killed by them would crash the main process instead."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def _end_workers() -> None:
    """At exit, end the tracked workers still running: they ignore the SIGTERM that multiprocessing's own
    exit handler (which runs after this one) sends them before it waits for them."""
    alive = [process for process in _TRACKED if process.is_alive()]
    if alive and hasattr(signal, "SIGCHLD"):  # torch's handler would report the kill as a worker failure
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for process in alive:
        process.kill()


@functools.cache
def _end_workers_at_exit() -> None:
    atexit.register(_end_workers)


def worker_options(num_workers: int) -> dict[str, Any]:
    """DataLoader keyword arguments for workers that leave stop signals to the main process; iterate
    such a loader through :func:`tracked`."""
    return {"worker_init_fn": worker_ignores_stop_signals} if num_workers > 0 else {}


def tracked(iterator: Iterator[Any]) -> Iterator[Any]:
    """``iterator`` (of a DataLoader built with :func:`worker_options`), its workers ended at exit."""
    workers = getattr(iterator, "_workers", ())
    if workers:
        _TRACKED[:] = [process for process in _TRACKED if process.is_alive()] + list(workers)  # forget ended loaders
        _end_workers_at_exit()
    return iterator
