"""Logging of long runs: the command line's handler, whether progress bars fit the output, and the
one-line training summary a job scheduler's log file keeps.

Every module logs through ``logging.getLogger(__name__)`` (children of the ``univseg`` logger);
the command line sends them to stdout with a time stamp and level (:func:`setup_logging`;
``--quiet``: warnings and errors only, ``-v``: debug records too). Progress bars redraw one line
with carriage returns, which a log file keeps as noise, so they are drawn only when stdout and
stderr are terminals (:func:`interactive`); otherwise the trainer writes :func:`interval_line`
every ``train.log_interval`` iterations.
"""
from __future__ import annotations

import logging
import resource
import sys
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import torch

ROOT = "univseg"
#: The loss terms shown first in an interval line, when the method has them (the rest follow sorted).
LEADING_TERMS = ("loss", "sup", "unsup", "ent_cross", "ent_within")
#: Prefix of the pseudo-label diagnostics (per class; methods/pseudo_labels.py): kept in metrics.jsonl, not in the line.
DIAGNOSTICS_PREFIX = "pl_"


class _StdoutHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stdout`` is at the time of each record."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # logging.StreamHandler.__init__ assigns it
        pass


def setup_logging(verbosity: int) -> None:
    """Send the ``univseg`` loggers' records to stdout: warnings and errors only for ``verbosity < 0``
    (``--quiet``), info at 0, debug for ``verbosity > 0`` (``-v``). Calling it again replaces its handler."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if isinstance(h, _StdoutHandler)]:
        logger.removeHandler(handler)
    handler = _StdoutHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(level)


def interactive() -> bool:
    """Whether stdout and stderr are both terminals, where progress bars can redraw their line."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def peak_memory_gib(device: torch.device) -> float:
    """The peak memory so far, GiB: CUDA tensors allocated on ``device``, else the process's peak resident set."""
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux (bytes on macOS: an overestimate there)


def peak_memory(device: torch.device) -> str:
    """:func:`peak_memory_gib` with its kind: ``1.23 GiB cuda`` or ``1.23 GiB rss``."""
    return f"{peak_memory_gib(device):.2f} GiB {'cuda' if device.type == 'cuda' else 'rss'}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def interval_line(
    iteration: int, total: int, terms: Mapping[str, float | None], sec_per_iter: float, data_sec_per_iter: float,
    device: torch.device,
) -> str:
    """``iter 40/500 | loss 1.234 sup 1.100 ... | lr 9.3e-04 | 0.85 s/it (data 0.05) | ETA 6m31s | peak 1.23 GiB rss``
    from an interval's record (its terms; None values and the pseudo-label diagnostics left out)."""
    shown = {k: v for k, v in terms.items() if v is not None and k != "lr" and not k.startswith(DIAGNOSTICS_PREFIX)}
    names = [k for k in LEADING_TERMS if k in shown] + sorted(k for k in shown if k not in LEADING_TERMS)
    losses = " ".join(f"{k} {terms[k]:.4g}" for k in names)
    lr = f" | lr {terms['lr']:.2e}" if "lr" in terms else ""
    eta = _duration(max(total - iteration, 0) * sec_per_iter)
    return (
        f"iter {iteration}/{total} | {losses}{lr} | {sec_per_iter:.3f} s/it (data {data_sec_per_iter:.3f}) | "
        f"ETA {eta} | peak {peak_memory(device)}"
    )
