#!/usr/bin/env python
"""Training-step (or inference) time in NCHW and channels-last (NHWC) layout, per backbone and precision.

    python benchmarks/bench_layout.py [--backbones drn_d_22 resnet18 ...] [--amp none bf16]
                                      [--batch 8] [--height 180] [--width 240] [--steps 4]
                                      [--repeats 2] [--device cpu] [--mode train|inference]
                                      [--json benchmarks/out/bench_layout.json]

The evidence behind ``train.channels_last: auto``. For each backbone and autocast precision, a
:class:`univseg.models.universal.UniversalModel` (one 11-class head, 100-d embedding, random
weights) takes SGD steps on a random batch in both layouts, the layouts alternating ``--repeats``
times in this one process; a layout's time is its fastest step after the first of each round. The
ratio NHWC / NCHW below 1 means channels-last trains faster; the last column is what ``auto``
picks for that backbone, precision and device. ``--mode inference`` times eval-mode forward passes
under ``torch.inference_mode`` instead (weights and input in the layout; the last column is then
the training choice, for reference). Threads: torch's default (set OMP_NUM_THREADS to
change); the machine, its CPU flags and the load are printed and written with the table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_BACKBONES = ["drn_d_22", "resnet18", "mobilenet_v2", "efficientnet_lite0", "erfnet"]


def step_time(backbone: str, amp: str, channels_last: bool, args: argparse.Namespace) -> float:
    """Fastest of ``args.steps - 1`` training steps or forward passes (the first one warms up) in one layout."""
    import torch

    from univseg.engine.precision import autocast
    from univseg.models.universal import UniversalModel

    device = torch.device(args.device)
    torch.manual_seed(0)
    training = args.mode == "train"
    model = UniversalModel(backbone, {"a": 11}, embed_dim=100).to(device).use_channels_last(channels_last).train(training)
    x = torch.rand(args.batch, 3, args.height, args.width, device=device) * 255
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        if training:
            with autocast(device, amp):
                logits = model(x)["a"]
            loss = logits.float().logsumexp(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with torch.inference_mode(), autocast(device, amp):
                model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=DEFAULT_BACKBONES)
    p.add_argument("--amp", nargs="+", default=["none", "bf16"], choices=["none", "bf16", "fp16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--height", type=int, default=180)
    p.add_argument("--width", type=int, default=240)
    p.add_argument("--steps", type=int, default=4, help="steps per layout and round (the first is not timed)")
    p.add_argument("--repeats", type=int, default=2, help="rounds of both layouts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", choices=["train", "inference"], default="train", help="time training steps or inference passes")
    p.add_argument("--json", type=Path, default=HERE / "out" / "bench_layout.json")
    args = p.parse_args()
    sys.path.insert(0, str(HERE))
    import torch
    from bench_speed import machine_info

    from univseg.engine.precision import resolve_channels_last
    from univseg.models.backbones import build_backbone

    info = machine_info()
    rows: list[dict[str, Any]] = []
    for backbone in args.backbones:
        depthwise = build_backbone(backbone).depthwise
        for amp in args.amp:
            best = {False: float("inf"), True: float("inf")}
            for _ in range(args.repeats):
                for layout in (False, True):
                    best[layout] = min(best[layout], step_time(backbone, amp, layout, args))
            auto = resolve_channels_last("auto", torch.device(args.device), amp, depthwise)
            rows.append({"backbone": backbone, "amp": amp, "nchw_s": best[False], "nhwc_s": best[True],
                         "ratio": best[True] / best[False], "auto_channels_last": auto})
            print(f"  {backbone} {amp}: NCHW {best[False]:.3f} s, NHWC {best[True]:.3f} s", file=sys.stderr, flush=True)
    lines = ["| backbone | amp | NCHW s/step | NHWC s/step | NHWC / NCHW | auto picks |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['amp']} | {r['nchw_s']:.3f} | {r['nhwc_s']:.3f} | {r['ratio']:.2f} | "
                     f"{'NHWC' if r['auto_channels_last'] else 'NCHW'} |")
    setting = f"{args.mode}, batch {args.batch} x {args.height}x{args.width}, {args.device}, {info['torch_threads']} threads"
    print("\n".join(lines) + f"\n\n{setting}; {info['cpu_model']}; bf16 native on CPU: {info['bf16_native_cpu']}; load {info['loadavg']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": info,
                                     "settings": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=2))
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
