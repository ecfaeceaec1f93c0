"""univseg report: the HTML page of a run and of an experiment, its embedded images, the errors for
folders that hold neither, and the page as a headless browser shows it."""
from __future__ import annotations

import argparse
import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import train_tiny_with_cli
from PIL import Image

from univseg.config import load_config
from univseg.engine.experiment import summarize, write_results
from univseg.engine.report import run_report, write_report
from univseg.engine.report_options import add_report_arguments
from univseg.engine.report_run import ReportOptions, RunModel, confusion_figures, curves, run_results
from univseg.errors import UnivsegError
from univseg.viz.html import PNG_SIGNATURE

SAMPLES = 2
HEADS = ("city", "rural")


class Page(HTMLParser):
    """The elements of a page: ``(tag, attributes, attributes of the innermost table, text)`` in order."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[dict] = []
        self.tables: list[dict] = []
        self.body: dict = {}
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body = a
        self.elements.append({"tag": tag, "attrs": a, "table": self.tables[-1] if self.tables else {}, "text": ""})
        if tag == "table":
            self.tables.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.tables.pop()

    def handle_data(self, data: str) -> None:
        if self.elements:
            self.elements[-1]["text"] += data

    def find(self, tag: str, **attrs: str) -> list[dict]:
        """Elements of ``tag`` whose attributes include ``attrs`` (``data_domain`` means data-domain)."""
        want = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
        return [e for e in self.elements if e["tag"] == tag and all(e["attrs"].get(k) == v for k, v in want.items())]

    def column(self, table: dict) -> dict[str, str | None]:
        """``{row header: data-value of the first cell after it}`` of the table with attributes ``table``."""
        cells = [e for e in self.elements if e["table"] == table and e["tag"] in ("th", "td")]
        return {h["text"]: v["attrs"].get("data-value") for h, v in zip(cells, cells[1:])
                if h["tag"] == "th" and h["attrs"].get("scope") == "row"}


def decoded_images(page: Page) -> list[Image.Image]:
    """Every <img> of the page, decoded from its data URI (fails on anything else)."""
    images = []
    for e in page.find("img"):
        prefix = "data:image/png;base64,"
        assert e["attrs"]["src"].startswith(prefix), e["attrs"]["src"][:60]
        data = base64.b64decode(e["attrs"]["src"][len(prefix):], validate=True)
        assert data[:8] == PNG_SIGNATURE
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.width > 0 and image.height > 0
        images.append(image)
    return images


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny univ-match run (two domains, heads city and rural; centroids and pseudo-labels with their
    diagnostics) trained through the command line."""
    return train_tiny_with_cli(
        tmp_path_factory.mktemp("report"), "method.name=univ-match", "method.consistency.diagnostics=true"
    )[1]


@pytest.fixture(scope="session")
def run_page(tiny_run: Path) -> tuple[str, Page]:
    """The report of the tiny run with sample predictions, alignment and t-SNE computed."""
    out = write_report(tiny_run, ReportOptions(samples=SAMPLES, align=True, tsne=5, progress=False),
                       tiny_run.parent / "report.html")
    text = out.read_text()
    return text, Page(text)


def report_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    return parser.parse_args(list(argv))


def test_run_report_shows_the_runs_numbers_curves_matrices_and_predictions(tiny_run, run_page):
    text, page = run_page
    results = json.loads((tiny_run / "eval_results.json").read_text())
    for name, r in results["domains"].items():
        shown = page.column({"class": "iou", "data-domain": name})
        assert shown == {c: None if v is None else repr(v) for c, v in r["per_class_iou"].items()}
        assert page.column({"class": "summary"})[name] == repr(r["mIoU"])
        assert len(page.find("figure", class_="confusion", data_domain=name)) == 1
        predictions = page.find("img", data_kind="prediction")
        for head in HEADS:
            in_domain = [e for e in predictions if e["table"].get("data-domain") == name and e["attrs"]["data-head"] == head]
            assert len(in_domain) == SAMPLES, (name, head)
        assert len([e for e in page.find("img", data_kind="ground-truth") if e["table"].get("data-domain") == name]) == SAMPLES
    assert page.column({"class": "summary"})["mean"] == repr(results["mean_mIoU"])
    assert len(page.find("figure", class_="curves")) == 1
    assert len(page.find("figure", class_="pseudo-labels")) == 1
    assert page.find("figure", class_="alignment") and (tiny_run / "latest_align" / "alignment.json").is_file()
    assert page.find("figure", class_="tsne") and (tiny_run / "tsne" / "tsne.png").is_file()
    images = decoded_images(page)
    assert len(images) == len(page.find("img")) > 2 * SAMPLES * (2 + len(HEADS))
    assert "http:" not in text and "https:" not in text and "<link" not in text


