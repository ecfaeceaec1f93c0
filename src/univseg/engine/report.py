"""One self-contained HTML page about a training run or a method comparison.

    univseg report work_dirs/demo                      # a run of 'univseg train' -> work_dirs/demo/report.html
    univseg report work_dirs/demo_experiment --out cmp.html --samples 2

The page embeds every image as a base64 PNG (no other file, no network, no JavaScript needed; see
:mod:`univseg.viz.html`), so it can be mailed or archived on its own.

**A run** (a work dir: ``metrics.jsonl``, ``eval_results.json``, ``latest.pt``, ``config.yaml``): the
training curves (loss terms, learning rate, seconds per iteration, val mIoU), the mIoU and per-class
IoU of every domain, one confusion matrix per domain, the label-space alignment heatmaps and the
t-SNE plot when ``univseg align`` / ``univseg tsne`` wrote them beside the checkpoint (their default
``--out``: ``<checkpoint>_align/`` and ``tsne/``; ``--align`` / ``--tsne`` compute them first), and
``--samples`` val images per domain (default 3) as image | ground truth | prediction in every label
space of the model (sections in :mod:`univseg.engine.report_run`).

The confusion matrices are those ``eval_results.json`` holds (the evaluator stores each domain's
matrix with its IoU); for a run written before it did, or one still training (no
``eval_results.json``), the checkpoint is evaluated on the val images of its ``config.yaml`` while
the report is made.

**An experiment** (a folder of ``univseg experiment``: ``results.json``, ``results.png``,
``runs/<method>[/seed<N>]/``): the comparison table and bar chart first, then one part per run with
the sections above (no sample predictions unless ``--samples`` is given).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .. import __version__
from ..errors import UnivsegError
from ..utils.files import atomic_write_text
from ..utils.table import fmt
from ..viz.html import cell, esc, note, page, section, table
from .experiment import mean_std_cell
from .report_options import DEFAULT_SAMPLES, REPORT_NAME
from .report_run import ReportOptions, Toc, is_run, png_figures, read_json, run_sections

WHAT_TO_PASS = ("pass a training work dir (written by 'univseg train': metrics.jsonl, eval_results.json, latest.pt) "
                "or an experiment folder (written by 'univseg experiment': results.json, runs/)")


def is_experiment(folder: Path) -> bool:
    """Whether ``folder`` holds the output of ``univseg experiment`` (results.json or runs/, or a label
    sweep's label_efficiency.json)."""
    return (folder / "results.json").is_file() or (folder / "runs").is_dir() or is_label_sweep(folder)


def is_label_sweep(folder: Path) -> bool:
    """Whether ``folder`` holds the output of ``univseg experiment --labels`` (label_efficiency.json)."""
    return (folder / "label_efficiency.json").is_file()


def folder_kind(folder: Path) -> str:
    """What ``folder`` holds: "experiment" or "run". UnivsegError naming ``folder`` and what to pass when
    it is missing, not a folder, or holds neither (listing sub-folders that do, if any)."""
    if not folder.exists():
        raise UnivsegError(f"{folder} does not exist; {WHAT_TO_PASS}", path=folder, hint=WHAT_TO_PASS)
    if not folder.is_dir():
        raise UnivsegError(f"{folder} is a file, not a folder; {WHAT_TO_PASS} (e.g. {folder.parent})",
                           path=folder, hint=WHAT_TO_PASS)
    if is_experiment(folder):
        return "experiment"
    if is_run(folder):
        return "run"
    inside = sorted(p.name for p in folder.iterdir() if p.is_dir() and (is_run(p) or is_experiment(p)))
    found = f" (its sub-folders {', '.join(inside[:10])} do: pass one of them)" if inside else ""
    raise UnivsegError(f"{folder} holds neither a training run nor an experiment{found}; {WHAT_TO_PASS}",
                       path=folder, hint=WHAT_TO_PASS)


# ----------------------------------------------------------------------------- experiment

def comparison(folder: Path) -> str:
    """The method comparison of an experiment: the table of results.json (mIoU %, ± std over seeds),
    the note of results.md and the bar chart results.png."""
    rows = read_json(folder / "results.json") if (folder / "results.json").is_file() else []
    if not rows:
        return note(f"no results.json in {folder} yet (the experiment has not finished)")
    fixed = {"method", "seeds", "average", "minutes"}
    columns = [k for k in rows[0] if k not in fixed and not k.endswith("_std") and not k.startswith("gap_closed_")]
    columns += ["average", "minutes"]
    gap = any("gap_closed_average" in r for r in rows)
    body = [[cell(r["method"], header=True), *(cell(fmt(mean_std_cell(r, c)), value=r.get(c)) for c in columns),
             *([cell(fmt(r.get("gap_closed_average")), value=r.get("gap_closed_average"))] if gap else []),
             cell(", ".join(map(str, r["seeds"])))] for r in rows]
    headers = ["method", *columns, *(["gap closed (average, %)"] if gap else []), "seeds"]
    parts = [table(headers, body, class_="comparison")]
    return "".join(parts) + note_and_chart(folder, "results")


def note_and_chart(folder: Path, stem: str) -> str:
    """The prose lines of ``folder/<stem>.md`` (not its title or table) and the chart ``<stem>.png``."""
    parts = []
    md = folder / f"{stem}.md"
    if md.is_file():
        parts += [f"<p>{esc(line)}</p>" for line in md.read_text().splitlines() if line.strip() and line[0] not in "#|"]
    chart = folder / f"{stem}.png"
    if chart.is_file():
        parts.append(png_figures([chart], "chart"))
    return "".join(parts)


def experiment_runs(folder: Path) -> list[Path]:
    """The run folders under ``folder/runs`` in the order of results.json's methods (others after)."""
    runs = [p for p in sorted((folder / "runs").rglob("*")) if p.is_dir() and is_run(p)]
    results = folder / "results.json"
    order = [r["method"] for r in read_json(results)] if results.is_file() else []
    rank = {m: i for i, m in enumerate(order)}
    return sorted(runs, key=lambda p: (rank.get(p.relative_to(folder / "runs").parts[0], len(rank)), str(p)))


def label_efficiency(folder: Path) -> str:
    """A label sweep's average mIoU per method (rows) and labeled-image count (columns), the note of
    label_efficiency.md and the chart label_efficiency.png."""
    rows = read_json(folder / "label_efficiency.json")
    counts = sorted({r["labels"] for r in rows})
    by = {(r["method"], r["labels"]): r for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    body = [[cell(m, header=True), *(cell(fmt(mean_std_cell(by[(m, n)], "average")), value=by[(m, n)].get("average"))
                                     if (m, n) in by else cell("") for n in counts)] for m in methods]
    parts = [table(["method", *(f"{n} labels" for n in counts)], body, class_="label-efficiency")]
    return "".join(parts) + note_and_chart(folder, "label_efficiency")


def experiment_body(folder: Path, options: ReportOptions, prefix: str = "") -> tuple[str, Toc]:
    """The comparison, then one part per run; the table of contents lists the runs. A label sweep:
    the label-efficiency chart, then the experiment of every count."""
    if is_label_sweep(folder):
        print("report: label efficiency")
        parts, toc = [section("label-efficiency", "Label efficiency", label_efficiency(folder))], [("label-efficiency", "Label efficiency")]
        for sub in sorted((p for p in folder.glob("labels-*") if is_experiment(p)), key=lambda p: int(p.name.split("-")[1])):
            body, sub_toc = experiment_body(sub, options, prefix=f"{sub.name}-")
            parts.append(section(sub.name, f"{sub.name.split('-')[1]} labeled images per domain", body))
            toc += [(sub.name, sub.name), *sub_toc]
        return "".join(parts), toc
    print(f"report: comparison {prefix.rstrip('-')}".rstrip())
    parts = [section(f"{prefix}comparison", "Method comparison", comparison(folder))]
    toc = [(f"{prefix}comparison", f"{prefix}Method comparison")]
    for i, run in enumerate(experiment_runs(folder)):
        label = run.relative_to(folder / "runs").as_posix()
        anchor = f"{prefix}run{i}"
        body, _ = run_sections(run, label, anchor, options, level=3)
        parts.append(section(anchor, f"Run {label}", body))
        toc.append((anchor, f"Run {prefix}{label}"))
    return "".join(parts), toc


# ----------------------------------------------------------------------------- the verb

def write_report(folder: str | Path, options: ReportOptions, out: str | Path | None = None) -> Path:
    """Write the report of the run or experiment in ``folder`` to ``out`` (default: ``folder/report.html``)
    atomically; returns its path."""
    folder = Path(folder)
    kind, name = folder_kind(folder), folder.resolve().name
    body, toc = experiment_body(folder, options) if kind == "experiment" else run_sections(folder, name, "run", options)
    subtitle = f"{kind} {folder.resolve()}; written {time.strftime('%Y-%m-%d %H:%M:%S')} by univseg {__version__}"
    out = Path(out) if out is not None else folder / REPORT_NAME
    atomic_write_text(out, page(f"univseg report: {name}", body, toc, subtitle))
    return out


def run_report(args: argparse.Namespace) -> int:
    """``univseg report``: write the HTML report of a work dir or an experiment folder."""
    samples = args.samples
    if samples is None:
        samples = 0 if folder_kind(Path(args.folder)) == "experiment" else DEFAULT_SAMPLES
    options = ReportOptions(samples, args.align, args.tsne, args.device, not getattr(args, "no_progress", False))
    out = write_report(args.folder, options, args.out)
    print(f"report written to {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
