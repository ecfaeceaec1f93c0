"""The options of ``univseg tsne`` (no torch import: building the command line stays fast)."""
from __future__ import annotations

import argparse

#: 2-D projections and the package each needs.
METHODS: dict[str, str] = {"tsne": "scikit-learn", "umap": "umap-learn"}
DEFAULT_PER_CLASS = 200


def add_tsne_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``univseg tsne``."""
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                        help="checkpoint files (.pt) written by 'univseg train'; one panel each, side by side "
                        "(e.g. joint and univ-full)")
    parser.add_argument("--data", required=True, metavar="CONFIG",
                        help="experiment YAML file or built-in config name whose domains' val images are sampled")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                        help="override a key of --data, e.g. --set domains.city.dataset.root=/data (repeatable)")
    parser.add_argument("--per-class", type=positive_int, default=DEFAULT_PER_CLASS, metavar="N",
                        help=f"pixels sampled per domain and class (all of a class's pixels when it has fewer; "
                        f"default: {DEFAULT_PER_CLASS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pixel sample and of the projection (default: 0)")
    parser.add_argument("--method", choices=list(METHODS), default="tsne",
                        help="tsne (scikit-learn, default) or umap (needs: pip install umap-learn)")
    parser.add_argument("--out", metavar="DIR",
                        help="output folder (default: a 'tsne' folder beside the first checkpoint)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (``--per-class``, ``--tsne``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
