"""Training curves of a run from its ``metrics.jsonl`` records, drawn with matplotlib into one PNG.

    png = training_curves([json.loads(line) for line in open("work_dirs/demo/metrics.jsonl")])

Four panels against the iteration: the loss terms, the learning rate, the seconds per iteration
and the val mIoU (%) of every domain with their mean. Runs that make pseudo-labels get a second
figure (:func:`pseudo_label_curves`): the share of confident pixels per domain, the weighted
unlabeled/supervised loss ratio and, with ``method.consistency.diagnostics``, the per-class
precision and coverage of the confident pseudo-labels. Steps skipped for a non-finite loss are
marked by red lines on the loss panel. matplotlib draws on its Agg canvas directly (no pyplot, so
no global backend or figure state); line colours follow the palette of the bar chart
(:mod:`univseg.viz.chart`).
"""
from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

from ..data.label_space import default_palette
from ..errors import UnivsegError

#: Keys of a training record that are not loss terms.
NOT_TERMS = ("iter", "lr", "sec_per_iter", "data_sec_per_iter", "peak_mem_gib")
#: Prefixes and keys of the pseudo-label diagnostics (their own figure, not loss terms).
PSEUDO_LABEL_PREFIXES = ("confident_", "pl_precision_", "pl_recall_", "pl_coverage_", "cross_kept_")
PSEUDO_LABEL_KEYS = ("unsup_to_sup",)
MATPLOTLIB_HINT = "pip install matplotlib"

Record = Mapping[str, Any]


def loss_terms(records: Sequence[Record]) -> list[str]:
    """Names of the loss terms in the training records: ``loss`` first, then in order of appearance."""
    names: dict[str, None] = {}
    for r in records:
        names.update((k, None) for k, v in r.items() if k not in NOT_TERMS and _is_number(v) and not is_diagnostic(k))
    return sorted(names, key=lambda n: n != "loss")


def is_diagnostic(key: str) -> bool:
    """Whether a record key is a pseudo-label diagnostic rather than a loss term."""
    return key in PSEUDO_LABEL_KEYS or key.startswith(PSEUDO_LABEL_PREFIXES)


def series(records: Sequence[Record], value: Any) -> tuple[list[int], list[float]]:
    """Iterations and values ``value(record)`` of the records where it is a number."""
    points = [(r["iter"], value(r)) for r in records]
    points = [(i, float(v)) for i, v in points if _is_number(v)]
    return [i for i, _ in points], [v for _, v in points]


def _colors(n: int) -> list[tuple[float, float, float]]:
    """``n`` line colours of the bar chart's palette, as matplotlib RGB fractions."""
    return [tuple(c / 255 for c in rgb) for rgb in default_palette(n + 1)[1:]]


def _canvas() -> tuple[Any, Any]:
    """matplotlib's ``Figure`` and ``FigureCanvasAgg``; UnivsegError saying what to install when it is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UnivsegError(f"the training curves need matplotlib, which is not installed: {MATPLOTLIB_HINT}",
                           hint=MATPLOTLIB_HINT) from None
    return Figure, FigureCanvasAgg


def _plot(ax: Any, lines: Sequence[tuple[str, list[int], list[float]]], title: str, ylabel: str, empty: str,
          styles: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Draw ``(label, iterations, values)`` lines on ``ax`` (``empty`` as text when there are none)."""
    ax.set_title(title)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.grid(True, color="#e1e1e1")
    drawn = [line for line in lines if line[1]]
    if not drawn:
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, color="#777777")
        return
    for (label, xs, ys), color in zip(drawn, _colors(len(drawn))):
        style = {"color": color, "marker": "o" if len(xs) < 30 else None, "markersize": 3, **(styles or {}).get(label, {})}
        ax.plot(xs, ys, label=label, **style)
    if len(drawn) > 1:
        ax.legend(fontsize="small")


