"""The options of ``univseg export`` (no torch import: building the command line stays fast)."""
from __future__ import annotations

import argparse

#: Export formats and the suffix of their default output file.
FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
#: ``univseg predict --runtime``: what runs the model, and what file it reads.
RUNTIMES: dict[str, str] = {
    "torch": "a univseg checkpoint (.pt)",
    "onnxruntime": "an ONNX file written by 'univseg export --format onnx'",
    "torchscript": "a TorchScript file written by 'univseg export --format torchscript'",
}
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((256, 320), (200, 296))
DEFAULT_ATOL = 1e-3
DEFAULT_MIN_AGREEMENT = 0.999


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``univseg export``."""
    parser.add_argument("checkpoint", help="checkpoint file (.pt) written by 'univseg train'")
    parser.add_argument("--format", default="onnx", choices=list(FORMATS), help="onnx (default) or torchscript")
    parser.add_argument("--label-space", default="all",
                        help="head or label-space name, or 'all' (default): one output per head")
    parser.add_argument("--out", help="output file (default: beside the checkpoint, <stem>_<head|all>.onnx "
                        "or .torchscript.pt)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    parser.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch")
    parser.add_argument("--images", nargs="+", default=[], metavar="IMAGE_OR_DIR",
                        help="also compare on these real images (files or folders), each at its own size")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=list(DEFAULT_SIZES), metavar="HxW",
                        help="sizes of the random test images (default: %s)" % " ".join(f"{h}x{w}" for h, w in DEFAULT_SIZES))
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                        help=f"largest max abs logit difference accepted (default: {DEFAULT_ATOL:g})")
    parser.add_argument("--min-agreement", type=float, default=100 * DEFAULT_MIN_AGREEMENT, metavar="PERCENT",
                        help=f"smallest arg-max agreement accepted, in percent (default: {100 * DEFAULT_MIN_AGREEMENT:g})")


def parse_size(text: str) -> tuple[int, int]:
    """``'HxW'`` -> ``(H, W)`` for ``--sizes``."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 256x320, got '{text}'") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got '{text}'")
    return h, w
