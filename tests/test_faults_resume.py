"""What a resumed, pre-empted or interrupted run does (issue 28): changed settings on resume, stop
signals inside evaluation and the centroid pass, every state a work dir can be left in, weights that
are not finite, stale temporary files, and the smaller items (Ctrl-C, full disk, ``${VAR:-default}``,
predict's output names, the demo's warm-up note).

Each test first reproduces the case of the issue, then checks the exit status, the message and the
files of the work dir.
"""
from __future__ import annotations

import copy
import errno
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY, run_killed_at
from PIL import Image

from univseg.cli import main
from univseg.config import load_config, validate_config
from univseg.engine import evaluator
from univseg.engine import trainer as trainer_module
from univseg.engine.checkpoint import Checkpoint
from univseg.engine.trainer import Trainer, TrainerHook
from univseg.errors import EXIT_STOPPED, TrainingDivergedError

#: evaluations every 2 iterations over 8 val images per domain, one per batch; no periodic checkpoint
RUN = {
    **copy.deepcopy(TINY),
    "train": {**TINY["train"], "iters": 6, "eval_interval": 2, "checkpoint_interval": 100},
    "eval": {"batch_size": 1},
}
for _d in RUN["domains"]:
    _d["dataset"]["num_val"] = 8


def strict_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines file, refusing ``Infinity`` / ``NaN`` (not JSON)."""

    def refuse(token: str):
        raise ValueError(f"{path}: {token} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """(config file of RUN, work dir of RUN trained without interruption)."""
    root = tmp_path_factory.mktemp("resume")
    cfg = root / "run.yaml"
    cfg.write_text(yaml.safe_dump(RUN, sort_keys=False))
    Trainer(validate_config(copy.deepcopy(RUN)), root / "reference", progress=False).run()
    return cfg, root / "reference"


def train(cfg: Path, work: Path, *extra: str) -> int:
    return main(["train", str(cfg), "--work-dir", str(work), "--no-progress", *extra])


def assert_same_weights(work: Path, reference: Path) -> None:
    """The run in ``work`` ended where the uninterrupted one did, with the same weights, and its
    metrics log is strict JSON holding every training iteration once."""
    a, b = Checkpoint.load(reference / "latest.pt"), Checkpoint.load(work / "latest.pt")
    assert a.iteration == b.iteration == RUN["train"]["iters"]
    for k in a.model:
        assert torch.equal(a.model[k], b.model[k]), k
    assert [r["iter"] for r in strict_lines(work / "metrics.jsonl") if "loss" in r] == list(range(1, 7))
    assert not list(work.glob(".*.tmp")) and not (work / ".lock").exists()


# ----------------------------------------------------------------------------- 1. changed settings

def test_resume_with_allow_changes_extends_the_run_and_logs_the_change(setup, tmp_path, capsys):
    cfg, _ = setup
    work = tmp_path / "work"
    assert train(cfg, work, "--set", "train.iters=4") == 0
    config_before = (work / "config.yaml").read_text()
    assert train(cfg, work, "--resume") == 2  # 6 iterations where the run was trained for 4: refused
    err = capsys.readouterr().err
    assert "train.iters: 4 -> 6" in err and "--resume --allow-changes train.iters" in err and "--overwrite" in err
    assert (work / "config.yaml").read_text() == config_before and Checkpoint.load(work / "latest.pt").iteration == 4

    assert train(cfg, work, "--resume", "--allow-changes", "train.iters", "seed") == 0
    out = capsys.readouterr().out
    assert "continuing from iteration 4 with changed settings (--allow-changes): train.iters: 4 -> 6" in out
    assert "--allow-changes seed: not changed" in out
    assert Checkpoint.load(work / "latest.pt").iteration == 6
    assert {"iter": 4, "config_changes": ["train.iters: 4 -> 6"]} in strict_lines(work / "metrics.jsonl")
    history = strict_lines(work / "config_history.jsonl")
    assert len(history) == 1 and history[0]["config_changes"] == ["train.iters: 4 -> 6"] and history[0]["iter"] == 4
    assert yaml.safe_load((work / "config.yaml").read_text())["train"]["iters"] == 6


def test_settings_that_change_nothing_computed_may_change_on_resume(setup, tmp_path):
    cfg, _ = setup
    work = tmp_path / "work"
    run_killed_at(Trainer(validate_config(copy.deepcopy(RUN)), work, progress=False), 3)
    assert train(cfg, work, "--resume", "--set", "train.log_interval=2", "--set", "train.checkpoint_interval=50") == 0
    assert not (work / "config_history.jsonl").exists() and Checkpoint.load(work / "latest.pt").iteration == 6


# ----------------------------------------------------------------------------- 2. stop signals in long passes

def sigterm_on_first_call(monkeypatch, module, name: str) -> list[int]:
    """Replace ``module.name`` by a wrapper that sends this process SIGTERM on its first call; returns the call log."""
    real, calls = getattr(module, name), []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


@pytest.mark.parametrize("where, module, name, stopped_at", [
    ("evaluation", evaluator, "predict_labels", 2),
    ("the centroid pass", trainer_module, "class_sums", 2),
], ids=["evaluation", "centroid pass"])
def test_sigterm_inside_a_long_pass_stops_after_the_current_batch_and_resume_is_exact(
    setup, tmp_path, monkeypatch, capfd, where, module, name, stopped_at
):
    cfg, reference = setup
    work = tmp_path / "work"
    with monkeypatch.context() as m:
        calls = sigterm_on_first_call(m, module, name)
        assert train(cfg, work) == EXIT_STOPPED
    err = capfd.readouterr().err
    assert len(calls) == 1  # the batch in progress finished; no further batch of the pass started
    assert "SIGTERM: stopping after the current step or batch" in err  # said at once, not only at the end
    assert f"stopped by SIGTERM during {where} after iteration {stopped_at}" in err and "--resume" in err
    assert "Traceback" not in err
    assert Checkpoint.load(work / "latest.pt").iteration == stopped_at
    assert not list(work.glob(".*.tmp")) and not (work / ".lock").exists()
    if where == "evaluation":
        assert not (work / "best.pt").exists()  # the interrupted evaluation chose nothing
    assert train(cfg, work, "--resume") == 0
    assert_same_weights(work, reference)


def test_sigterm_during_the_final_evaluation_logs_it_on_resume(setup, tmp_path, monkeypatch, capsys):
    cfg, reference = setup
    work = tmp_path / "work"
    real, calls = evaluator.evaluate_domain, []

    def evaluate_domain(*args, **kwargs):  # 2 domains per evaluation: call 5 starts the final one (after 2, 4)
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(evaluator, "evaluate_domain", evaluate_domain)
        assert train(cfg, work) == EXIT_STOPPED
    assert "during evaluation after iteration 6" in capsys.readouterr().err
    assert train(cfg, work, "--resume") == 0
    assert [r["iter"] for r in strict_lines(work / "metrics.jsonl") if "eval" in r] == [2, 4, 6]
    assert_same_weights(work, reference)
    assert (work / "eval_results.json").is_file()


# ----------------------------------------------------------------------------- 3. every state a run can be left in

def killed_at(iteration: int, checkpoint_interval: int = 100):
    def make(work: Path) -> None:
        raw = copy.deepcopy(RUN)
        raw["train"]["checkpoint_interval"] = checkpoint_interval
        run_killed_at(Trainer(validate_config(raw), work, progress=False), iteration)
    return make


def full_disk_at_the_final_checkpoint(work: Path) -> None:
    """The final write of latest.pt fails with ENOSPC (every earlier write succeeds)."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if ".latest.pt." in str(getattr(f, "name", f)) and obj.get("iteration") == RUN["train"]["iters"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch, "save", save)
        assert main(["train", str(work.parent / "run.yaml"), "--work-dir", str(work), "--no-progress"]) == 2


