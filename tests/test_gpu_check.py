"""benchmarks/gpu_check.sh on a machine without CUDA: a clear "no GPU" line, status 0, nothing run;
and its summary of training work dirs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would run its stages")
def test_without_cuda_the_check_says_no_gpu_and_runs_nothing(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(out), "UNIVSEG_DATA_ROOT": str(tmp_path / "nodata")}
    tic = time.perf_counter()
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=120)
    elapsed = time.perf_counter() - tic
    assert done.returncode == 0, done.stderr
    assert "gpu_check: no GPU" in done.stdout and "nothing was run" in done.stdout
    assert not out.exists() and elapsed < 60  # no work dir, no training, no tests


def test_without_torch_the_check_exits_2_naming_the_interpreter(tmp_path):
    env = {**os.environ, "PYTHON": "/bin/false"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "cannot import torch with /bin/false" in done.stderr


def test_summary_reports_step_time_images_per_second_and_peak_memory(tmp_path):
    work = tmp_path / "bf16"
    work.mkdir()
    (work / "config.yaml").write_text(yaml.safe_dump({"domains": [{"batch_size": 4, "unlabeled_batch_size": 4},
                                                                    {"batch_size": 4, "unlabeled_batch_size": 2}]}))
    records = [{"iter": 25 * k, "loss": 1.0, "sec_per_iter": 0.5 if k == 1 else 0.1, "data_sec_per_iter": 0.02,
                "peak_mem_gib": 1.0 + k / 10} for k in range(1, 13)]
    records.append({"iter": 300, "eval": {}, "mean_mIoU": 0.25})
    (work / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (work / "eval_results.json").write_text(json.dumps({"mean_mIoU": 0.25}))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check_summary.py"), str(work)],
                          capture_output=True, text=True, check=True)
    row = next(line for line in done.stdout.splitlines() if line.startswith("| bf16"))
    # the first interval (0.5 s/it) is start-up: skipped; 14 images / 0.1 s = 140 img/s; data 20%; peak 2.2 GiB
    assert row == "| bf16 | 300 | 0.1000 | 140.0 | 20% | 2.20 | 25.00 |", row
