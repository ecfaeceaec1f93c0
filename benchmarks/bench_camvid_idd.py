"""The paper's comparison on the real CamVid + IDD-Lite pair, sized for about an hour per method on 2 CPU cores.

    python benchmarks/bench_camvid_idd.py [--setting erfnet|mobilenet] [--iters 500]
                                          [--out benchmarks/out/camvid_idd] [--data DIR]
                                          [--methods KEY ...] [--seeds S ...] [--labels N ...] [--set KEY=VALUE ...]

Runs `univseg experiment` with every method (the paper's rows single-camvid, single-idd,
finetune-camvid-to-idd, joint, univ-cross, univ-full, adversarial, souly, cycada-camvid-to-idd, and
the weak-to-strong rows fixmatch, unimatch, univ-match) on the same data, splits, seed and iteration
budget, and prints the table (also written as results.md/.csv/.json/.png in --out). A method costs
about as many joint steps per iteration as it runs images through the model: univ-full about 2,
univ-match about 4, souly about 5 (generated images in the model's step and a generator step
through the model). Settings:

* ``erfnet`` (issue 4): config camvid_idd, a random-init half-width ERFNet, training and
  evaluation at reduced resolution (CamVid 180x240, IDD-Lite 170x240);
* ``mobilenet`` (issue 9): config camvid_idd_mobilenet, ImageNet MobileNetV2 + LR-ASPP, 180x240
  training crops, whole-image evaluation at the native resolution.

With ``--labels N ...`` every count of labeled images per domain gets its comparison (``labels-<N>/``;
the ``oracle`` row, every training image labeled, runs once) and ``label_efficiency.*`` is written.
Re-running resumes; finished methods are reused.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from univseg.config import resolve_config_path
from univseg.engine.experiment import run_experiment, run_label_sweep
from univseg.errors import EXIT_STOPPED, TrainingStopped, UnivsegError

METHODS = [
    "single-camvid", "single-idd", "finetune-camvid-to-idd", "joint", "univ-cross", "univ-full", "adversarial", "souly",
    "cycada-camvid-to-idd", "fixmatch", "unimatch", "univ-match",
]


def common(data: Path, iters: int) -> list[str]:
    """Overrides of every setting: the data, the budget, and the schedules that scale with it."""
    return [
        f"domains.camvid.dataset.root={data / 'camvid'}",
        f"domains.idd.dataset.root={data / 'idd_lite'}",
        f"method.warmup_iters={int(0.3 * iters)}",
        f"method.adversarial.semi_start={int(0.3 * iters)}",
        f"train.iters={iters}",
        "train.eval_interval=0",
        f"train.checkpoint_interval={max(1, iters // 4)}",
        "train.num_workers=1",
    ]


def erfnet_overrides(data: Path, iters: int) -> list[str]:
    """Issue 4's CPU-sized setting: reduced resolution, a half-width ERFNet, feature-resolution entropy."""
    return common(data, iters) + [
        "domains.camvid.train_transforms=[{type: resize, scale: 0.5}, {type: hflip}, "
        "{type: color_jitter, brightness: 0.2, contrast: 0.2, saturation: 0.2, p: 0.5}]",
        "domains.camvid.val_transforms=[{type: resize, scale: 0.5}]",
        "domains.idd.train_transforms=[{type: resize, size: [170, 240]}, {type: hflip}, "
        "{type: color_jitter, brightness: 0.2, contrast: 0.2, saturation: 0.2, p: 0.5}]",
        "domains.idd.val_transforms=[{type: resize, size: [170, 240]}]",
        "model.backbone_args={width: 0.5}",
        "method.entropy_resolution=feature",
        "train.optimizer.lr=0.002",
        "train.schedule.warmup_iters=20",
        "train.amp=auto",
    ]


# setting name -> (built-in config, its overrides)
SETTINGS: dict[str, tuple[str, Callable[[Path, int], list[str]]]] = {
    "erfnet": ("camvid_idd", erfnet_overrides),
    "mobilenet": ("camvid_idd_mobilenet", common),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", choices=sorted(SETTINGS), default="erfnet", help="model and resolution (see above)")
    p.add_argument("--iters", type=int, default=500, help="iterations per method")
    p.add_argument("--out", default="benchmarks/out/camvid_idd", help="output folder")
    p.add_argument("--data", default=os.environ.get("UNIVSEG_DATA_ROOT", "../shared/data"), help="folder with camvid/ and idd_lite/")
    p.add_argument("--methods", nargs="+", default=METHODS, help="method keys")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the config's seed, 0); several give mean ± std")
    p.add_argument("--labels", type=int, nargs="+", default=None, help="labeled images per domain to sweep (label efficiency)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override (variants)")
    args = p.parse_args()
    tic = time.perf_counter()
    config, overrides = SETTINGS[args.setting]
    try:
        common = dict(methods=args.methods, seeds=args.seeds, overrides=overrides(Path(args.data), args.iters) + args.set,
                      progress=False)
        if args.labels:
            rows = run_label_sweep(resolve_config_path(config), Path(args.out), args.labels, **common)
        else:
            rows = run_experiment(resolve_config_path(config), Path(args.out), **common)
    except UnivsegError as e:  # a stop on request or bad input: the message, as the command line prints it
        print(f"bench_camvid_idd: {e}", file=sys.stderr)
        raise SystemExit(EXIT_STOPPED if isinstance(e, TrainingStopped) else 2) from None
    minutes = (time.perf_counter() - tic) / 60
    info = {
        "setting": args.setting, "minutes": round(minutes, 1), "iters": args.iters, "seeds": args.seeds, "labels": args.labels,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows,
    }
    (Path(args.out) / "benchmark.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"total {minutes:.1f} min; {Path(args.out) / 'benchmark.json'}")


if __name__ == "__main__":
    main()