def test_confusion_matrices_are_stored_and_recomputed_for_older_runs(tiny_run, tmp_path):
    results = json.loads((tiny_run / "eval_results.json").read_text())
    for r in results["domains"].values():
        counts = np.array(r["confusion"])
        assert counts.sum() == r["pixels"]
        iou = np.diag(counts[:, :-1]) / (counts.sum(1) + counts[:, :-1].sum(0) - np.diag(counts[:, :-1]))
        assert iou == pytest.approx([np.nan if v is None else v for v in r["per_class_iou"].values()], nan_ok=True)
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old, ignore=shutil.ignore_patterns("*_align", "tsne", "tensorboard"))
    stripped = {**results, "domains": {n: {k: v for k, v in r.items() if k != "confusion"} for n, r in results["domains"].items()}}
    (old / "eval_results.json").write_text(json.dumps(stripped))
    got, source = run_results(RunModel(old, "cpu"), ReportOptions(samples=0, progress=False))
    assert "evaluated at report time" in source
    assert got["domains"] == results["domains"]  # stored values, and the same matrices again
    page = Page(write_report(old, ReportOptions(samples=0, progress=False)).read_text())
    assert len(page.find("figure", class_="confusion")) == len(results["domains"])
    assert not page.find("img", data_kind="prediction")


def test_experiment_report_starts_with_the_comparison(tiny_run, tmp_path, capsys):
    exp = tmp_path / "exp"
    for key in ("joint", "univ-full"):
        shutil.copytree(tiny_run, exp / "runs" / key, ignore=shutil.ignore_patterns("tensorboard"))
    results = json.loads((tiny_run / "eval_results.json").read_text())
    rows = summarize({"univ-full": {0: results}, "joint": {0: results}}, list(HEADS))
    write_results(exp, rows, list(HEADS), load_config(tiny_run / "config.yaml"))
    assert run_report(report_args(str(exp))) == 0
    text = (exp / "report.html").read_text()
    page = Page(text)
    shown = page.column({"class": "comparison"})
    assert list(shown) == ["univ-full", "joint"]
    assert all(v == repr(r["city"]) for v, r in zip(shown.values(), rows))
    assert page.find("figure", class_="chart")
    assert text.index('<h2 id="comparison"') < text.index(">Run univ-full</h2>") < text.index(">Run joint</h2>")
    assert len(page.find("table", class_="iou")) == 2 * len(HEADS)
    assert not page.find("img", data_kind="prediction")  # none by default for an experiment's runs
    decoded_images(page)
    assert f"report written to {exp / 'report.html'}" in capsys.readouterr().out


def test_folders_without_a_run_or_an_experiment_are_refused(tmp_path, tiny_run):
    missing = tmp_path / "nowhere"
    with pytest.raises(UnivsegError, match="does not exist; pass a training work dir") as e:
        run_report(report_args(str(missing)))
    assert e.value.path == str(missing) and str(missing) in str(e.value)
    empty = tmp_path / "empty"
    (empty / "notes").mkdir(parents=True)
    with pytest.raises(UnivsegError, match=re.escape(f"{empty} holds neither a training run nor an experiment; pass")):
        run_report(report_args(str(empty)))
    shutil.copytree(tiny_run, empty / "myrun", ignore=shutil.ignore_patterns("*.pt*", "tensorboard", "*_align", "tsne"))
    with pytest.raises(UnivsegError, match=r"\(its sub-folders myrun do: pass one of them\)"):
        run_report(report_args(str(empty)))
    with pytest.raises(UnivsegError, match="is a file, not a folder"):
        run_report(report_args(str(empty / "myrun" / "config.yaml")))
    assert not list(tmp_path.rglob("report.html"))


