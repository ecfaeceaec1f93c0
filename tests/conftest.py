"""Shared fixtures: a tiny two-domain synthetic config that trains in seconds."""
from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from univseg.engine.trainer import TrainerHook

torch.set_num_threads(min(2, os.cpu_count() or 1))

DATA_ROOT = Path(os.environ.get("UNIVSEG_DATA_ROOT", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))

TINY = {
    "name": "tiny",
    "seed": 0,
    "domains": [
        {
            "name": "city",
            "dataset": {"type": "synthetic", "style": "city", "taxonomy": "fine", "num_train": 12, "num_val": 4, "height": 32, "width": 48},
            "labeled": {"count": 4},
            "batch_size": 2,
            "unlabeled_batch_size": 2,
            "train_transforms": [{"type": "hflip"}],
        },
        {
            "name": "rural",
            "dataset": {"type": "synthetic", "style": "rural", "taxonomy": "coarse", "num_train": 12, "num_val": 4, "height": 32, "width": 48},
            "labeled": {"count": 4},
            "batch_size": 2,
            "unlabeled_batch_size": 2,
        },
    ],
    "model": {"backbone": "erfnet", "backbone_args": {"width": 0.25}, "embed_dim": 8},
    "method": {"name": "univ-full", "warmup_iters": 2, "lambda_cross": 0.5, "lambda_within": 0.5},
    "train": {
        "iters": 6,
        "optimizer": {"type": "adamw", "lr": 0.003},
        "eval_interval": 3,
        "checkpoint_interval": 3,
        "log_interval": 1,
        "num_workers": 0,
        "amp": "none",
        # NCHW: the suite compares training paths to 1e-5, and the layouts' kernels round differently
        # (channels-last training: test_activation_checkpoint.py, test_precision.py)
        "channels_last": False,
    },
    "eval": {"batch_size": 4},
}


@pytest.fixture(scope="module")
def one_intra_op_thread():
    """One torch thread for the tests of a module (``pytestmark = pytest.mark.usefixtures(...)``): on a
    2-core machine two OpenMP threads ran small convolutions 3-4x slower (spin-waiting under contention)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_raw() -> dict:
    """Plain data of the tiny config (a fresh copy per test)."""
    return copy.deepcopy(TINY)


@pytest.fixture
def tiny_yaml(tmp_path: Path, tiny_raw: dict) -> Path:
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_raw, sort_keys=False))
    return path


class Killed(Exception):
    """Stands for the process being killed in the middle of training."""


class DieAt(TrainerHook):
    """A trainer hook that kills the run before the step of ``iteration``."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def before_step(self, trainer, iteration: int) -> None:
        if iteration == self.iteration:
            raise Killed


def run_killed_at(trainer, iteration: int) -> None:
    """Run ``trainer`` but die when it reaches ``iteration`` (checkpoints written before that stay)."""
    trainer.hooks.append(DieAt(iteration))
    with pytest.raises(Killed):
        trainer.run()


def records(work_dir: Path) -> list[dict]:
    """The lines of a run's metrics.jsonl."""
    return [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_training_state(full: Path, part: Path, optimizers: tuple[str, ...] = ()) -> None:
    """Two runs' latest checkpoints hold identical model and method tensors and identical state of
    the named (auxiliary) optimizers, and their metrics logs list the same iterations."""
    from univseg.engine.checkpoint import Checkpoint

    a, b = Checkpoint.load(full / "latest.pt"), Checkpoint.load(part / "latest.pt")
    assert a.iteration == b.iteration
    for k in a.model:
        assert torch.equal(a.model[k], b.model[k]), k
    assert a.method.keys() == b.method.keys()
    for k in a.method:
        assert torch.equal(a.method[k], b.method[k]), k
    for name in optimizers:
        sa, sb = a.optimizers[name]["state"], b.optimizers[name]["state"]
        assert sa and sa.keys() == sb.keys(), name
        for i in sa:
            for key, value in sa[i].items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb[i][key])), (name, i, key)
    assert [r["iter"] for r in records(part)] == [r["iter"] for r in records(full)]


def train_tiny_with_cli(root: Path, *overrides: str) -> tuple[Path, Path]:
    """Train the tiny config through ``univseg train`` in ``root`` (``--set`` overrides); returns (config, work dir)."""
    import yaml

    from univseg.cli import main

    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    work = root / "work"
    sets = [a for o in overrides for a in ("--set", o)]
    assert main(["train", str(cfg), "--work-dir", str(work), *sets, "--no-progress"]) == 0
    return cfg, work


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_train_cmd(cfg: Path, work: Path, nproc: int = 2) -> list[str]:
    """``torchrun`` (``python -m torch.distributed.run``) of ``univseg train cfg`` in ``nproc`` local processes."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "univseg", "train", str(cfg), "--work-dir", str(work), "--no-progress",
    ]


def torchrun_train(cfg: Path, work: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """Run :func:`torchrun_train_cmd` to the end (one thread per process) and assert it succeeded."""
    proc = subprocess.run(
        torchrun_train_cmd(cfg, work, nproc), capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
