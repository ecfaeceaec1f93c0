#!/usr/bin/env python
"""Parameter count and GFLOPs of every registered backbone x decoder pair, at 360x480.

    python benchmarks/model_cost.py [--height 360] [--width 480] [--device meta|cpu]
                                    [--decoder-args '{"deeplabv3plus": {"channels": 128}}']
                                    [--backbone-args '{"mobilenet_v2": {"output_stride": 16}}']
                                    [--json benchmarks/out/model_cost.json]

Every pair of ``BACKBONES.names()`` x ``DECODERS.names()`` (backbones and decoders registered
later are included automatically) is built as :class:`univseg.models.universal.UniversalModel`
with random weights, default backbone and decoder options (``--backbone-args`` and
``--decoder-args`` override them per backbone and per decoder), the two heads of the CamVid + IDD model (11 and 7 classes, 1x1 classifiers) and
the 100-d embedding head. One forward pass of one ``height x width`` image in eval mode, with both
heads and the embedding, runs under :class:`torch.utils.flop_counter.FlopCounterMode`.

FLOPs: FlopCounterMode counts convolutions and matrix products only, one multiply-accumulate
as 2 FLOPs; BatchNorm, activations, pooling and the bilinear upsampling of the logits are not
counted. GFLOPs = 1e9 FLOPs. The decoder and head columns come from FlopCounterMode's per-module
counts; the encoder column is the total minus both. Parameters: ``M`` = 1e6 parameters;
"heads" includes the embedding head. On ``--device meta`` (default) no arithmetic runs, only
shapes propagate, so the table takes seconds; ``--device cpu`` gives the same counts.

A table is printed and written, with the settings, as JSON (default
``benchmarks/out/model_cost.json``, git-ignored).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch.utils.flop_counter import FlopCounterMode

import univseg.models  # noqa: F401  (registers the backbones)
from univseg.models.backbones import BACKBONES
from univseg.models.decoders import DECODERS
from univseg.models.universal import UniversalModel

HEADS = {"camvid": 11, "idd": 7}
EMBED_DIM = 100
DEFAULT_JSON = Path(__file__).resolve().parent / "out" / "model_cost.json"


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def measure(
    backbone: str,
    decoder: str,
    decoder_args: Mapping[str, Any],
    height: int,
    width: int,
    device: str,
    backbone_args: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Parameters and forward FLOPs of one backbone x decoder model, split into its parts."""
    with torch.device(device):
        model = UniversalModel(
            backbone, HEADS, embed_dim=EMBED_DIM, decoder=decoder, decoder_args=decoder_args,
            backbone_args=backbone_args,
        ).eval()
        image = torch.zeros(1, 3, height, width)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        out = model(image, embed=True)
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    total = counter.get_total_flops()
    decoder_flops = per_module.get(f"{root}.decoder", 0)
    head_names = [f"{root}.heads.{h}" for h in HEADS] + [f"{root}.embedding"]
    head_flops = sum(per_module.get(name, 0) for name in head_names)
    return {
        "backbone": backbone,
        "decoder": decoder,
        "decoder_args": dict(decoder_args),
        "backbone_args": dict(backbone_args or {}),
        "feature_stride": height // out["embedding"].shape[-2],
        "params": n_params(model),
        "params_encoder": n_params(model.encoder),
        "params_decoder": n_params(model.decoder),
        "params_heads": n_params(model.heads) + n_params(model.embedding),
        "flops": total,
        "flops_encoder": total - decoder_flops - head_flops,
        "flops_decoder": decoder_flops,
        "flops_heads": head_flops,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: parameters in millions, FLOPs in GFLOPs."""
    lines = [
        "| backbone | decoder | stride | params M | encoder M | decoder M | heads M | GFLOPs | encoder | decoder | heads |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        millions = [f"{r[k] / 1e6:.2f}" for k in ("params", "params_encoder", "params_decoder", "params_heads")]
        giga = [f"{r[k] / 1e9:.1f}" for k in ("flops", "flops_encoder", "flops_decoder", "flops_heads")]
        lines.append("| " + " | ".join([r["backbone"], r["decoder"], str(r["feature_stride"]), *millions, *giga]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--device", default="meta", help="meta (shapes only, fast) or cpu")
    parser.add_argument("--decoder-args", type=json.loads, default={}, help='JSON {decoder: {option: value}}')
    parser.add_argument("--backbone-args", type=json.loads, default={}, help='JSON {backbone: {option: value}}')
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)

    rows = [
        measure(b, d, args.decoder_args.get(d, {}), args.height, args.width, args.device, args.backbone_args.get(b, {}))
        for b in BACKBONES.names()
        for d in DECODERS.names()
    ]
    print(f"{args.height}x{args.width}, heads {HEADS} + {EMBED_DIM}-d embedding; 1 MAC = 2 FLOPs")
    print(format_table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    settings = {
        "height": args.height, "width": args.width, "heads": HEADS, "embed_dim": EMBED_DIM,
        "flops_per_mac": 2, "torch": torch.__version__, "device": args.device,
    }
    args.json.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
