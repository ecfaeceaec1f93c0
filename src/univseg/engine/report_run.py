"""The sections of one training run in the HTML report of ``univseg report`` (see
:mod:`univseg.engine.report`): overview, training curves, IoU tables, confusion matrices,
label-space alignment, t-SNE and sample predictions.

The model is the run's ``latest.pt`` (the one ``eval_results.json`` scores; ``best.pt`` when there is
no ``latest.pt``), its data the run's ``config.yaml``; both are loaded only when a section needs them.
A section that cannot be made (no checkpoint, the data moved away) shows why instead, and the
rest of the report is still written.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from ..config import Config, load_config
from ..data.domain import Domain, build_domains
from ..data.label_space import LabelSpace
from ..errors import UnivsegError
from ..utils.table import fmt
from ..viz.curves import pseudo_label_curves, training_curves
from ..viz.heatmap import heatmap
from ..viz.html import cell, esc, figure, img, is_png, note, section, swatches, table
from ..viz.panel import overlay_with_legend
from .align import row_normalise, run_align
from .align_options import add_align_arguments
from .evaluator import evaluate
from .inference import InferenceSettings
from .predictor import Predictor
from .samples import val_samples
from .tsne import run_tsne
from .tsne_options import add_tsne_arguments

#: Files of which at least one makes a folder a training run.
RUN_FILES = ("metrics.jsonl", "eval_results.json", "latest.pt", "best.pt")
#: Checkpoints a report uses, first found first.
CHECKPOINTS = ("latest.pt", "best.pt")
#: Longest side (pixels) of a sample image in the report; larger images are scaled down.
SAMPLE_SIDE = 320
NO_COUNTERPART = "(no counterpart)"

Toc = list[tuple[str, str]]


@dataclass(frozen=True)
class ReportOptions:
    """What a report holds beyond the files: ``samples`` val images per domain with predictions,
    alignment (``align``) and t-SNE (``tsne`` pixels per class, None: not) computed at report time."""

    samples: int
    align: bool = False
    tsne: int | None = None
    device: str = "auto"
    progress: bool = True


def is_run(folder: Path) -> bool:
    """Whether ``folder`` holds a training run (one of :data:`RUN_FILES`)."""
    return any((folder / name).is_file() for name in RUN_FILES)


def read_json(path: Path) -> Any:
    """The JSON content of ``path``; UnivsegError naming the file when it is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise UnivsegError(f"{path} is not valid JSON ({e}); the file is damaged", path=path) from None


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records of a metrics.jsonl and the number of lines that are not a JSON record with an
    ``iter`` (e.g. the last line of a run killed while writing it)."""
    records, bad = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and "iter" in record:
            records.append(record)
        elif line.strip():
            bad += 1
    return records, bad


class RunModel:
    """A run's config, domains and predictor, each loaded when first used."""

    def __init__(self, folder: Path, device: str) -> None:
        self.folder = folder
        self.device = device
        self.checkpoint = next((folder / n for n in CHECKPOINTS if (folder / n).is_file()), None)
        self.config_path = folder / "config.yaml"

    def check(self) -> None:
        """UnivsegError saying what is missing when the run has no checkpoint or no config.yaml."""
        if self.checkpoint is None:
            raise UnivsegError(f"{self.folder} holds no checkpoint ({' or '.join(CHECKPOINTS)})", path=self.folder)
        if not self.config_path.is_file():
            raise UnivsegError(f"{self.folder} holds no config.yaml (the data of the run)", path=self.config_path)

    @cached_property
    def cfg(self) -> Config:
        self.check()
        return load_config(self.config_path)

    @cached_property
    def domains(self) -> list[Domain]:
        return build_domains(self.cfg)

    @cached_property
    def predictor(self) -> Predictor:
        self.check()
        return Predictor.from_checkpoint(self.checkpoint, device=self.device, amp=self.cfg.inference_amp,
                                         inference=InferenceSettings.from_config(self.cfg.eval))


def guarded(what: str, render: Callable[[], str]) -> str:
    """``render()``, or a note with the reason when it raises a UnivsegError (the report shows the rest)."""
    try:
        return render()
    except UnivsegError as e:
        print(f"report: {what}: {e}")
        return note(f"{what}: {e}")


# ----------------------------------------------------------------------------- evaluation results