def kill_9_during_a_checkpoint_write(work: Path) -> None:
    """A run killed (no cleanup) while writing a checkpoint: its temporary file and its lock stay."""
    killed_at(5, checkpoint_interval=2)(work)
    (work / ".latest.pt.k9x2ab.tmp").write_bytes(b"PK\x03\x04" + bytes(4096))
    (work / ".lock").write_text(json.dumps({"host": os.uname().nodename, "pid": 2**22 + 17, "since": 0}))


# (id, how the work dir is left, [(extra train arguments, exit status, text of stdout + stderr)]: the
# command a user tries first and what it says, then the way out it names, which must finish the run)
STATES = [
    ("killed before any checkpoint or evaluation", killed_at(1),
     [(["--resume"], 2, "start without --resume"), ([], 0, "")]),
    ("killed between the first evaluation and the first checkpoint", killed_at(3),
     [([], 2, "--resume (from best.pt"), (["--resume"], 0, "continuing from")]),
    ("full disk at the final checkpoint", full_disk_at_the_final_checkpoint,
     [([], 2, "--resume (from best.pt"), (["--resume"], 0, "continuing from")]),
    ("crashed after a checkpoint", killed_at(5, checkpoint_interval=2),
     [([], 2, "continue it with --resume"), (["--resume"], 0, "")]),
    ("kill -9 during a checkpoint write", kill_9_during_a_checkpoint_write,
     [(["--resume"], 0, "removed 1 temporary file(s) that an interrupted write left")]),
]


@pytest.mark.parametrize("leave, commands", [s[1:] for s in STATES], ids=[s[0] for s in STATES])
def test_every_state_a_run_can_be_left_in_continues_by_following_its_message(setup, tmp_path, capsys, leave, commands):
    cfg, reference = setup
    (tmp_path / "run.yaml").write_text(cfg.read_text())
    work = tmp_path / "work"
    leave(work)
    capsys.readouterr()
    for extra, status, text in commands:
        assert train(cfg, work, *extra) == status
        out = capsys.readouterr()
        assert text in out.out + out.err and "Traceback" not in out.err, out
    assert_same_weights(work, reference)


