#!/usr/bin/env python
"""The figures of ``gpu_check.sh``: one row per training work dir, plus the profiled step.

    python benchmarks/gpu_check_summary.py WORK_DIR [WORK_DIR ...] [--bench bench_speed.json] [--skip 50]

Per work dir (from its ``metrics.jsonl`` and ``config.yaml``): iterations done, the median
seconds per iteration over the logged intervals after the first ``--skip`` iterations (start-up,
cuDNN autotuning and the centroid pass stay out), images per second (labeled + unlabeled images
loaded per iteration / s/it), the data-wait share, the peak memory the trainer logged (CUDA
memory allocated on a GPU) and the final mean mIoU. With ``--bench``, the GFLOP per step and the
convolutions' share of the step time from ``bench_speed.py --profile``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml


def images_per_iteration(config: dict) -> int:
    """Labeled plus unlabeled images one training iteration loads (every domain of the config)."""
    return sum(d.get("batch_size", 0) + d.get("unlabeled_batch_size", 0) for d in config["domains"])


def run_row(work_dir: Path, skip: int) -> dict:
    """The figures of one training work dir."""
    records = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = [r for r in records if "sec_per_iter" in r]
    steady = [r for r in timed if r["iter"] > skip] or timed
    if not steady:
        raise SystemExit(f"{work_dir / 'metrics.jsonl'}: no timed interval; did the training run?")
    sec = statistics.median(r["sec_per_iter"] for r in steady)
    data = statistics.median(r.get("data_sec_per_iter", 0.0) for r in steady)
    results = json.loads((work_dir / "eval_results.json").read_text()) if (work_dir / "eval_results.json").is_file() else {}
    config = yaml.safe_load((work_dir / "config.yaml").read_text())
    return {
        "run": work_dir.name,
        "iters": max(r["iter"] for r in timed),
        "s_per_it": sec,
        "img_per_s": images_per_iteration(config) / sec,
        "data_share": data / sec if sec else 0.0,
        "peak_gib": max(r.get("peak_mem_gib", 0.0) for r in timed),
        "mean_miou": results.get("mean_mIoU"),
    }


def table(rows: list[dict]) -> str:
    """A markdown table of :func:`run_row` rows."""
    head = "| run | iterations | s/it | img/s | data wait | peak memory GiB | mean mIoU |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        miou = "-" if r["mean_miou"] is None else f"{100 * r['mean_miou']:.2f}"
        lines.append(f"| {r['run']} | {r['iters']} | {r['s_per_it']:.4f} | {r['img_per_s']:.1f} | {100 * r['data_share']:.0f}% | "
                     f"{r['peak_gib']:.2f} | {miou} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("work_dirs", nargs="+", type=Path, help="training work dirs (metrics.jsonl, config.yaml)")
    p.add_argument("--bench", type=Path, help="bench_speed.py --profile JSON")
    p.add_argument("--skip", type=int, default=50, help="iterations left out of the step time (default 50)")
    args = p.parse_args(argv)
    print(table([run_row(w, args.skip) for w in args.work_dirs]))
    if args.bench:
        for case in json.loads(args.bench.read_text()).get("cases", []):
            share = case.get("conv_time_share")
            print(f"profiled step ({case.get('config')}, {case.get('method')}, amp {case.get('amp')}): "
                  f"{case.get('gflop_per_step', float('nan')):.0f} GFLOP, convolutions "
                  f"{'-' if share is None else f'{100 * share:.1f}%'} of {case.get('conv_time_of', 'the step time')}, "
                  f"{case.get('iters_per_s', float('nan')):.2f} it/s, {case.get('images_per_s', float('nan')):.1f} img/s, peak {case.get('cuda_train_peak_mb', float('nan')):.0f} MiB CUDA")
    return 0


if __name__ == "__main__":
    sys.exit(main())