def test_report_options():
    args = report_args("runs/x")
    assert (args.samples, args.align, args.tsne, args.out) == (None, False, None, None)
    args = report_args("runs/x", "--samples", "0", "--tsne", "--align", "--out", "r.html")
    assert (args.samples, args.align, args.tsne, args.out) == (0, True, 200, "r.html")
    assert report_args("runs/x", "--tsne", "7").tsne == 7
    with pytest.raises(SystemExit):
        report_args("runs/x", "--samples", "-1")


def chromium(page: Path, shot: Path, profile: Path) -> tuple[Page, str]:
    """Load ``page`` in headless chromium: its DOM after the load event, chromium's log (stderr),
    and a 1280x2000 screenshot in ``shot``."""
    command = [shutil.which("chromium"), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
               "--window-size=1280,2000", f"--screenshot={shot}", "--dump-dom", page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return Page(done.stdout), done.stderr


def test_report_in_a_headless_browser(run_page, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    text, page = run_page
    path = tmp_path / "report.html"
    path.write_text(text)
    dom, log = chromium(path, tmp_path / "shot.png", tmp_path / "profile")
    assert dom.body.get("data-images") == str(len(page.find("img"))), "the page's check script did not run"
    assert dom.body.get("data-broken-images") == "0"
    assert "CONSOLE" not in log, [line for line in log.splitlines() if "CONSOLE" in line]
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("L"), dtype=np.float64)
    assert shot.shape == (2000, 1280) and shot.std() > 20 and (shot < 128).mean() > 0.01
    # the same checks catch a corrupt image and an external one (blocked by the page's policy, logged)
    broken = text.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
    broken = broken.replace("</h1>", '</h1><img src="https://example.invalid/x.png" alt="external">', 1)
    path.write_text(broken)
    dom, log = chromium(path, tmp_path / "shot2.png", tmp_path / "profile")
    assert dom.body.get("data-broken-images") == "2" and "CONSOLE" in log


def test_damaged_metrics_skipped_steps_and_unmapped_predictions(tmp_path):
    records = [{"iter": 1, "loss": 2.0, "lr": 0.1, "sec_per_iter": 0.5}, {"iter": 2, "skipped_step": True, "nonfinite": ["loss"]},
               {"iter": 2, "eval": {"a": 0.5}, "mean_mIoU": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"iter": 3, "lo')
    page = Page(curves(tmp_path, "run"))
    assert len(decoded_images(page)) == 1
    notes = [e["text"] for e in page.find("p", class_="note")]
    assert notes == ["1 step(s) skipped for a non-finite loss, at iteration(s) [2]",
                     f"1 line(s) of {tmp_path / 'metrics.jsonl'} are not JSON records and were left out"]
    domain = {"head": "h via x->y", "per_class_iou": {"p": 0.5, "q": None}, "confusion": [[3, 1, 0], [0, 0, 0]]}
    heights = []
    for unmapped in (0, 2):
        domain["confusion"][0][2] = unmapped
        page = Page(confusion_figures({"domains": {"d": domain, "e": {"skipped": "no head"}}}))
        assert [e["attrs"]["data-domain"] for e in page.find("figure", class_="confusion")] == ["d"]
        heights.append(decoded_images(page)[0].height)
    assert heights[1] > heights[0]  # a column (long vertical label) for the pixels the class mapping sends nowhere


def test_pseudo_label_curves_plot_the_diagnostics_apart_from_the_loss_terms():
    from univseg.viz.curves import loss_terms, pseudo_label_curves

    records = [{"iter": i, "loss": 1.0 / i, "unsup": 0.1, "confident_a": 0.5 + 0.01 * i, "unsup_to_sup": 0.2,
                "pl_precision_a": 0.8, "pl_coverage_a": 0.6, "pl_precision_a_road": 0.9, "pl_coverage_a_road": 0.7,
                "pl_precision_a_car": None, "pl_coverage_a_car": 0.1, "lr": 0.1, "sec_per_iter": 1.0} for i in (1, 2, 3)]
    assert loss_terms(records) == ["loss", "unsup"]
    png = pseudo_label_curves(records, "run")
    image = Image.open(io.BytesIO(png))
    assert image.height > image.width / 2  # two rows of panels: overview and domain a's classes
    assert pseudo_label_curves([{"iter": 1, "loss": 1.0}]) is None
    plain = pseudo_label_curves([{k: v for k, v in r.items() if not k.startswith("pl_")} for r in records])
    assert Image.open(io.BytesIO(plain)).height < image.height
