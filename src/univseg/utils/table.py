"""Plain-text and Markdown tables for terminal summaries and result files."""
from __future__ import annotations

from typing import Sequence


def fmt(v: object, digits: int = 2) -> str:
    """Numbers with fixed decimals, None/NaN as '-', everything else as str."""
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table; also readable as plain text."""
    cells = [[fmt(c, digits) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    line = lambda items: "| " + " | ".join(str(x).ljust(w) for x, w in zip(items, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])