def test_a_full_disk_says_no_space_left_on_device(tmp_path):
    from univseg.utils.files import _torch_save, _write_error

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    with pytest.raises(OSError) as e:
        _torch_save({"w": torch.zeros(100_000)}, Path("/dev/full"))
    assert e.value.errno == errno.ENOSPC
    assert "No space left on device" in str(_write_error(tmp_path / "latest.pt", "checkpoint", e.value))


# ----------------------------------------------------------------------------- 7. non-finite weights, strict JSON

class Poison(TrainerHook):
    """After the first step: a weight becomes NaN and a logged loss term infinite."""

    def after_step(self, trainer, iteration, terms):
        if iteration == 0:
            with torch.no_grad():
                next(trainer.model.parameters()).view(-1)[0] = float("nan")
            terms["sup"] = float("inf")


def test_weights_that_are_not_finite_are_never_saved_and_the_metrics_stay_strict_json(tmp_path):
    raw = copy.deepcopy(RUN)
    raw["train"].update({"iters": 3, "eval_interval": 0})  # iters <= max_bad_steps: the run used to end with exit 0
    with pytest.raises(TrainingDivergedError, match=r"weights are not finite .* not saved as .*best\.pt") as e:
        Trainer(validate_config(raw), tmp_path, progress=False, hooks=[Poison()]).run()
    assert "--overwrite" in str(e.value) and "--allow-changes" in str(e.value)
    assert not (tmp_path / "best.pt").exists() and not (tmp_path / "latest.pt").exists()
    logged = strict_lines(tmp_path / "metrics.jsonl")
    assert logged[0]["iter"] == 1 and logged[0]["sup"] is None


# ----------------------------------------------------------------------------- 10. the smaller items

@pytest.mark.parametrize("verb, target, hint", [
    ("train", "univseg.engine.trainer.Trainer.run", "--resume"),
    ("predict", "univseg.engine.predict_files.predict_files", None),
])
def test_ctrl_c_suggests_resume_only_where_there_is_a_run_to_resume(verb, target, hint, setup, tmp_path, monkeypatch, capsys):
    cfg, reference = setup

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    args = {"train": ["train", str(cfg), "--work-dir", str(tmp_path / "w")],
            "predict": ["predict", str(reference / "latest.pt"), str(cfg), "--out", str(tmp_path / "p")]}[verb]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert f"univseg {verb}: interrupted" in err
    assert (hint in err) if hint else ("resume" not in err)


def test_a_file_system_error_no_layer_named_exits_2_without_traceback(setup, tmp_path, monkeypatch, capsys):
    cfg, reference = setup

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "p" / "x.png"))

    monkeypatch.setattr("univseg.engine.predict_files.predict_files", denied)
    assert main(["predict", str(reference / "latest.pt"), str(cfg), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert f"univseg predict: error: {tmp_path / 'p' / 'x.png'}: Permission denied" in err and "Traceback" not in err
    with pytest.raises(PermissionError):
        main(["--debug", "predict", str(reference / "latest.pt"), str(cfg), "--out", str(tmp_path / "p")])


def test_a_set_but_empty_variable_takes_the_default_as_in_a_shell(monkeypatch, tmp_path):
    monkeypatch.setenv("UNIVSEG_TEST_EMPTY", "")
    raw = copy.deepcopy(TINY)
    raw["name"] = "${UNIVSEG_TEST_EMPTY:-fallback}"
    raw["domains"][0]["name"] = "city${UNIVSEG_TEST_EMPTY}"  # no default: empty stays empty
    cfg = load_config(data=raw)
    assert cfg.name == "fallback" and cfg.domains[0].name == "city"


def test_predict_gives_distinct_inputs_distinct_outputs_and_counts_them(setup, tmp_path, capsys):
    _, reference = setup
    rng = np.random.default_rng(0)
    for name in ("x.jpg", "x.png", "sub/x.png", "y.png"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(tmp_path / "in" / name)
    out = tmp_path / "out"
    assert main(["predict", str(reference / "latest.pt"), str(tmp_path / "in"), "--out", str(out),
                 "--label-space", "city", "--no-progress"]) == 0
    stems = ["x.jpg", "x.png", "sub__x.png", "y"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}_city{o}.png" for s in stems for o in ("", "_overlay"))
    assert f"wrote 8 files to {out}" in capsys.readouterr().out


def test_a_demo_shorter_than_the_entropy_warm_up_says_when_the_terms_start(monkeypatch, tmp_path, capsys):
    """--iters 50, below the demo config's warm-up of 100: the warm-up is scaled with the budget and the
    demo says at which iteration univ-full's alignment terms start (inside the 50)."""
    import univseg.demo as demo

    captured = {}
    monkeypatch.setattr(demo, "run_experiment", lambda *args, **kwargs: captured.update(kwargs) or [])
    monkeypatch.setattr(demo, "_write_predictions", lambda *args: None)
    demo.run_demo(tmp_path, iters=50, progress=False)
    assert "alignment terms start after 17 supervised iterations, at iteration 18 of 50" in capsys.readouterr().out
    assert "method.warmup_iters=17" in captured["overrides"]