def training_curves(records: Sequence[Record], title: str = "") -> bytes:
    """A PNG of the loss terms, learning rate, seconds per iteration and val mIoU (%) of ``records``
    (the parsed lines of a metrics.jsonl). Raises UnivsegError when matplotlib is not installed."""
    figure_cls, canvas_cls = _canvas()
    train = [r for r in records if "eval" not in r and not r.get("skipped_step")]
    evals = [r for r in records if isinstance(r.get("eval"), Mapping)]
    skipped = [r["iter"] for r in records if r.get("skipped_step")]
    fig = figure_cls(figsize=(12, 8), dpi=90, layout="constrained")
    canvas_cls(fig)
    if title:
        fig.suptitle(title)
    (loss_ax, lr_ax), (time_ax, miou_ax) = fig.subplots(2, 2)
    _plot(loss_ax, [(t, *series(train, lambda r, t=t: r.get(t))) for t in loss_terms(train)], "loss terms", "value",
          "no training step logged")
    for k, it in enumerate(skipped):
        loss_ax.axvline(it, color="red", alpha=0.4, label="skipped step" if k == 0 else None)
    if skipped:
        loss_ax.legend(fontsize="small")
    _plot(lr_ax, [("lr", *series(train, lambda r: r.get("lr")))], "learning rate", "lr", "no training step logged")
    _plot(time_ax, [("sec_per_iter", *series(train, lambda r: r.get("sec_per_iter")))], "seconds per iteration", "s",
          "no training step logged")
    domains = list(dict.fromkeys(d for r in evals for d in r["eval"]))
    lines = [(d, *series(evals, lambda r, d=d: _pct(r["eval"].get(d)))) for d in domains]
    lines.append(("mean", *series(evals, lambda r: _pct(r.get("mean_mIoU")))))
    _plot(miou_ax, lines, "val mIoU", "mIoU (%)", "no evaluation yet", {"mean": {"color": "black", "linestyle": "--"}})
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


def pseudo_label_curves(records: Sequence[Record], title: str = "") -> bytes | None:
    """A PNG of the pseudo-label diagnostics of ``records`` (None when they hold none): the confident
    share per domain and the unlabeled/supervised loss ratio, then per domain with diagnostics its
    per-class precision, recall and coverage (%), all classes together as a dashed black line."""
    train = [r for r in records if "eval" not in r and not r.get("skipped_step")]
    keys = list(dict.fromkeys(k for r in train for k in r if is_diagnostic(k)))
    if not keys:
        return None
    confident = [k[len("confident_"):] for k in keys if k.startswith("confident_")]
    detailed = [k[len("pl_precision_"):] for k in keys if k.startswith("pl_precision_") and k[len("pl_precision_"):] in confident]
    figure_cls, canvas_cls = _canvas()
    fig = figure_cls(figsize=(15, 4 * (1 + len(detailed))), dpi=90, layout="constrained")
    canvas_cls(fig)
    if title:
        fig.suptitle(f"{title}: pseudo-labels")
    axes = fig.subplots(1 + len(detailed), 3, squeeze=False)
    axes[0][2].set_axis_off()
    cross = [k for k in keys if k.startswith("cross_kept_")]
    _plot(axes[0][0], [(d, *series(train, lambda r, d=d: _pct(r.get(f"confident_{d}")))) for d in confident]
          + [(k, *series(train, lambda r, k=k: _pct(r.get(k)))) for k in cross],
          "confident pseudo-labels", "% of unlabeled pixels", "no pseudo-labels logged")
    _plot(axes[0][1], [("unsup_to_sup", *series(train, lambda r: r.get("unsup_to_sup")))],
          "unlabeled / supervised loss (weighted)", "ratio", "no ratio logged")
    overall = {"all classes": {"color": "black", "linestyle": "--"}}
    for row, d in enumerate(detailed, start=1):
        for ax, kind in zip(axes[row], ("precision", "recall", "coverage")):
            prefix = f"pl_{kind}_{d}_"
            classes = [k[len(prefix):] for k in keys if k.startswith(prefix)]
            lines = [(c, *series(train, lambda r, k=prefix + c: _pct(r.get(k)))) for c in classes]
            lines.append(("all classes", *series(train, lambda r, k=f"pl_{kind}_{d}": _pct(r.get(k)))))
            _plot(ax, lines, f"{d}: {kind} of confident pseudo-labels", f"{kind} (%)", "no labeled unlabeled pixels", overall)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


def _pct(v: Any) -> float | None:
    """A fraction as a percentage (None stays None)."""
    return 100.0 * v if _is_number(v) else None


def _is_number(v: Any) -> bool:
    """Whether ``v`` is an int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)
