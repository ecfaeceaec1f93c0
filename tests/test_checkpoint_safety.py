"""Checkpoints that are incomplete, damaged, foreign or hostile, kept versions and failed saves
(issue 12, parts 0 and 3). Each test reproduces one defect: it failed before the fix and passes now.
"""
from __future__ import annotations

import copy
import errno
import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import TINY
from test_faults_io import tiny_checkpoint

from univseg.cli import main
from univseg.config import validate_config
from univseg.data.label_space import LabelSpace
from univseg.engine.checkpoint import Checkpoint, kept_path
from univseg.engine.predictor import Predictor
from univseg.engine.trainer import Trainer
from univseg.errors import CheckpointError, ConfigError, WriteError


def edited(src: Path, dst: Path, edit) -> Path:
    raw = torch.load(src, weights_only=True)
    edit(raw)
    torch.save(raw, dst)
    return dst


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return tiny_checkpoint(tmp_path / "model.pt")


# ------------------------------------------------------------------------------------------ contents

def test_checkpoint_without_label_spaces_says_what_is_missing(ckpt, tmp_path):
    path = edited(ckpt, tmp_path / "nolabels.pt", lambda raw: raw.pop("label_spaces"))
    with pytest.raises(CheckpointError, match=r"incomplete univseg checkpoint: it lacks 'label_spaces' \(the heads' classes\)") as e:
        Predictor.from_checkpoint(path, device="cpu")
    assert e.value.path == str(path) and str(path) in str(e.value)


def test_class_counts_that_do_not_fit_the_weights_name_the_head(ckpt, tmp_path):
    def drop_a_class(raw):
        space = LabelSpace.from_dict(raw["label_spaces"]["city"])
        raw["label_spaces"]["city"] = LabelSpace.from_names("fine", space.names[:-1]).to_dict()

    path = edited(ckpt, tmp_path / "fewer.pt", drop_a_class)
    with pytest.raises(CheckpointError) as e:
        Predictor.from_checkpoint(path, device="cpu")
    message = str(e.value)
    assert str(path) in message and e.value.path == str(path)
    assert "head 'city': label space 'fine' has 8 classes, but the head's weights have 9 outputs" in message, message
    assert "size mismatch" not in message  # not torch's message


def test_eval_with_no_head_for_any_domain_is_an_error_naming_heads_and_domains(ckpt, tmp_path, capsys):
    from test_cli_errors import folder_domain

    config = folder_domain(tmp_path / "data")
    assert main(["eval", str(config), str(ckpt), "--no-progress"]) == 2  # before: exit 0, a table of "-"
    err = capsys.readouterr().err
    assert f"no head of checkpoint {ckpt} fits any domain of the config" in err, err
    assert "'city' (synthetic-fine: 9 classes)" in err and "'rural' (synthetic-coarse: 8 classes)" in err and "'mine'" in err
    assert "eval.mappings" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ foreign files

