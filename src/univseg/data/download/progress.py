"""Console output of the downloader: human-readable sizes, status lines, warnings and progress bars."""
from __future__ import annotations

import sys
from typing import Any


def human_size(n: int | float) -> str:
    """``n`` bytes as a short decimal size, e.g. ``'2.0 GB'``."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def log(progress: bool, msg: str) -> None:
    """Print a status line to stderr when ``progress`` is on."""
    if progress:
        print(msg, file=sys.stderr, flush=True)


def warn(msg: str) -> None:
    """Print a warning to stderr, whatever the progress setting."""
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def progress_bar(progress: bool, **kw: Any):
    """A tqdm progress bar on stderr, hidden unless ``progress``; ``kw`` are passed to tqdm."""
    from tqdm import tqdm

    return tqdm(disable=not progress, file=sys.stderr, dynamic_ncols=True, leave=False, **kw)
