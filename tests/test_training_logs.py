"""Logs a job scheduler keeps: with stdout redirected to a file, training writes one line per
``train.log_interval`` (iteration/total, loss terms, lr, s/it, data wait, ETA, peak memory), the
resume line and the evaluation tables, and nothing of a progress bar; ``--quiet`` keeps warnings only."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from univseg.utils.log import interval_line
from univseg.viz.curves import loss_terms

LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO iter (\d+)/6 \| loss \S+ sup \S+ .*\| lr \d\.\d\de[-+]\d\d \| "
    r"\d+\.\d{3} s/it \(data \d+\.\d{3}\) \| ETA \d+m\d\ds \| peak \d+\.\d\d GiB rss$"
)


def train_to_file(cfg: Path, work: Path, log: Path, *extra: str) -> str:
    """Run ``univseg train`` with stdout and stderr redirected to ``log`` (not a terminal); the file's text."""
    cmd = [sys.executable, "-m", "univseg", "train", str(cfg), "--work-dir", str(work), *extra]
    with open(log, "w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    return text


def assert_no_progress_bar(text: str) -> None:
    assert "\r" not in text and "\x1b[" not in text
    assert not re.search(r"\d+%\|", text) and "it/s]" not in text and "s/it]" not in text, text


def test_redirected_training_logs_one_line_per_interval_and_the_resume_line(tiny_raw, tmp_path):
    tiny_raw["train"].update({"log_interval": 2, "eval_interval": 0, "checkpoint_interval": 3})
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw))
    work = tmp_path / "run"
    text = train_to_file(cfg, work, tmp_path / "train.log")
    assert_no_progress_bar(text)
    assert "INFO training univ-full for 6 iterations on cpu" in text
    assert [int(m.group(1)) for m in map(LINE.match, text.splitlines()) if m] == [2, 4, 6], text
    assert "final evaluation at iteration 6:" in text and "mean" in text and "city" in text and "rural" in text
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if "sec_per_iter" in r]
    assert [r["iter"] for r in timed] == [2, 4, 6]
    assert all(0 <= r["data_sec_per_iter"] <= r["sec_per_iter"] and r["peak_mem_gib"] > 0.1 for r in timed)
    assert loss_terms(timed)[0] == "loss" and not {"data_sec_per_iter", "peak_mem_gib", "sec_per_iter"} & set(loss_terms(timed))

    # a run that died after the checkpoint of iteration 3: latest.pt is the one of iteration 3 again
    (work / "latest.pt").unlink()
    (work / "latest.pt.1").rename(work / "latest.pt")
    text = train_to_file(cfg, work, tmp_path / "resume.log", "--resume")
    assert_no_progress_bar(text)
    assert re.search(r"INFO resumed at iteration 3 of 6 from latest\.pt", text), text
    assert [int(m.group(1)) for m in map(LINE.match, text.splitlines()) if m] == [4, 6], text

    quiet = train_to_file(cfg, work, tmp_path / "quiet.log", "--resume", "--quiet")
    assert "INFO" not in quiet and "iter " not in quiet, quiet


def test_interval_line_holds_every_figure():
    terms = {"ent_cross": 0.25, "loss": 1.5, "sup": 1.0, "ce_city": 0.75, "lr": 0.001}
    line = interval_line(40, 500, terms, sec_per_iter=0.5, data_sec_per_iter=0.125, device=torch.device("cpu"))
    assert line.startswith("iter 40/500 | loss 1.5 sup 1 ent_cross 0.25 ce_city 0.75 | lr 1.00e-03 | 0.500 s/it (data 0.125) | ETA 3m50s | peak ")
    assert re.search(r"peak \d+\.\d\d GiB rss$", line), line
    assert "ETA 1h23m20s" in interval_line(0, 10000, terms, 0.5, 0.0, torch.device("cpu"))
    # a consistency method's record: ratios without a denominator are None, per-class diagnostics stay in metrics.jsonl
    record = {"loss": 1.5, "unsup_to_sup": None, "confident_city": 0.25, "pl_precision_city_road": 0.5, "pl_precision_city": 0.75}
    line = interval_line(1, 10, record, 0.5, 0.0, torch.device("cpu"))
    assert "| loss 1.5 confident_city 0.25 |" in line and "pl_" not in line and "unsup_to_sup" not in line, line