def has_confusion(results: Mapping[str, Any]) -> bool:
    """Whether every scored domain of ``results`` holds its confusion matrix."""
    return all("confusion" in r for r in results["domains"].values() if "skipped" not in r)


def evaluate_run(model: RunModel, options: ReportOptions) -> dict[str, Any]:
    """The evaluation results (with confusion matrices) of the run's checkpoint on the val images of its config."""
    model.check()
    print(f"report: evaluating {model.checkpoint} on the val images of {model.config_path} (confusion matrices)")
    cfg, predictor = model.cfg, model.predictor
    return evaluate(predictor.model, predictor.label_spaces, model.domains, cfg.eval, cfg.inference_amp,
                    progress=options.progress, source=model.checkpoint)


def run_results(model: RunModel, options: ReportOptions) -> tuple[dict[str, Any] | None, str]:
    """The evaluation results of the run and where they come from: ``eval_results.json``; confusion
    matrices it lacks (written before univseg stored them) or the whole evaluation (an unfinished
    run) come from :func:`evaluate_run` at report time."""
    path = model.folder / "eval_results.json"
    stored = read_json(path) if path.is_file() else None
    if stored is not None and has_confusion(stored):
        return stored, f"{path.name} (iteration {stored.get('iteration', '?')})"
    try:
        computed = evaluate_run(model, options)
    except UnivsegError as e:
        return stored, f"{path.name}; no confusion matrices: {e}" if stored else f"no {path.name}, and no evaluation: {e}"
    where = f"{model.checkpoint.name} evaluated at report time"
    if stored is None:
        return computed, where
    merged = {name: dict(r) for name, r in stored["domains"].items()}
    for name, r in merged.items():
        confusion = computed["domains"].get(name, {}).get("confusion")
        if confusion is not None:
            r["confusion"] = confusion
    return {**stored, "domains": merged}, f"{path.name}; confusion matrices: {where}"


def _pct_cell(v: float | None) -> str:
    """A cell showing fraction ``v`` in percent (2 decimals), the fraction in ``data-value``."""
    return cell(fmt(None if v is None else 100.0 * v), value=v)


def iou_tables(results: Mapping[str, Any]) -> str:
    """The summary per domain (mIoU, accuracies, head) and one per-class IoU table per domain (percent)."""
    rows = []
    for name, r in results["domains"].items():
        if "skipped" in r:
            rows.append([cell(name, header=True), cell("-"), cell("-"), cell("-"), cell("-"), cell(r["skipped"])])
        else:
            rows.append([cell(name, header=True), _pct_cell(r["mIoU"]), _pct_cell(r["pixel_acc"]),
                         _pct_cell(r["mean_class_acc"]), cell(r["pixels"]), cell(r["head"])])
    rows.append([cell("mean", header=True), _pct_cell(results.get("mean_mIoU")), *[cell("")] * 4])
    summary = table(["domain", "mIoU (%)", "pixel acc (%)", "mean class acc (%)", "pixels", "head"], rows, class_="summary")
    per_class = [
        f"<div><h4>{esc(name)}</h4>"
        + table(["class", "IoU (%)"], [[cell(c, header=True), _pct_cell(v)] for c, v in r["per_class_iou"].items()],
                class_="iou", data_domain=name)
        + "</div>"
        for name, r in results["domains"].items() if "per_class_iou" in r
    ]
    return summary + f'<div class="tables">{"".join(per_class)}</div>'


def confusion_figures(results: Mapping[str, Any]) -> str:
    """One heatmap per scored domain: its confusion matrix with each ground-truth row divided by its sum."""
    figures = []
    for name, r in results["domains"].items():
        if "confusion" not in r:
            continue
        names = list(r["per_class_iou"])
        counts = np.asarray(r["confusion"], dtype=np.int64)
        cols = names + ([NO_COUNTERPART] if counts[:, len(names):].sum() > 0 else [])
        image = heatmap(row_normalise(counts[:, :len(cols)]), names, cols, title=f"{name}: predicted by {r['head']}",
                        subtitle="rows: ground truth, columns: prediction; each row sums to 1")
        caption = f"{name}: fraction of each ground-truth class's {counts.sum()} val pixels per predicted class"
        figures.append(figure(img(image, f"confusion matrix of {name}"), caption, class_="confusion", data_domain=name))
    return "".join(figures) or note("no confusion matrix")


# ----------------------------------------------------------------------------- alignment and t-SNE

