"""Training under faults: work dirs holding a run, concurrent trainings, SIGTERM, non-finite losses."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import records, torchrun_train_cmd
from univseg.cli import main
from univseg.config import validate_config
from univseg.engine.checkpoint import Checkpoint
from univseg.engine.trainer import Trainer
from univseg.errors import EXIT_STOPPED, TrainingDivergedError, WorkDirError
from univseg.methods import METHODS
from univseg.methods.universal import UniversalSemiSupervised


def write_cfg(raw, tmp_path, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


# ----------------------------------------------------------------------------- work dirs

def test_a_work_dir_holding_a_run_is_refused_without_resume_and_overwrite_moves_it_aside(tiny_raw, tmp_path, capsys):
    tiny_raw["train"].update({"iters": 2, "eval_interval": 0, "checkpoint_interval": 1})
    cfg, work = write_cfg(tiny_raw, tmp_path), tmp_path / "work"
    assert main(["train", str(cfg), "--work-dir", str(work), "--no-progress"]) == 0
    first = (work / "latest.pt").read_bytes()
    capsys.readouterr()

    assert main(["train", str(cfg), "--work-dir", str(work), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(work) in err and "--resume" in err and "--overwrite" in err
    assert (work / "latest.pt").read_bytes() == first  # untouched
    assert len(records(work)) == len([r for r in records(work)])

    assert main(["train", str(cfg), "--work-dir", str(work), "--no-progress", "--overwrite"]) == 0
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("work.old-")]
    assert len(moved) == 1 and (moved[0] / "latest.pt").read_bytes() == first
    assert "moved to" in capsys.readouterr().out
    assert [r["iter"] for r in records(work) if "loss" in r] == [1, 2]  # a fresh log, not appended


def test_a_second_training_on_the_same_work_dir_is_refused_while_the_first_runs(tiny_raw, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (work / ".lock").write_text(json.dumps({"host": os.uname().nodename, "pid": other.pid, "since": 0}))
        with pytest.raises(WorkDirError, match=f"in use by process {other.pid}"):
            Trainer(validate_config(tiny_raw), work, progress=False)
    finally:
        other.kill()
        other.wait()
    # the same lock of a process that no longer runs is stale: taken over, and released after the run
    tiny_raw["train"].update({"iters": 1, "eval_interval": 0})
    Trainer(validate_config(tiny_raw), work, progress=False).run()
    assert not (work / ".lock").exists()


def test_the_lock_is_held_while_training(tiny_raw, tmp_path):
    from univseg.engine.trainer import TrainerHook

    seen = []

    class Look(TrainerHook):
        def before_step(self, trainer, iteration):
            seen.append(json.loads((trainer.work_dir / ".lock").read_text())["pid"])

    tiny_raw["train"].update({"iters": 2, "eval_interval": 0})
    Trainer(validate_config(tiny_raw), tmp_path / "w", progress=False, hooks=[Look()]).run()
    assert seen == [os.getpid()] * 2 and not (tmp_path / "w" / ".lock").exists()


# ----------------------------------------------------------------------------- signals

def wait_for_iteration(work_dir, iteration, timeout=300):
    """Wait until a run in ``work_dir`` has logged ``iteration`` (metrics.jsonl, log_interval 1)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        log = work_dir / "metrics.jsonl"
        if log.is_file() and any(json.loads(x).get("iter", 0) >= iteration for x in log.read_text().splitlines()):
            return
        time.sleep(0.05)


def _train_cmd(cfg, work, *extra):
    return [sys.executable, "-m", "univseg", "train", str(cfg), "--work-dir", str(work), "--no-progress", *extra]


