"""The options of ``univseg report`` (no torch import: building the command line stays fast)."""
from __future__ import annotations

import argparse

from .tsne_options import DEFAULT_PER_CLASS, positive_int

#: Val images per domain shown with their predictions in the report of a single run.
DEFAULT_SAMPLES = 3
REPORT_NAME = "report.html"


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``univseg report``."""
    parser.add_argument("folder", metavar="WORK_DIR_OR_EXPERIMENT_DIR",
                        help="a training work dir ('univseg train': metrics.jsonl, eval_results.json, latest.pt) or "
                        "an experiment folder ('univseg experiment': results.json, runs/)")
    parser.add_argument("--out", metavar="FILE.html",
                        help=f"the HTML file to write (default: {REPORT_NAME} in the folder)")
    parser.add_argument("--samples", type=_non_negative_int, metavar="N",
                        help="val images per domain shown as image | ground truth | prediction in every label space "
                        f"(default: {DEFAULT_SAMPLES} for a work dir, 0 for each run of an experiment)")
    parser.add_argument("--align", action="store_true",
                        help="compute the label-space alignment ('univseg align CHECKPOINT --data <run>/config.yaml') "
                        "of every run with two or more heads before the report (else its heatmaps are shown when a "
                        "<checkpoint>_align folder exists)")
    parser.add_argument("--tsne", nargs="?", type=positive_int, const=DEFAULT_PER_CLASS, metavar="PER_CLASS",
                        help="compute the t-SNE of every run ('univseg tsne CHECKPOINT --data <run>/config.yaml "
                        f"--per-class PER_CLASS', default {DEFAULT_PER_CLASS}) before the report (else tsne/*.png beside "
                        "the checkpoint is shown when it exists)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (predictions and --align / --tsne)")


def _non_negative_int(text: str) -> int:
    """``--samples``: an integer >= 0."""
    return 0 if text.strip() == "0" else positive_int(text)