def _parse(add_arguments: Callable[[argparse.ArgumentParser], None], argv: Sequence[str], progress: bool) -> argparse.Namespace:
    """The namespace of a verb's options (``add_arguments``) for ``argv``, as its command line would parse it."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(list(argv))
    args.no_progress = not progress
    return args


def png_figures(paths: Sequence[Path], kind: str) -> str:
    """A figure per PNG file (captioned with its name); a file that is not a PNG gets a note."""
    parts = []
    for path in paths:
        data = path.read_bytes()
        if is_png(data):
            parts.append(figure(img(data, f"{kind} {path.name}"), f"{path.parent.name}/{path.name}", class_=kind))
        else:
            parts.append(note(f"{path} is not a PNG image; left out"))
    return "".join(parts)


def suggestions(path: Path) -> str:
    """The suggested class mappings of an alignment.json, one line per ordered pair of heads."""
    lines = []
    for pair in read_json(path)["pairs"]:
        mapping = ", ".join(f"{a} → {m['target'] or 'ignore'}" for a, m in pair["mapping"].items())
        lines.append(f"<li><b>{esc(pair['src'])} → {esc(pair['dst'])}</b>: {esc(mapping)}</li>")
    return f"<p>Suggested class mappings ({esc(path)}):</p><ul>{''.join(lines)}</ul>"


def alignment(model: RunModel, options: ReportOptions) -> str:
    """The heatmaps and suggested mappings of every ``<checkpoint>_align`` folder of the run, computed
    first with ``options.align`` (``univseg align`` with its defaults and the run's config as --data)."""
    parts = []
    if options.align:
        model.check()
        if len(model.predictor.label_spaces) < 2:
            parts.append(note(f"{model.checkpoint.name} has one label space: nothing to align"))
        else:
            run_align(_parse(add_align_arguments, [str(model.checkpoint), "--data", str(model.config_path),
                                                   "--device", model.device, "--overwrite"], options.progress))
    for folder in sorted(p for p in model.folder.glob("*_align") if p.is_dir()):
        parts.append(f"<h4>{esc(folder.name)}</h4>")
        if (folder / "alignment.json").is_file():
            parts.append(suggestions(folder / "alignment.json"))
        parts.append(png_figures(sorted(folder.glob("*.png")), "alignment"))
    return "".join(parts) or note(
        f"no alignment: run 'univseg align {model.checkpoint or model.folder / CHECKPOINTS[0]} "
        f"--data {model.config_path}' or pass --align")


def tsne(model: RunModel, options: ReportOptions) -> str:
    """The plots in the run's ``tsne`` folder, computed first with ``options.tsne`` (``univseg tsne``
    with that --per-class and the run's config as --data)."""
    if options.tsne is not None:
        model.check()
        run_tsne(_parse(add_tsne_arguments, [str(model.checkpoint), "--data", str(model.config_path),
                                             "--per-class", str(options.tsne), "--device", model.device], options.progress))
    return png_figures(sorted((model.folder / "tsne").glob("*.png")), "tsne") or note(
        f"no t-SNE: run 'univseg tsne {model.checkpoint or model.folder / CHECKPOINTS[0]} "
        f"--data {model.config_path}' or pass --tsne")


# ----------------------------------------------------------------------------- sample predictions

def fit(image: np.ndarray, side: int = SAMPLE_SIDE) -> np.ndarray:
    """``image`` (HxWx3 uint8) scaled down (bilinear) so that its longest side is at most ``side``."""
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def _picture(image: np.ndarray, alt: str, **attrs: object) -> str:
    """A table cell showing ``image`` scaled down to fit (:func:`fit`)."""
    return f"<td>{img(fit(image), alt, **attrs)}</td>"


def _overlay_picture(image: np.ndarray, mask: np.ndarray, space: LabelSpace, alt: str, **attrs: object) -> str:
    """A table cell showing the colours of ``mask`` over ``image`` at :func:`fit`'s width, the legend of
    the classes it shows underneath."""
    width = fit(image).shape[1]
    return f"<td>{img(overlay_with_legend(image, mask, space, width), alt, **attrs)}</td>"


def domain_samples(predictor: Predictor, domain: Domain, count: int) -> str:
    """A table of the first ``count`` val images of ``domain``: image | ground truth | prediction of
    every head (colours over the image, the classes shown under each), and the colour legend of each
    label space shown."""
    spaces = predictor.label_spaces
    headers = ["sample", "image", f"ground truth ({domain.label_space.name})",
               *(f"{h} ({ls.name})" for h, ls in spaces.items())]
    rows = []
    for sample in val_samples(predictor, domain, count):
        image, sample_id = sample.image, sample.sample_id
        rows.append([
            cell(sample_id, header=True),
            _picture(image, f"{sample_id} image", data_kind="image"),
            _overlay_picture(image, sample.label, domain.label_space, f"{sample_id} ground truth", data_kind="ground-truth"),
            *(_overlay_picture(image, mask, spaces[head], f"{sample_id} {head}", data_kind="prediction", data_head=head)
              for head, mask in sample.predictions.items()),
        ])
    legend_spaces: dict[str, LabelSpace] = {domain.label_space.name: domain.label_space}
    legend_spaces.update((ls.name, ls) for ls in spaces.values())
    legends = "".join(f"<b>{esc(name)}</b>{swatches(ls.names, ls.palette)}" for name, ls in legend_spaces.items())
    return f"<h4>{esc(domain.name)}</h4>" + table(headers, rows, class_="samples", data_domain=domain.name) + legends


def samples(model: RunModel, options: ReportOptions) -> str:
    """Sample predictions of every domain of the run's config."""
    return "".join(domain_samples(model.predictor, d, options.samples) for d in model.domains)


# ----------------------------------------------------------------------------- the run

def overview(model: RunModel, results: Mapping[str, Any] | None, source: str) -> str:
    """Where the numbers come from: folder, checkpoint, iteration, best evaluation."""
    items = [f"folder: {model.folder.resolve()}",
             f"model: {model.checkpoint.name if model.checkpoint else 'no checkpoint'}",
             f"evaluation: {source}"]
    best = (results or {}).get("best") or {}
    if best.get("mean_mIoU") is not None:
        items.append(f"best mean mIoU: {100 * best['mean_mIoU']:.2f} at iteration {best.get('iteration')} (best.pt)")
    return "<ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"


def curves(folder: Path, title: str) -> str:
    """The training curves of ``folder``'s metrics.jsonl."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return note(f"no {path.name} in {folder}")
    records, bad = read_metrics(path)
    parts = [figure(img(training_curves(records, title), f"training curves of {title}"), f"{path}", class_="curves")]
    pseudo = pseudo_label_curves(records, title)
    if pseudo is not None:
        parts.append(figure(img(pseudo, f"pseudo-label diagnostics of {title}"), f"pseudo-labels, {path}", class_="pseudo-labels"))
    skipped = [r["iter"] for r in records if r.get("skipped_step")]
    if skipped:
        parts.append(note(f"{len(skipped)} step(s) skipped for a non-finite loss, at iteration(s) {skipped}"))
    if bad:
        parts.append(note(f"{bad} line(s) of {path} are not JSON records and were left out"))
    return "".join(parts)


def run_sections(folder: Path, title: str, anchor: str, options: ReportOptions, level: int = 2) -> tuple[str, Toc]:
    """The HTML sections of the run in ``folder`` (headings of ``level``, ids starting with ``anchor``)
    and their table-of-contents entries."""
    model = RunModel(folder, options.device)
    results, source = None, "none"
    try:
        results, source = run_results(model, options)
    except UnivsegError as e:
        source = str(e)
    parts: list[tuple[str, str, Callable[[], str]]] = [
        ("overview", "Overview", lambda: overview(model, results, source)),
        ("curves", "Training curves", lambda: curves(folder, title)),
        ("iou", "IoU per domain and class", lambda: iou_tables(results) if results else note(f"no evaluation: {source}")),
        ("confusion", "Confusion matrices", lambda: confusion_figures(results) if results else note(f"no evaluation: {source}")),
        ("align", "Label-space alignment", lambda: alignment(model, options)),
        ("tsne", "t-SNE of the pixel embeddings", lambda: tsne(model, options)),
    ]
    if options.samples:
        parts.append(("samples", "Sample predictions", lambda: samples(model, options)))
    html, toc = [], []
    for suffix, heading, render in parts:
        print(f"report: {title}: {heading}")
        html.append(section(f"{anchor}-{suffix}", heading, guarded(heading, render), level))
        toc.append((f"{anchor}-{suffix}", f"{title}: {heading}"))
    return "".join(html), toc