def test_sigterm_checkpoints_the_current_iteration_and_resume_equals_an_uninterrupted_run(tiny_raw, tmp_path):
    tiny_raw["train"].update({"iters": 40, "eval_interval": 0, "checkpoint_interval": 1000, "log_interval": 1})
    cfg = write_cfg(tiny_raw, tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, part = tmp_path / "full", tmp_path / "part"
    assert subprocess.run(_train_cmd(cfg, full), env=env, capture_output=True, timeout=600).returncode == 0

    proc = subprocess.Popen(_train_cmd(cfg, part), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_iteration(part, 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_STOPPED, err[-2000:]
    stopped_at = Checkpoint.load(part / "latest.pt").iteration
    assert 3 <= stopped_at < 40
    assert f"SIGTERM after iteration {stopped_at}" in err and "--resume" in err
    assert not list(part.glob(".*.tmp")) and not (part / ".lock").exists()
    assert max(r["iter"] for r in records(part)) == stopped_at

    assert subprocess.run(_train_cmd(cfg, part, "--resume"), env=env, capture_output=True, timeout=600).returncode == 0
    a, b = Checkpoint.load(full / "latest.pt"), Checkpoint.load(part / "latest.pt")
    assert a.iteration == b.iteration == 40
    for k in a.model:
        assert torch.equal(a.model[k], b.model[k]), k


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_to_the_whole_process_group_still_checkpoints_and_stops_cleanly(tiny_raw, tmp_path, sig):
    """Ctrl-C, ``kill -- -PGID`` and job schedulers signal every process of the group, data-loading
    workers included: the workers leave the signal to the main process, which finishes its step."""
    tiny_raw["train"].update({"iters": 200, "eval_interval": 0, "checkpoint_interval": 1000, "log_interval": 1, "num_workers": 2})
    cfg, work = write_cfg(tiny_raw, tmp_path), tmp_path / "w"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_train_cmd(cfg, work), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_iteration(work, 3)
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_STOPPED, err[-2000:]
    stopped_at = Checkpoint.load(work / "latest.pt").iteration
    assert 3 <= stopped_at < 200 and f"{signal.Signals(sig).name} after iteration {stopped_at}" in err
    assert "Traceback" not in err and "DataLoader worker" not in err


def test_a_process_exits_with_its_data_loading_workers_still_running():
    """The workers ignore SIGTERM, which multiprocessing's exit handler sends before waiting for them:
    the process must still exit at once, without reporting a failed worker."""
    code = (
        "import torch\n"
        "from univseg.data.sampler import infinite_loader\n"
        "class Images(torch.utils.data.Dataset):\n"
        "    def __len__(self): return 8\n"
        "    def __getitem__(self, i): return {'image': torch.zeros(3, 4, 4)}\n"
        "loader = infinite_loader(Images(), 2, seed=0, stream=0, start_iter=0, num_workers=2)\n"
        "print(next(loader)['image'].shape[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "2", out.stderr[-2000:]
    assert "DataLoader worker" not in out.stderr and "Traceback" not in out.stderr


def test_the_workers_of_ended_loaders_are_no_longer_tracked(monkeypatch):
    """A long run starts loaders again (resume, evaluation rounds): the exit list keeps only live workers."""
    from univseg.data import workers

    class Worker:
        def __init__(self):
            self.alive = True

        def is_alive(self):
            return self.alive

    class LoaderIterator:
        def __init__(self, procs):
            self._workers = procs

    monkeypatch.setattr(workers, "_TRACKED", [])
    first, second = [Worker(), Worker()], [Worker()]
    workers.tracked(LoaderIterator(first))
    assert workers._TRACKED == first
    first[0].alive = False
    workers.tracked(LoaderIterator(second))
    assert workers._TRACKED == [first[1], *second]


def test_sigterm_to_an_experiment_says_to_rerun_it_and_the_rerun_resumes(tiny_raw, tmp_path):
    """``univseg experiment`` resumes by being run again (it has no --resume): its stop message says so."""
    tiny_raw["train"].update({"iters": 40, "eval_interval": 0, "checkpoint_interval": 1000, "log_interval": 1})
    cfg, out = write_cfg(tiny_raw, tmp_path), tmp_path / "exp"
    cmd = [sys.executable, "-m", "univseg", "experiment", str(cfg), "--out", str(out), "--methods", "joint", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_iteration(out / "runs" / "joint", 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_STOPPED, err[-2000:]
    stopped_at = Checkpoint.load(out / "runs" / "joint" / "latest.pt").iteration
    assert f"run 'joint' (seed 0) stopped by SIGTERM after iteration {stopped_at}" in err
    assert "Run the same command again to resume it" in err and "--resume" not in err and "Traceback" not in err
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "== joint (seed 0): resuming 40 iterations" in again.stdout, again.stderr[-2000:]
    assert Checkpoint.load(out / "runs" / "joint" / "latest.pt").iteration == 40


# ----------------------------------------------------------------------------- non-finite losses

class NanAt(UniversalSemiSupervised):
    """joint, but the loss (and its 'sup' term) is NaN at the listed 0-based steps."""

    bad_steps: set = set()

    def __init__(self, cfg, label_spaces, embed_dim):
        super().__init__(cfg, label_spaces, embed_dim, lambda_cross=0.0, lambda_within=0.0)
        self.calls = 0

    def losses(self, model, batches):
        terms = super().losses(model, batches)
        if self.calls in self.bad_steps:
            terms["loss"] = terms["loss"] * float("nan")
            terms["sup"] = terms["sup"] * float("nan")
        self.calls += 1
        return terms


def test_a_non_finite_step_is_skipped_without_any_update_and_logged(tiny_raw, tmp_path):
    from univseg.engine.trainer import TrainerHook

    class Snap(TrainerHook):
        def __init__(self):
            self.before, self.after = {}, {}

        def before_step(self, trainer, it):
            self.before[it] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

        def after_step(self, trainer, it, terms):
            self.after[it] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    NanAt.bad_steps = {2}
    tiny_raw["method"] = {"name": "nan-at"}
    tiny_raw["train"].update({"iters": 4, "eval_interval": 0})
    snap = Snap()
    with METHODS.temporary("nan-at", NanAt):
        Trainer(validate_config(tiny_raw), tmp_path / "w", progress=False, hooks=[snap]).run()
    unchanged = lambda it: all(torch.equal(snap.before[it][k], snap.after[it][k]) for k in snap.before[it])  # noqa: E731
    assert unchanged(2) and not unchanged(1) and not unchanged(3)
    logs = records(tmp_path / "w")
    assert {"iter": 3, "skipped_step": True, "nonfinite": ["loss", "sup"]} in logs
    assert all(r["loss"] == r["loss"] for r in logs if "loss" in r)  # no NaN in the averaged terms


def test_non_finite_losses_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(tiny_raw, tmp_path):
    NanAt.bad_steps = {2, 3, 4}  # iterations 3-5
    tiny_raw["method"] = {"name": "nan-at"}
    tiny_raw["train"].update({"iters": 10, "eval_interval": 0, "checkpoint_interval": 2, "max_bad_steps": 3})
    with METHODS.temporary("nan-at", NanAt):
        with pytest.raises(TrainingDivergedError, match=r"3 steps in a row \(iterations 3-5; terms: loss, sup\)") as e:
            Trainer(validate_config(tiny_raw), tmp_path / "w", progress=False).run()
    assert e.value.key == "train.max_bad_steps"
    # the checkpoint at 4 (after two skipped steps: the weights of iteration 2) stays; none is written at 5
    ckpt = Checkpoint.load(tmp_path / "w" / "latest.pt")
    assert ckpt.iteration == 4 and all(torch.isfinite(v).all() for v in ckpt.model.values() if v.is_floating_point())
    assert not (tmp_path / "w" / ".lock").exists()


def test_sigterm_to_one_torchrun_process_stops_every_rank_at_the_same_iteration(tiny_raw, tmp_path):
    """SIGTERM reaches only rank 1: the ranks agree (a flag reduced over processes each step), rank 0
    writes latest.pt at that iteration and both exit with the stop status."""
    tiny_raw["train"].update({"iters": 200, "eval_interval": 0, "checkpoint_interval": 1000, "log_interval": 1})
    cfg, work = write_cfg(tiny_raw, tmp_path), tmp_path / "work"
    proc = subprocess.Popen(torchrun_train_cmd(cfg, work), env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_iteration(work, 3)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    ranks = {}
    for pid in workers:
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        rank = next(int(e.split(b"=")[1]) for e in env if e.startswith(b"RANK="))
        ranks[rank] = int(pid)
    os.kill(ranks[1], signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0  # torchrun reports the workers' stop status as a failure
    stopped_at = Checkpoint.load(work / "latest.pt").iteration
    assert 3 <= stopped_at < 200
    assert err.count(f"stopped by SIGTERM after iteration {stopped_at}") == 2, err[-3000:]  # both ranks, same iteration