class RunsCode:
    """Unpickling this creates the folder ``marker``: proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_random_bytes_are_not_a_checkpoint_and_the_advice_is_never_weights_only_false(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(os.urandom(2048))
    with pytest.raises(CheckpointError, match="not a univseg checkpoint, or it is damaged") as e:
        Checkpoint.load(path)
    assert "weights_only" not in str(e.value) and e.value.path == str(path)


def test_truncated_and_empty_files_say_so(ckpt, tmp_path):
    data = ckpt.read_bytes()
    (tmp_path / "half.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated"):
        Checkpoint.load(tmp_path / "half.pt")
    with pytest.raises(CheckpointError, match="empty"):
        Checkpoint.load(tmp_path / "empty.pt")


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_that_would_run_code_is_refused_as_such(writer, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    payload = {"format": "univseg-checkpoint", "x": RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(CheckpointError, match="could run code") as e:
        Checkpoint.load(path)
    assert "mkdir" in str(e.value) and "weights_only" not in str(e.value)
    assert not marker.exists()


def test_a_folder_given_as_checkpoint_says_it_is_a_folder(tmp_path, capsys):
    (tmp_path / "img.png").write_bytes(b"")
    assert main(["predict", str(tmp_path), str(tmp_path / "img.png"), "--out", str(tmp_path / "out")]) == 2
    assert f"{tmp_path} is a folder; give a checkpoint file" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ kept versions

def record(iteration: int) -> Checkpoint:
    return Checkpoint(config={"model": {}}, label_spaces={"a": LabelSpace.from_names("a", ["x", "y"])},
                      model={"w": torch.full((2,), float(iteration))}, iteration=iteration)


def iterations(path: Path) -> dict[str, int]:
    return {p.name: Checkpoint.load(p).iteration for p in sorted(path.parent.glob(path.name + "*"))}


def test_save_keeps_the_previous_versions_as_numbered_files(tmp_path):
    path = tmp_path / "latest.pt"
    for it in range(1, 5):
        record(it).save(path, keep=3)
    assert iterations(path) == {"latest.pt": 4, "latest.pt.1": 3, "latest.pt.2": 2}
    record(5).save(path, keep=1)  # fewer kept: the older versions go
    assert iterations(path) == {"latest.pt": 5}
    assert not list(tmp_path.glob(".*tmp"))


def test_a_truncated_latest_is_not_kept_in_place_of_a_good_previous_one(tmp_path):
    path = tmp_path / "latest.pt"
    record(1).save(path, keep=2)
    record(2).save(path, keep=2)
    path.write_bytes(path.read_bytes()[:100])
    record(3).save(path, keep=2)
    assert iterations(path) == {"latest.pt": 3, "latest.pt.1": 1}


def test_train_config_keep_checkpoints_defaults_to_2_and_must_be_positive():
    assert validate_config(copy.deepcopy(TINY)).train.keep_checkpoints == 2
    raw = copy.deepcopy(TINY)
    raw["train"]["keep_checkpoints"] = 0
    with pytest.raises(ConfigError, match="train.keep_checkpoints"):
        validate_config(raw)


def test_resume_falls_back_to_the_previous_checkpoint_when_latest_is_truncated(tmp_path, capsys):
    cfg = validate_config(copy.deepcopy(TINY))  # checkpoints at iterations 3 and 6
    Trainer(cfg, tmp_path, progress=False).run()
    latest = tmp_path / "latest.pt"
    assert iterations(latest) == {"latest.pt": 6, "latest.pt.1": 3}
    latest.write_bytes(latest.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"truncated.*use the previous checkpoint .*latest\.pt\.1"):
        Checkpoint.load(latest)
    capsys.readouterr()
    trainer = Trainer(cfg, tmp_path, resume=True, progress=False)
    assert trainer.start_iter == 3
    err = capsys.readouterr().err
    assert f"cannot load checkpoint {latest}" in err and f"using the previous checkpoint {latest}.1 (iteration 3)" in err


def test_resume_without_any_readable_version_is_an_error_naming_each(tmp_path):
    latest = tmp_path / "latest.pt"
    latest.write_bytes(b"junk")
    kept_path(latest, 1).write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no version of checkpoint .*latest\.pt can be loaded") as e:
        Checkpoint.load_newest(latest)
    assert "latest.pt.1" in str(e.value)


# ------------------------------------------------------------------------------------------ failed saves

def half_written_then(error: Exception):
    """A torch.save that writes part of the file, then fails with ``error`` (a full disk)."""

    def save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise error

    return save


@pytest.mark.parametrize(
    "error",
    [OSError(errno.ENOSPC, "No space left on device"), RuntimeError("PytorchStreamWriter failed writing file data/0")],
    ids=["OSError", "torch zip writer"],
)
def test_a_failed_save_leaves_the_previous_checkpoints_intact_and_no_temporary_file(error, tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    record(1).save(path, keep=2)
    record(2).save(path, keep=2)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(torch, "save", half_written_then(error))
    with pytest.raises(WriteError) as e:
        record(3).save(path, keep=2)
    assert f"cannot write checkpoint {path}" in str(e.value) and f"the previous checkpoint {path} is intact" in str(e.value)
    assert e.value.path == str(path) and isinstance(e.value, OSError)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no .tmp left, nothing rotated


def test_a_failed_first_save_says_that_nothing_was_written(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", half_written_then(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(WriteError, match="no checkpoint was written"):
        record(1).save(tmp_path / "latest.pt", keep=2)
    assert not list(tmp_path.iterdir())
