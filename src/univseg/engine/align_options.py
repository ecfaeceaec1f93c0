"""The options of ``univseg align`` (no torch import: building the command line stays fast)."""
from __future__ import annotations

import argparse

#: A class of A goes to its best class of B by co-prediction when that class took at least this
#: fraction of its pixels (0.5: a majority, so at most one class of B can pass).
DEFAULT_MIN_FRACTION = 0.5
#: Otherwise to its best class of B by centroid cosine similarity when that is at least this; else to 'ignore'.
DEFAULT_MIN_COSINE = 0.5
#: A class of A predicted on fewer val pixels than this is matched by its centroid only.
DEFAULT_MIN_PIXELS = 100


def add_align_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``univseg align``."""
    parser.add_argument("checkpoint", help="checkpoint file (.pt) written by 'univseg train', with two or more heads")
    parser.add_argument("--data", metavar="CONFIG",
                        help="experiment YAML or built-in config name whose domains' val images give the co-prediction "
                        "affinity (and the class centroids when the checkpoint has no centroid bank)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                        help="override a key of the --data config, e.g. --set eval.max_images=20 (repeatable)")
    parser.add_argument("--out", help="output folder (default: beside the checkpoint, <stem>_align)")
    parser.add_argument("--overwrite", action="store_true", help="replace the output of an earlier 'univseg align' in --out")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--min-fraction", type=float, default=DEFAULT_MIN_FRACTION, metavar="F",
                        help="a class maps to its best class by co-prediction when that class took at least this "
                        f"fraction of its pixels (default: {DEFAULT_MIN_FRACTION:g}, a majority)")
    parser.add_argument("--min-cosine", type=float, default=DEFAULT_MIN_COSINE, metavar="C",
                        help="otherwise to its best class by centroid cosine similarity when that is at least this, "
                        f"else to 'ignore' (default: {DEFAULT_MIN_COSINE:g})")
    parser.add_argument("--min-pixels", type=int, default=DEFAULT_MIN_PIXELS, metavar="N",
                        help="a class predicted on fewer val pixels is matched by its centroid only "
                        f"(default: {DEFAULT_MIN_PIXELS})")
