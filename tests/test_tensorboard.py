"""TensorBoard scalars during training: the values of metrics.jsonl, rank 0, train.tensorboard auto|true|false."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import records, run_killed_at

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from univseg.config import validate_config  # noqa: E402
from univseg.engine import tensorboard_hook  # noqa: E402
from univseg.engine.checkpoint import Checkpoint  # noqa: E402
from univseg.engine.tensorboard_hook import TensorBoardHook  # noqa: E402
from univseg.engine.trainer import Trainer  # noqa: E402
from univseg.errors import ConfigError  # noqa: E402


def scalars(work_dir: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of every event file in ``work_dir/tensorboard``."""
    events = EventAccumulator(str(work_dir / "tensorboard"))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def assert_scalars_equal_metrics(work_dir: Path) -> None:
    """Every loss term and lr (log_interval 1) and every evaluation of metrics.jsonl, as TensorBoard scalars (float32)."""
    got = scalars(work_dir)
    steps = [r for r in records(work_dir) if "loss" in r]
    evals = [r for r in records(work_dir) if "eval" in r]
    assert steps and evals
    for key in ("loss", "sup", "lr"):
        assert got[f"train/{key}"] == pytest.approx({r["iter"]: r[key] for r in steps}, rel=1e-6), key
    assert got["eval/mean_mIoU"] == pytest.approx({r["iter"]: r["mean_mIoU"] for r in evals}, rel=1e-6)
    for domain in ("city", "rural"):
        assert got[f"eval/mIoU/{domain}"] == pytest.approx({r["iter"]: r["eval"][domain] for r in evals}, rel=1e-6)


def test_tensorboard_scalars_equal_metrics_jsonl(tiny_raw, tmp_path):
    assert tiny_raw["train"]["log_interval"] == 1  # metrics.jsonl then holds each step's values
    Trainer(validate_config(tiny_raw), tmp_path, progress=False).run()  # train.tensorboard: auto
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert_scalars_equal_metrics(tmp_path)
    assert sorted(scalars(tmp_path)["eval/mean_mIoU"]) == [3, 6]


def test_resumed_run_holds_each_iteration_once(tiny_raw, tmp_path):
    run_killed_at(Trainer(validate_config(tiny_raw), tmp_path, progress=False), 4)  # iterations 1-4 logged, checkpoint at 3
    Trainer(validate_config(tiny_raw), tmp_path, resume=True, progress=False).run()
    assert sorted(scalars(tmp_path)["train/loss"]) == [1, 2, 3, 4, 5, 6]
    assert_scalars_equal_metrics(tmp_path)


def test_tensorboard_false_writes_nothing_and_the_hook_changes_no_result(tiny_raw, tmp_path):
    tiny_raw["train"].update(iters=3, eval_interval=0)
    weights = {}
    for setting in (True, False):
        tiny_raw["train"]["tensorboard"] = setting
        work = tmp_path / str(setting)
        Trainer(validate_config(tiny_raw), work, progress=False).run()
        assert (work / "tensorboard").exists() == setting
        weights[setting] = Checkpoint.load(work / "latest.pt").model
    for key, value in weights[True].items():
        assert torch.equal(value, weights[False][key]), key


def test_tensorboard_true_without_the_package_names_the_extra(tiny_raw, tmp_path, monkeypatch):
    monkeypatch.setattr(tensorboard_hook, "tensorboard_installed", lambda: False)
    tiny_raw["train"]["tensorboard"] = True
    with pytest.raises(ConfigError, match=r'train\.tensorboard: true .*pip install "univseg\[tensorboard\]"') as e:
        Trainer(validate_config(tiny_raw), tmp_path / "a", progress=False)
    assert e.value.key == "train.tensorboard"
    tiny_raw["train"]["tensorboard"] = "auto"
    trainer = Trainer(validate_config(tiny_raw), tmp_path / "b", progress=False)
    assert not any(isinstance(h, TensorBoardHook) for h in trainer.hooks)
