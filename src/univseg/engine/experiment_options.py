"""The method keys and options of ``univseg experiment`` (no torch import: building the command line stays fast)."""
from __future__ import annotations

import argparse

#: Methods that are experiment rows under their own name, in the order of the default table.
PLAIN_METHODS = ("joint", "univ-cross", "univ-full", "adversarial", "souly", "fixmatch", "unimatch", "univ-match")

#: Registered methods selected only through keys that name domains (single-<D>, cycada-<A>-to-<B>).
KEYED_METHODS = ("single", "cycada")

#: The ceiling row: 'joint' with every training image of every domain labeled (not in the default table).
ORACLE = "oracle"

#: The forms of a method key, for help texts and errors.
KEY_FORMS = f"single-<domain>, finetune-<A>-to-<B>, cycada-<A>-to-<B>, {ORACLE}"


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``univseg experiment`` after the config ones."""
    parser.add_argument("--out", help="output folder (default: work_dirs/<config>_experiment)")
    parser.add_argument("--methods", nargs="+", metavar="KEY",
                        help=f"method keys: {KEY_FORMS}, {', '.join(PLAIN_METHODS)} "
                        "(default: experiment.methods of the config, else all)")
    parser.add_argument("--seeds", nargs="+", type=int, help="repeat every method with these seeds (mean ± std)")
    parser.add_argument("--labels", nargs="+", type=int, metavar="N",
                        help="repeat the comparison with N labeled images per domain for each N (label efficiency: "
                        "labels-<N>/ each, label_efficiency.png; default: experiment.labels of the config, else the "
                        "config's own labeled rule)")
