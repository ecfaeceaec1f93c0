"""Real torch.distributed: two CPU processes (gloo) launched by torchrun train one model."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from univseg.engine.checkpoint import load_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("unlabeled_forward", ["together", "separate"])
def test_torchrun_two_processes_train_and_evaluate(tiny_raw, tmp_path, unlabeled_forward):
    tiny_raw["train"].update({"iters": 4, "eval_interval": 2, "checkpoint_interval": 2})
    tiny_raw["method"]["unlabeled_forward"] = unlabeled_forward  # aligned steps 3-4: one or two encoder passes per domain
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw))
    work = tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        f"--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "univseg", "train", str(cfg), "--work-dir", str(work), "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(work / "latest.pt")
    assert ckpt["iteration"] == 4
    assert not any(k.startswith("module.") for k in ckpt["model"])  # the unwrapped model is saved
    lines = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in lines if "loss" in r] == [1, 2, 3, 4]  # rank 0 alone writes the log
    assert [r["iter"] for r in lines if "ent_cross" in r] == [3, 4]  # the unlabeled images went through DDP
    evals = json.loads((work / "eval_results.json").read_text())
    # the val split (4 images per domain) is sharded over the 2 ranks and the confusion matrices summed
    assert evals["domains"]["city"]["pixels"] == 4 * 32 * 48 - _ignored(tiny_raw, "city")
    assert proc.stdout.count("checkpoints, metrics.jsonl") == 1


def _ignored(raw, domain):
    """Ignore pixels in the val split of a domain (they are not counted)."""
    from univseg.config import validate_config
    from univseg.data.domain import build_domains

    d = next(d for d in build_domains(validate_config(raw)) if d.name == domain)
    return sum(int((d.val[i]["label"] == 255).sum()) for i in range(len(d.val)))
