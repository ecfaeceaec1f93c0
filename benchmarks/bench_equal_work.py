#!/usr/bin/env python
"""Equal-work speed: the code before and after a change, one right after the other on this machine.

    python benchmarks/bench_equal_work.py [--before 96fea89] [--iters 3] [--data DIR]
                                          [--config bench_equal_work] [--json FILE]

The work per step is that of the paper's official code (config ``bench_equal_work``: DRN-D-22
from scratch, CamVid 360x480 and IDD-Lite 224x320, 4 labeled + 4 unlabeled images per domain,
entropy at input resolution, SGD, fp32). For each variant below, ``benchmarks/bench_speed.py``
(this checkout's) times the training step, the first univ-full step (which builds the centroids
from the 200 labeled images) and evaluation, and reads the peak RSS — once with the package of
``--before`` (``git archive`` of its ``src/``) and once with this checkout's. The "after" code
also runs its new memory and layout options. The machine's measured fp32/bf16 matmul and
convolution peaks are printed beside the step's GFLOP/s (``torch.utils.flop_counter``) and the
convolutions' share of the step's CPU time.

Variants: ``dot`` (univ-full, dot product, T = 1, frozen centroids: the official code's loss),
``cosine`` (univ-full, univseg's default cosine, T = 0.1), ``joint`` (8 labeled images per step);
after only: ``dot+ckpt`` (train.activation_checkpointing), ``dot+domain`` (train.backward: domain),
``dot+nhwc`` (train.channels_last), ``dot+ckpt+domain`` (both memory options), ``dot+evalamp`` (eval.amp: auto, i.e. the centroid pass and
evaluation in bf16 where the CPU runs it natively; the training step stays fp32), ``dot+pass`` (train.backward: pass with
method.unlabeled_forward: separate: one forward and backward per pass of 4 images, the official code's schedule; BatchNorm
batch statistics then come from 4 images instead of 8), ``dot+ckpt+pass`` (with activation checkpointing);
``dot+pass+release`` and ``dot+ckpt+pass+release`` (train.return_freed_memory: glibc's fixed mmap threshold);
``dot+pass+evalamp`` (both: the least-memory schedule with bf16 passes without gradients); ``dot+pass+compile`` and ``dot+ckpt+pass+compile`` (train.compile: encoder and decoder through torch.compile; the
warm-up step and the first univ-full step include compiling); ``dot+early-ckpt+pass`` (train.activation_checkpointing
on DRN-D-22's layer0-layer5 only: the high-resolution stages, much of the memory for little of the compute);
``dot+ckpt0-6+pass+compile`` (compiled, every unit checkpointed but the last two, layer7 and layer8, whose
recomputation costs a fifth of the encoder's forward for two 512-channel maps per pass);
``dot+pass+amp`` and ``dot+pass+amp+nchw`` (train.amp and eval.amp auto -- bf16 where the CPU or GPU runs it
natively, so not the official code's fp32 work -- with train.channels_last auto, i.e. channels-last for DRN-D-22,
and with NCHW); ``dot+pass+nchw`` (fp32 in NCHW). Variants that do not set train.channels_last run the after
code's default, auto (channels-last on CPU; the code before 2026-12-05's last session ran NCHW).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DOT = ["method.similarity=dot", "method.temperature=1.0", "method.centroids.mode=frozen"]
PASS = ["train.backward=pass", "method.unlabeled_forward=separate"]  # one backward per pass of 4 images, as the official code
AMP = ["train.amp=auto", "eval.amp=auto"]  # bf16 where the hardware runs it natively, fp32 elsewhere
EARLY_UNITS = "[layer0,layer1,layer2,layer3,layer4,layer5]"  # DRN-D-22's units up to the first dilated stage
UNITS_0_6 = "[layer0,layer1,layer2,layer3,layer4,layer5,layer6]"  # all but DRN-D-22's two last (degridding) units
VARIANTS: dict[str, tuple[str, list[str], bool]] = {  # name -> (method, overrides, also before)
    "dot": ("univ-full", DOT, True),
    "cosine": ("univ-full", [], True),
    "joint": ("joint", [], True),
    "dot+ckpt": ("univ-full", DOT + ["train.activation_checkpointing=true"], False),
    "dot+domain": ("univ-full", DOT + ["train.backward=domain"], False),
    "dot+nhwc": ("univ-full", DOT + ["train.channels_last=true"], False),
    "dot+ckpt+domain": ("univ-full", DOT + ["train.activation_checkpointing=true", "train.backward=domain"], False),
    "dot+evalamp": ("univ-full", DOT + ["eval.amp=auto"], False),
    "dot+pass": ("univ-full", DOT + PASS, False),
    "dot+pass+nchw": ("univ-full", DOT + PASS + ["train.channels_last=false"], False),
    "dot+ckpt+pass": ("univ-full", DOT + PASS + ["train.activation_checkpointing=true"], False),
    "dot+pass+release": ("univ-full", DOT + PASS + ["train.return_freed_memory=true"], False),
    "dot+ckpt+pass+release": ("univ-full", DOT + PASS + ["train.activation_checkpointing=true", "train.return_freed_memory=true"], False),
    "dot+pass+evalamp": ("univ-full", DOT + PASS + ["eval.amp=auto"], False),
    "dot+pass+compile": ("univ-full", DOT + PASS + ["train.compile=true"], False),
    "dot+ckpt+pass+compile": ("univ-full", DOT + PASS + ["train.activation_checkpointing=true", "train.compile=true"], False),
    "dot+early-ckpt+pass": ("univ-full", DOT + PASS + [f"train.activation_checkpointing={EARLY_UNITS}"], False),
    "dot+ckpt0-6+pass+compile": ("univ-full", DOT + PASS + [f"train.activation_checkpointing={UNITS_0_6}", "train.compile=true"], False),
    "dot+pass+amp": ("univ-full", DOT + PASS + AMP, False),
    "dot+pass+amp+nchw": ("univ-full", DOT + PASS + AMP + ["train.channels_last=false"], False),
}


def machine_peaks(seconds: float = 2.0) -> dict[str, float]:
    """Measured GFLOP/s of a 1024^3 matmul and of a 3x3 convolution (4x128x90x120 -> 128), fp32 and bf16."""
    import torch
    import torch.nn.functional as F

    def rate(fn, flop: float) -> float:
        fn()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            n += 1
        return flop * n / (time.perf_counter() - t0) / 1e9

    out = {}
    for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
        out[f"matmul_{tag}_gflops"] = rate(lambda: a @ b, 2 * 1024**3)
        x, w = torch.randn(4, 128, 90, 120, dtype=dtype), torch.randn(128, 128, 3, 3, dtype=dtype)
        with torch.no_grad():
            out[f"conv_{tag}_gflops"] = rate(lambda: F.conv2d(x, w, padding=1), 2 * 4 * 128 * 90 * 120 * 128 * 9)
    return out


def extract_source(rev: str, into: Path) -> Path:
    """``src/`` of git revision ``rev`` under ``into`` (returns the folder to put on PYTHONPATH)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def run_variant(code: str, src: Path, name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    method, overrides, _ = VARIANTS[name]
    out = tmp / f"{code}_{name}.json"
    data = [f"domains.camvid.dataset.root={args.data / 'camvid'}", f"domains.idd.dataset.root={args.data / 'idd_lite'}"]
    cmd = [
        sys.executable, str(HERE / "bench_speed.py"), "--configs", str(args.config), "--methods", method,
        "--iters", str(args.iters), "--min-iters", str(args.iters), "--warmup", "1", "--time-budget", "1e9",
        "--eval-images", str(args.eval_images), "--json", str(out), "--profile",
        *[a for o in data + overrides + args.set for a in ("--set", o)],
    ]
    env = {**os.environ, "PYTHONPATH": str(src)}
    print(f"== {code}: {name}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0 or not out.exists():
        return {"code": code, "variant": name, "error": f"bench_speed exited {proc.returncode}"}
    case = json.loads(out.read_text())["cases"][0]
    return {"code": code, "variant": name, **case}


def table(rows: list[dict[str, Any]], peaks: dict[str, float]) -> str:
    cols = ["code", "variant", "s/step", "img/s", "first step s", "eval img/s", "peak RSS MB", "GFLOP/step", "GFLOP/s", "conv share"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['code']} | {r['variant']} | {r['error']} |" + " |" * (len(cols) - 3))
            continue
        gflop = r.get("gflop_per_step")
        cells = [
            r["code"], r["variant"], f"{r['step_s_per_iter']:.2f}", f"{r['images_per_s']:.2f}", f"{r['first_step_s']:.1f}",
            f"{r['eval_images_per_s']:.2f}" if r.get("eval_images_per_s") else "-", f"{r['rss_peak_mb']:.0f}",
            f"{gflop:.4g}" if gflop else "-", f"{gflop / r['step_s_per_iter']:.4g}" if gflop else "-",
            f"{100 * r['conv_time_share']:.0f}%" if r.get("conv_time_share") is not None else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("machine peaks (GFLOP/s, this process's threads): " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default="96fea89", help="git revision of the code before the change (default: the start of issue 11)")
    p.add_argument("--iters", type=int, default=3, help="timed steps per variant")
    p.add_argument("--eval-images", type=int, default=8, help="val images per domain for the evaluation timing")
    p.add_argument("--data", type=Path, default=Path(os.environ.get("UNIVSEG_DATA_ROOT", REPO.parent / "shared" / "data")))
    p.add_argument("--config", type=Path, default=REPO / "src" / "univseg" / "configs" / "bench_equal_work.yaml")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override for every variant (e.g. a smoke run)")
    p.add_argument("--json", type=Path, default=HERE / "out" / "bench_equal_work.json")
    args = p.parse_args()
    args.config = args.config.resolve()
    sys.path.insert(0, str(HERE))
    from bench_speed import machine_info

    info = machine_info()
    peaks = machine_peaks()
    rows = []
    with tempfile.TemporaryDirectory(prefix="univseg-equal-work-") as tmp:
        before = extract_source(args.before, Path(tmp) / "before")
        for name in args.variants:  # before and after of one variant back to back
            if VARIANTS[name][2]:
                rows.append(run_variant(f"before {args.before}", before, name, args, Path(tmp)))
            rows.append(run_variant("after", REPO / "src", name, args, Path(tmp)))
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": info, "peaks": peaks, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(table(rows, peaks))
    print(f"\nJSON: {args.json}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
