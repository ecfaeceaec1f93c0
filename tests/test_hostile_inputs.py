"""Hostile inputs to the CLI (issue 28): a resumed run with other settings, unwritable work dirs,
YAML bombs, binary configs, non-finite settings, outputs that would overwrite or read themselves.

Every case runs one command on a copy of a real tiny run and checks: exit status 2, no traceback,
a message naming the file or key and the way out, and every file under the test folder exactly
as it was before (nothing lost, nothing half-written). The tests after the table reproduce the
items that need more than one command.

Tests run as root here, where a read-only folder is still writable: the read-only cases inject the
operating system's error (EROFS) into the one call that creates files (``tempfile.mkstemp``); a
regular file where a folder is expected fails for root too and is used for real.
"""
from __future__ import annotations

import copy
import errno
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from conftest import TINY
from PIL import Image

from univseg.cli import main

#: a tiny run: evaluations and checkpoints at iterations 2 and 4
RUN_TRAIN = {**TINY["train"], "iters": 4, "eval_interval": 2, "checkpoint_interval": 2}


def write_yaml(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run (config.yaml, latest.pt, latest.pt.1, best.pt, metrics.jsonl, eval_results.json)."""
    root = tmp_path_factory.mktemp("hostile")
    cfg = write_yaml(root / "tiny.yaml", {**copy.deepcopy(TINY), "train": RUN_TRAIN})
    assert main(["train", str(cfg), "--work-dir", str(root / "run"), "--no-progress"]) == 0
    return root


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def read_only(monkeypatch) -> None:
    """Creating a file anywhere fails as on a read-only file system (root ignores permission bits)."""

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("univseg.utils.files.tempfile.mkstemp", refuse)


def alias_bomb(path: Path, levels: int = 9) -> Path:
    """A "billion laughs" YAML file: each anchor is a list of 9 aliases of the previous one."""
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    lines.append(f"name: *a{levels - 1}")
    path.write_text("\n".join(lines) + "\n")
    return path


def zero_frame_video(path: Path) -> Path:
    """An AVI file with a video stream and no frame."""
    av = pytest.importorskip("av")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        container.start_encoding()
    return path


def image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((16, 24, 3), dtype=np.uint8)).save(path)
    return path


def aligned_once(run: Path) -> str:
    """The checkpoint, after one 'univseg align' wrote its output beside it."""
    assert main(["align", str(run / "latest.pt"), "--no-progress"]) == 0
    return str(run / "latest.pt")


def train(d: Path, *extra: str) -> list[str]:
    return ["train", str(d / "tiny.yaml"), "--work-dir", str(d / "run"), "--no-progress", *extra]


# (id, arguments built from (test folder holding tiny.yaml and run/, monkeypatch), texts the message must hold)
Case = tuple[str, Callable[[Path, pytest.MonkeyPatch], list[str]], list[str]]
CASES: list[Case] = [
    # 1. resume with settings that change the computation
    ("resume: another learning rate", lambda d, mp: train(d, "--resume", "--set", "train.optimizer.lr=0.01"),
     ["train.optimizer.lr: 0.003 -> 0.01", "--overwrite", "--resume --allow-changes train.optimizer.lr", "iteration 4"]),
    ("resume: another method", lambda d, mp: train(d, "--resume", "--set", "method.name=joint"),
     ["method.name: 'univ-full' -> 'joint'", "cannot change in a resumed run", "--overwrite"]),
    ("resume: another seed and more iterations", lambda d, mp: train(d, "--resume", "--set", "seed=1", "--set", "train.iters=8"),
     ["seed: 0 -> 1", "train.iters: 4 -> 8", "--allow-changes seed train.iters"]),
    ("resume: adamw -> sgd", lambda d, mp: train(d, "--resume", "--set", "train.optimizer.type=sgd"),
     ["train.optimizer.type: 'adamw' -> 'sgd'", "cannot change in a resumed run", "--overwrite"]),
    ("resume: --allow-changes covers only some", lambda d, mp: train(d, "--resume", "--set", "seed=1", "--set", "train.iters=8",
                                                                     "--allow-changes", "train.iters"),
     ["seed: 0 -> 1", "--allow-changes seed"]),
    ("--allow-changes without --resume", lambda d, mp: train(d, "--allow-changes", "train.iters"), ["--allow-changes applies to --resume"]),
    # 3. the way out of a work dir with best.pt but no latest.pt
    ("best.pt without latest.pt, no --resume",
     lambda d, mp: [(d / "run" / n).unlink() for n in ("latest.pt", "latest.pt.1")] and train(d),
     ["holds a run (best.pt)", "--resume (from best.pt", "--overwrite"]),
    # 4. unwritable work dirs and output folders
    ("--work-dir is a regular file", lambda d, mp: ["train", str(d / "tiny.yaml"), "--work-dir", str(d / "tiny.yaml")],
     ["--work-dir", "tiny.yaml is a file, not a folder"]),
    ("default work dir under a file", lambda d, mp: mp.chdir(d) or (d / "work_dirs").write_text("x") and ["train", "tiny.yaml"],
     ["--work-dir work_dirs/tiny: work_dirs is a file"]),
    ("read-only work dir", lambda d, mp: read_only(mp) or ["train", str(d / "tiny.yaml"), "--work-dir", str(d)],
     ["--work-dir", "cannot write there (Read-only file system)"]),
    ("--resume in a read-only work dir", lambda d, mp: read_only(mp) or train(d, "--resume"),
     ["--work-dir", "run: cannot write there (Read-only file system)"]),
    ("demo --out is a file", lambda d, mp: ["demo", "--out", str(d / "tiny.yaml"), "--iters", "1"], ["--out", "tiny.yaml is a file"]),
    ("experiment --out is a file", lambda d, mp: ["experiment", str(d / "tiny.yaml"), "--out", str(d / "tiny.yaml")],
     ["--out", "tiny.yaml is a file"]),
    # 5. YAML alias bomb, recursive alias; 9. binary config
    ("YAML alias bomb", lambda d, mp: ["train", str(alias_bomb(d / "bomb.yaml"))], ["bomb.yaml", "expands to more than 100000 values"]),
    ("recursive alias", lambda d, mp: (d / "loop.yaml").write_text("a: &a [*a]\n") and ["train", str(d / "loop.yaml")],
     ["loop.yaml", "recursive alias"]),
    ("alias bomb in --set", lambda d, mp: train(d, "--set", "model.backbone_args=" + alias_bomb(d / "b.yaml").read_text().replace("\n", ", ")
                                                .replace("a0:", "{a0:", 1).rstrip(", ") + "}"), ["--set", "expands to more than"]),
    ("binary config", lambda d, mp: (d / "weights.yaml").write_bytes(bytes(range(256)) * 4) and ["train", str(d / "weights.yaml")],
     ["weights.yaml: not a YAML text file", "not UTF-8"]),
    # 7. non-finite or out-of-range optimisation settings
    ("lr: .inf", lambda d, mp: train(d, "--set", "train.optimizer.lr=.inf"), ["train.optimizer.lr", "finite"]),
    ("lr: .nan", lambda d, mp: train(d, "--set", "train.optimizer.lr=.nan"), ["train.optimizer.lr", "finite"]),
    ("momentum 1.5", lambda d, mp: train(d, "--set", "train.optimizer.type=sgd", "--set", "train.optimizer.momentum=1.5"),
     ["train.optimizer.momentum"]),
    ("AdamW beta 1", lambda d, mp: train(d, "--set", "train.optimizer.betas=[0.9, 1.0]"),
     ["train.optimizer.betas", "[0, 1)"]),
    # 6. predict writing into its own input; 10. a 0-frame video, --crop without --mode slide, align twice
    ("predict: --out inside the input folder",
     lambda d, mp: ["predict", str(d / "run" / "latest.pt"), str(image(d / "in" / "x.png").parent), "--out", str(d / "in" / "pred")],
     ["--out", "is inside the input folder", "choose an --out outside"]),
    ("predict: a video without frames", lambda d, mp: ["predict", str(d / "run" / "latest.pt"), str(zero_frame_video(d / "empty.avi")),
                                                       "--out", str(d), "--no-progress"],
     ["empty.avi has no frames"]),
    ("predict: --crop without --mode slide",
     lambda d, mp: ["predict", str(d / "run" / "latest.pt"), str(image(d / "x.png")), "--out", str(d), "--crop", "8", "8"],
     ["crop given with mode 'whole'", "--mode slide"]),
    ("eval: --stride without --mode slide", lambda d, mp: ["eval", str(d / "tiny.yaml"), str(d / "run" / "latest.pt"), "--crop", "8", "8",
                                                          "--stride", "4", "4", "--no-progress"],
     ["eval: crop and stride given with mode 'whole'"]),
    ("align: an earlier output", lambda d, mp: ["align", aligned_once(d / "run"), "--no-progress"],
     ["latest_align holds the output of an earlier 'univseg align'", "--overwrite"]),
]


@pytest.mark.parametrize("make_args, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_exits_2_names_the_problem_and_the_way_out_and_changes_no_file(
    make_args, expected, trained, tmp_path, monkeypatch, capsys
):
    shutil.copytree(trained / "run", tmp_path / "run")
    shutil.copy(trained / "tiny.yaml", tmp_path / "tiny.yaml")
    args = make_args(tmp_path, monkeypatch)
    before = snapshot(tmp_path)
    tic = time.perf_counter()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - tic < 60
    assert "Traceback" not in err and f"univseg {args[0]}: error:" in err, err
    for text in expected:
        assert text in err, (text, err)
    assert snapshot(tmp_path) == before  # nothing written, nothing lost


def test_debug_keeps_the_traceback_of_a_refused_resume(trained, tmp_path):
    from univseg.errors import ConfigError

    shutil.copytree(trained / "run", tmp_path / "run")
    shutil.copy(trained / "tiny.yaml", tmp_path / "tiny.yaml")
    with pytest.raises(ConfigError, match="train.optimizer.lr"):
        main(["--debug", *train(tmp_path, "--resume", "--set", "train.optimizer.lr=0.01")])


def test_a_binary_class_mapping_file_is_named_not_a_traceback(tmp_path):
    from univseg.data.mapping import read_mapping_file
    from univseg.errors import ConfigError

    path = tmp_path / "city-to-rural.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(ConfigError, match=r"city-to-rural\.yaml: not a YAML text file"):
        read_mapping_file(path)
    alias_bomb(path)
    with pytest.raises(ConfigError, match=r"city-to-rural\.yaml: expands to more than"):
        read_mapping_file(path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders; "
                    "the injected EROFS cases of the table cover the message")
def test_a_read_only_work_dir_for_real(trained, tmp_path, capsys):
    shutil.copytree(trained / "run", tmp_path / "run")
    shutil.copy(trained / "tiny.yaml", tmp_path / "tiny.yaml")
    (tmp_path / "run").chmod(0o555)
    try:
        before = snapshot(tmp_path)
        assert main(train(tmp_path, "--resume", "--allow-changes", "train.iters", "--set", "train.iters=6")) == 2
        assert "run: cannot write there (Permission denied)" in capsys.readouterr().err
        assert snapshot(tmp_path) == before
    finally:
        (tmp_path / "run").chmod(0o755)
