#!/usr/bin/env python
"""Training / evaluation speed and peak memory of univseg configs.

    python benchmarks/bench_speed.py [--configs demo bench_360x480] [--methods univ-full joint]
                                     [--iters N] [--warmup N] [--amp none|bf16|auto ...]
                                     [--json out.json]

For every (config, amp, method) case a fresh Python process (so that peak RSS belongs to that
case alone) builds a Trainer in a temporary work dir and

1. runs warm-up steps with ``method.warmup_iters=0``: the first step builds the centroid bank
   from the labeled set, so every later step of univ-full includes the entropy terms;
2. times up to ``--iters`` training iterations (``Trainer._next_batches`` + ``Trainer.step``),
   stopping early once ``--time-budget`` seconds are spent (but never before ``--min-iters``);
   reports iterations/s, images/s (labeled + unlabeled images actually fed per iteration),
   the data and step share of an iteration and the process CPU seconds per iteration (all
   threads; less sensitive to other load on the machine than wall time);
3. (first method of each config/amp only) renders the first ``--eval-images`` val images of
   every domain, runs one untimed inference batch, then times ``Trainer.evaluate``
   (whole-image inference + confusion matrices) on them: evaluation images/s;
4. reads the peak resident set size of the process (``ru_maxrss``) after training and at the
   end, and on CUDA ``torch.cuda.max_memory_allocated`` for the timed training / evaluation.

A table is printed and everything, with the machine (CPU model, cores, torch version, threads,
native-bf16 flag, load average before/after each case), is written as JSON.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_JSON = Path(__file__).resolve().parent / "out" / "bench_speed.json"


# ----------------------------------------------------------------------------- helpers

def _maxrss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> dict[str, bool]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def machine_info() -> dict[str, Any]:
    import torch

    from univseg.engine.precision import cpu_has_native_bf16

    info: dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_flags": _cpu_flags(),
        "mem_total_gib": _mem_total_gib(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "bf16_native_cpu": cpu_has_native_bf16(),
        "cuda": torch.cuda.is_available(),
        "loadavg": _loadavg(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "GOMP_SPINCOUNT")},
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["bf16_native_cuda"] = torch.cuda.is_bf16_supported()
    return info


# ----------------------------------------------------------------------------- one case (child process)

def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Build a Trainer for ``spec`` and measure it; runs in its own process (see main)."""
    import torch

    from univseg.config import load_config, resolve_config_path
    from univseg.data.domain import eval_loader, iter_images
    from univseg.engine.evaluator import predict_labels
    from univseg.engine.trainer import Trainer

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    overrides = [f"method.name={spec['method']}", "method.warmup_iters=0", "train.eval_interval=0"]
    if spec.get("amp"):
        overrides.append(f"train.amp={spec['amp']}")
    if spec.get("device"):
        overrides.append(f"train.device={spec['device']}")
    overrides.append(f"eval.max_images={spec['eval_images']}")
    overrides += spec.get("set", [])
    cfg = load_config(resolve_config_path(spec["config"]), overrides)

    out: dict[str, Any] = {
        "config": spec["config"],
        "method": spec["method"],
        "amp_requested": cfg.train.amp,
        "loadavg_start": _loadavg(),
        "rss_start_mb": round(_maxrss_mb(), 1),
    }
    log = lambda msg: print(f"  [{spec['config']} {spec['method']} amp={cfg.train.amp}] {msg}", file=sys.stderr, flush=True)  # noqa: E731

    with tempfile.TemporaryDirectory(prefix="univseg-bench-") as work:
        tic = time.perf_counter()
        trainer = Trainer(cfg, work, progress=False)
        device = trainer.device
        cuda = device.type == "cuda"

        def sync() -> None:
            if cuda:
                torch.cuda.synchronize(device)

        out.update(
            device=str(device),
            amp=trainer.amp,
            eval_amp=getattr(trainer, "eval_amp", trainer.amp),  # code before eval.amp: evaluation as training
            threads=torch.get_num_threads(),
            params_M=round(sum(p.numel() for p in trainer.model.parameters()) / 1e6, 3),
            build_s=round(time.perf_counter() - tic, 3),
            rss_build_mb=round(_maxrss_mb(), 1),
        )
        trainer.model.train()
        loaders = trainer._loaders()

        # -- warm-up (step 0 builds the centroid bank for the aligned methods)
        warm_tic = time.perf_counter()
        step_times = []
        it = 0
        while it < spec["warmup"]:
            t0 = time.perf_counter()
            trainer.step(it, trainer._next_batches(loaders))
            sync()
            step_times.append(time.perf_counter() - t0)
            it += 1
            if time.perf_counter() - warm_tic > spec["time_budget"] / 2:
                break
        out["warmup_steps"] = it
        out["first_step_s"] = round(step_times[0], 3)
        log(f"warm-up: {it} step(s), first {step_times[0]:.2f} s (includes the centroid pass where aligned)")

        # -- timed training iterations
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        data_s = step_s = 0.0
        images = 0
        n = 0
        terms: dict[str, float] = {}
        t_start, c_start = time.perf_counter(), time.process_time()
        while n < spec["iters"]:
            t0 = time.perf_counter()
            batches = trainer._next_batches(loaders)
            sync()
            t1 = time.perf_counter()
            terms = trainer.step(it, batches)
            sync()
            t2 = time.perf_counter()
            data_s += t1 - t0
            step_s += t2 - t1
            images += sum(b["image"].shape[0] + (b["unlabeled"].shape[0] if "unlabeled" in b else 0) for b in batches.values())
            n += 1
            it += 1
            if n >= spec["min_iters"] and time.perf_counter() - t_start >= spec["time_budget"]:
                break
        wall = time.perf_counter() - t_start
        cpu = time.process_time() - c_start
        out.update(
            iters=n,
            train_wall_s=round(wall, 3),
            iters_per_s=n / wall,
            images_per_iter=images / n,
            images_per_s=images / wall,
            data_s_per_iter=data_s / n,
            step_s_per_iter=step_s / n,
            cpu_s_per_iter=cpu / n,
            aligned=any(k.startswith("ent_") for k in terms),
            loss_terms=sorted(terms),
            rss_train_peak_mb=round(_maxrss_mb(), 1),
        )
        if cuda:
            out["cuda_train_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        log(f"train: {n} iters in {wall:.2f} s -> {n / wall:.3f} it/s, {images / wall:.2f} img/s")
        if spec.get("profile"):
            out.update(profile_step(trainer, loaders, it, sync))
            it += 2
            log(f"profile: {out['gflop_per_step']:.0f} GFLOP per step, convolutions {100 * out['conv_time_share']:.1f}% of {out['conv_time_of']}")

        # -- evaluation
        if spec["eval"]:
            t0 = time.perf_counter()
            n_eval = 0
            for d in trainer.domains.values():  # render once (the synthetic datasets cache samples)
                k = min(spec["eval_images"], len(d.val))
                for i in range(k):
                    d.val[i]
                n_eval += k
            out["eval_render_s"] = round(time.perf_counter() - t0, 3)
            # one untimed inference batch: one-off costs (e.g. oneDNN primitives for new shapes)
            head = trainer.trained[0]
            batch = next(iter(eval_loader(trainer.domains[head].val, cfg.eval.batch_size, indices=range(min(cfg.eval.batch_size, n_eval)))))
            t0 = time.perf_counter()
            trainer.model.eval()
            for img, _ in iter_images(batch):
                predict_labels(trainer.model, img, head, out["eval_amp"])
            trainer.model.train()
            sync()
            out["eval_warmup_s"] = round(time.perf_counter() - t0, 3)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            results = trainer.evaluate()
            sync()
            ev = time.perf_counter() - t0
            out.update(
                eval_images=n_eval,
                eval_s=round(ev, 3),
                eval_images_per_s=n_eval / ev,
                eval_mean_mIoU=results["mean_mIoU"],
            )
            if cuda:
                out["cuda_eval_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
            log(f"eval: {n_eval} images in {ev:.2f} s -> {n_eval / ev:.2f} img/s")
    out["rss_peak_mb"] = round(_maxrss_mb(), 1)
    out["loadavg_end"] = _loadavg()
    return out


def profile_step(trainer: Any, loaders: Any, it: int, sync: Any) -> dict[str, Any]:
    """Two more steps: one under ``torch.utils.flop_counter`` (FLOPs of a step), one under
    ``torch.profiler`` (share of the step's time spent in convolutions, forward and backward: of the
    self CPU time on CPU; of the GPU kernel time on CUDA, the kernels under ``aten::convolution`` and
    ``aten::convolution_backward``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        trainer.step(it, trainer._next_batches(loaders))
    sync()
    batches = trainer._next_batches(loaders)
    cuda = trainer.device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        trainer.step(it + 1, batches)
        sync()
    events = prof.key_averages()
    if cuda:
        total = sum(e.self_device_time_total for e in events)
        conv = sum(e.device_time_total for e in events if e.key in ("aten::convolution", "aten::convolution_backward"))
    else:
        total = sum(e.self_cpu_time_total for e in events)
        conv = sum(e.self_cpu_time_total for e in events if "conv" in e.key and "convert" not in e.key)
    return {"gflop_per_step": counter.get_total_flops() / 1e9, "conv_time_share": conv / total if total else None,
            "conv_time_of": "GPU kernel time" if cuda else "CPU time"}


# ----------------------------------------------------------------------------- table

def _f(v: Any, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_table(cases: list[dict[str, Any]]) -> str:
    cols = [
        "config", "method", "amp", "iters", "it/s", "img/s", "img/it", "s/it data", "s/it step", "cpu s/it",
        "first step s", "eval img/s", "RSS build MB", "RSS train MB", "RSS peak MB", "load start->end",
    ]
    cuda = any("cuda_train_peak_mb" in c for c in cases)
    if cuda:
        cols += ["CUDA train MB", "CUDA eval MB"]
    rows = []
    for c in cases:
        if "error" in c:
            rows.append([c["config"], c["method"], c.get("amp_requested", "?"), "error: " + c["error"].splitlines()[-1]] + [""] * (len(cols) - 4))
            continue
        load = f"{c['loadavg_start'][0]:.2f}->{c['loadavg_end'][0]:.2f}" if c.get("loadavg_start") else "-"
        row = [
            c["config"], c["method"] + ("" if c["aligned"] or c["method"] not in ("univ-full", "univ-cross") else " (NOT aligned)"),
            c["amp"], str(c["iters"]), _f(c["iters_per_s"], 3), _f(c["images_per_s"], 2), _f(c["images_per_iter"], 0),
            _f(c["data_s_per_iter"], 3), _f(c["step_s_per_iter"], 3), _f(c["cpu_s_per_iter"], 2), _f(c["first_step_s"], 2),
            _f(c.get("eval_images_per_s"), 2), _f(c["rss_build_mb"], 0), _f(c["rss_train_peak_mb"], 0), _f(c["rss_peak_mb"], 0), load,
        ]
        if cuda:
            row += [_f(c.get("cuda_train_peak_mb"), 0), _f(c.get("cuda_eval_peak_mb"), 0)]
        rows.append(row)
    widths = [max(len(r[i]) for r in [cols] + rows) for i in range(len(cols))]
    line = lambda r: "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


# ----------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["demo", "bench_360x480"], help="packaged config names or YAML paths")
    p.add_argument("--methods", nargs="+", default=["univ-full", "joint"], help="method.name values to time (joint = supervised only)")
    p.add_argument("--iters", type=int, default=20, help="timed training iterations per case (at most; see --time-budget)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps before timing (>= 1; stops after the first once half the budget is spent)")
    p.add_argument("--min-iters", type=int, default=2, help="timed iterations always run, whatever the budget")
    p.add_argument("--time-budget", type=float, default=30.0, help="seconds of timed training per case after which timing stops (>= --min-iters done)")
    p.add_argument("--amp", nargs="+", default=[None], choices=["none", "bf16", "auto", "fp16"], help="train.amp value(s) (default: the config's)")
    p.add_argument("--eval-images", type=int, default=8, help="val images per domain for the evaluation timing")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each case (default: torch's)")
    p.add_argument("--omp-wait-policy", choices=["passive", "active"], default=None,
                   help="set OMP_WAIT_POLICY for the cases (passive: idle OpenMP threads sleep instead of spinning, "
                   "which helps a lot when other processes share the cores; default: inherit the environment)")
    p.add_argument("--device", default=None, help="train.device override (default: the config's, i.e. auto)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override for every case (repeatable)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"where to write the JSON (default: {DEFAULT_JSON})")
    p.add_argument("--profile", action="store_true", help="also count a step's FLOPs and the convolutions' share of CPU time (GPU kernel time on CUDA; 2 more steps)")
    p.add_argument("--_case", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._case:  # child process: one case
        spec = json.loads(Path(args._case).read_text())
        result = run_case(spec)
        Path(spec["result"]).write_text(json.dumps(result))
        return 0

    if args.warmup < 1:
        p.error("--warmup must be >= 1: the first step of an aligned method also builds the centroid bank")
    if args.iters < 1 or args.min_iters < 1:
        p.error("--iters and --min-iters must be >= 1")

    if args.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()  # inherited by the case processes
    info = machine_info()
    print(
        f"{info['cpu_model']} | {info['cpu_count']} cores | torch {info['torch']} ({info['torch_threads']} threads) | "
        f"bf16 native on CPU: {info['bf16_native_cpu']} | load {info['loadavg']} | env {info['env']}",
        file=sys.stderr,
    )
    started = time.perf_counter()
    cases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="univseg-bench-specs-") as tmp:
        for config in args.configs:
            for amp in args.amp:
                for k, method in enumerate(args.methods):
                    spec = {
                        "config": config, "method": method, "amp": amp, "iters": args.iters, "warmup": args.warmup,
                        "min_iters": min(args.min_iters, args.iters), "time_budget": args.time_budget,
                        "eval_images": args.eval_images, "eval": k == 0, "threads": args.threads, "device": args.device,
                        "set": args.set, "profile": args.profile, "result": str(Path(tmp) / f"result{len(cases)}.json"),
                    }
                    spec_path = Path(tmp) / f"spec{len(cases)}.json"
                    spec_path.write_text(json.dumps(spec))
                    print(f"== {config} / {method} / amp={amp or 'config'}", file=sys.stderr, flush=True)
                    proc = subprocess.run([sys.executable, __file__, "--_case", str(spec_path)], stderr=subprocess.PIPE, text=True)
                    sys.stderr.write(proc.stderr)
                    if proc.returncode == 0:
                        cases.append(json.loads(Path(spec["result"]).read_text()))
                    else:
                        cases.append({"config": config, "method": method, "amp_requested": amp, "error": proc.stderr.strip() or f"exit {proc.returncode}"})
    info["loadavg_end"] = _loadavg()
    info["total_s"] = round(time.perf_counter() - started, 1)
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": info, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "_case"}, "cases": cases}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(format_table(cases))
    print(f"\ntotal {info['total_s']} s; load average at start {info['loadavg']}, at end {info['loadavg_end']}; JSON: {args.json}")
    return 1 if any("error" in c for c in cases) else 0


if __name__ == "__main__":
    sys.exit(main())
