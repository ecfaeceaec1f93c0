"""Every bad user input through the CLI: exit 2, a message naming the file or key, no traceback.

Each case builds its bad input in a fresh folder and says which verb to run and what the
message must contain. A failure that escapes as another exception type (a traceback for the
user) fails the test, because ``main`` only turns ``UnivsegError`` into exit 2.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY
from PIL import Image

from univseg.cli import main
from univseg.errors import UnivsegError

FAST = ["--set", "train.iters=1", "--set", "train.eval_interval=0", "--no-progress"]


def write_config(folder: Path, raw: dict, name: str = "cfg.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def tiny(folder: Path, **changes) -> Path:
    """The tiny synthetic config with top-level sections replaced."""
    raw = copy.deepcopy(TINY)
    raw.update(changes)
    return write_config(folder, raw)


def folder_domain(folder: Path, image_size=(16, 24), label_size=None, label_value=1, corrupt_image=False) -> Path:
    """A 'folder' dataset config with 2 train and 1 val image whose first train sample is bad as asked."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 1)):
        (folder / "images" / split).mkdir(parents=True)
        (folder / "labels" / split).mkdir(parents=True)
        for i in range(n):
            first = split == "train" and i == 0
            img = folder / "images" / split / f"{i}.png"
            if first and corrupt_image:
                img.write_bytes(b"\x89PNG\r\n\x1a\n broken")
            else:
                Image.fromarray(rng.integers(0, 255, (*image_size, 3), dtype=np.uint8)).save(img)
            size = label_size if first and label_size else image_size
            value = label_value if first else 1
            Image.fromarray(np.full(size, value, dtype=np.uint8)).save(folder / "labels" / split / f"{i}.png")
    raw = copy.deepcopy(TINY)
    raw["domains"] = [{
        "name": "mine",
        "dataset": {
            "type": "folder", "root": str(folder), "classes": ["background", "road"],
            "splits": {s: {"image_dir": f"images/{s}", "label_dir": f"labels/{s}"} for s in ("train", "val")},
        },
        "batch_size": 2, "unlabeled_batch_size": 0,
    }]
    raw["method"] = {"name": "joint"}
    return write_config(folder, raw)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real checkpoint of the tiny config (2 iterations)."""
    work = tmp_path_factory.mktemp("ckpt")
    cfg = tiny(work)
    assert main(["train", str(cfg), "--work-dir", str(work / "run"), "--set", "train.iters=2", "--no-progress"]) == 0
    return work / "run" / "latest.pt"


def _garbage(path: Path) -> Path:
    path.write_bytes(b"not a checkpoint at all")
    return path


def _future(path: Path, ckpt: Path) -> Path:
    raw = torch.load(ckpt, weights_only=True)
    torch.save({**raw, "format_version": 99}, path)
    return path


def _mismatched_weights(path: Path, ckpt: Path) -> Path:
    raw = torch.load(ckpt, weights_only=True)
    raw["model"] = {k: v for k, v in raw["model"].items() if not k.startswith("heads.rural.")}
    torch.save(raw, path)
    return path


def _bad_image(path: Path) -> Path:
    path.write_bytes(b"\xff\xd8\xff garbage")
    return path


def _truncated(path: Path, ckpt: Path) -> Path:
    data = ckpt.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _a_file(path: Path) -> Path:
    path.write_text("not a folder")
    return path


# (id, verb arguments built from (tmp folder, checkpoint), text the message must contain)
Case = tuple[str, Callable[[Path, Path], list[str]], str]
CASES: list[Case] = [
    ("config file missing", lambda d, c: ["train", str(d / "nope.yaml")], "nope.yaml"),
    ("invalid YAML", lambda d, c: ["train", str((d / "bad.yaml").write_text("a: [1, 2") and d / "bad.yaml")], "bad.yaml"),
    ("typo in a key", lambda d, c: ["train", str(tiny(d)), "--set", "train.iter=3"], "train.iter: unknown key. Did you mean 'iters'?"),
    ("wrong type", lambda d, c: ["train", str(tiny(d)), "--set", "train.iters=many"], "train.iters"),
    ("override without =", lambda d, c: ["train", str(tiny(d)), "--set", "train.iters"], "train.iters"),
    ("override index out of range", lambda d, c: ["train", str(tiny(d)), "--set", "domains.7.batch_size=1"], "domains.7"),
    ("unknown dataset type", lambda d, c: ["train", str(tiny(d)), "--set", "domains.city.dataset.type=cityscape"], "domains[0].dataset.type"),
    ("unknown dataset key", lambda d, c: ["train", str(tiny(d)), "--set", "domains.city.dataset.stlye=city"], "domains[0].dataset.stlye"),
    ("unknown method", lambda d, c: ["train", str(tiny(d)), "--set", "method.name=univ-ful"], "method.name"),
    ("unknown transform", lambda d, c: ["train", str(tiny(d)), "--set", "domains.city.train_transforms=[{type: flip}]"], "train_transforms"),
    ("single with two domains", lambda d, c: ["train", str(tiny(d)), "--set", "method.name=single", *FAST], "method.domains"),
    ("unset environment variable", lambda d, c: ["train", str(tiny(d)), "--set", "name=${UNIVSEG_TEST_UNSET_VAR}"], "UNIVSEG_TEST_UNSET_VAR"),
    ("missing dataset root", lambda d, c: ["train", str(tiny(d)), "--set", "domains.city.dataset={type: camvid, root: " + str(d / "no_camvid") + "}", *FAST], "no_camvid"),
    ("corrupt labeled image", lambda d, c: ["train", str(folder_domain(d, corrupt_image=True)), *FAST], "0.png"),
    ("label value outside the label space", lambda d, c: ["train", str(folder_domain(d, label_value=7)), *FAST], "0.png"),
    ("image/label size mismatch", lambda d, c: ["train", str(folder_domain(d, label_size=(8, 8))), *FAST], "0.png"),
    ("more labeled images than the split has", lambda d, c: ["train", str(tiny(d)), "--set", "domains.city.labeled.count=500", *FAST], "city"),
    ("resume without a checkpoint", lambda d, c: ["train", str(tiny(d)), "--work-dir", str(d / "empty"), "--resume", *FAST], "latest.pt"),
    ("resume an incompatible checkpoint", lambda d, c: ["train", str(tiny(d)), "--work-dir", str(c.parent), "--resume", "--set", "model.embed_dim=5", *FAST], "model.embed_dim"),
    ("unknown backbone option", lambda d, c: ["train", str(tiny(d)), "--set", "model.backbone_args={widht: 0.5}", *FAST], "model.backbone_args"),
    ("pretrained weights file missing", lambda d, c: ["train", str(tiny(d)), "--set", f"model.pretrained={d / 'w.pth'}", *FAST], "w.pth"),
    ("device without CUDA", lambda d, c: ["train", str(tiny(d)), "--device", "cuda:0", *FAST], "train.device"),
    ("unknown device", lambda d, c: ["train", str(tiny(d)), "--device", "tpu", *FAST], "train.device"),
    ("eval: checkpoint missing", lambda d, c: ["eval", str(tiny(d)), str(d / "missing.pt")], "missing.pt"),
    ("eval: checkpoint is a folder", lambda d, c: ["eval", str(tiny(d)), str(d)], "is a folder"),
    ("eval: not a checkpoint", lambda d, c: ["eval", str(tiny(d)), str(_garbage(d / "garbage.pt"))], "garbage.pt"),
    ("eval: newer checkpoint format", lambda d, c: ["eval", str(tiny(d)), str(_future(d / "future.pt", c))], "future.pt"),
    ("eval: weights that do not fit", lambda d, c: ["eval", str(tiny(d)), str(_mismatched_weights(d / "cut.pt", c))], "cut.pt"),
    ("eval: head classes differ from the domain's", lambda d, c: ["eval", str(tiny(d)), str(c), "--set", "domains.rural.dataset.taxonomy=fine"], "head 'rural'"),
    ("eval: unknown domain", lambda d, c: ["eval", str(tiny(d)), str(c), "--domains", "moon"], "--domains"),
    ("eval: truncated checkpoint", lambda d, c: ["eval", str(tiny(d)), str(_truncated(d / "half.pt", c))], "half.pt: it is not a univseg checkpoint, or it is damaged (it is truncated"),
    ("eval: no head fits any domain", lambda d, c: ["eval", str(folder_domain(d)), str(c)], "fits any domain of the config"),
    ("predict: --out is a file", lambda d, c: ["predict", str(c), str(d / "ok.png"), "--out", str(_a_file(d / "out.txt"))], "out.txt is a file"),
    ("predict: input missing", lambda d, c: ["predict", str(c), str(d / "no.png"), "--out", str(d / "out")], "no.png"),
    ("predict: corrupt image", lambda d, c: ["predict", str(c), str(_bad_image(d / "bad.jpg")), "--out", str(d / "out")], "bad.jpg"),
    ("predict: unknown label space", lambda d, c: ["predict", str(c), str(d / "ok.png"), "--out", str(d / "out"), "--label-space", "moon"], "moon"),
    ("experiment: unknown method key", lambda d, c: ["experiment", str(tiny(d)), "--methods", "bogus", "--out", str(d / "exp")], "bogus"),
    ("split: unknown domain", lambda d, c: ["split", str(tiny(d)), "--out", str(d / "s"), "--domains", "moon"], "moon"),
    ("data download: no root", lambda d, c: ["data", "download", "camvid"], "--root"),
]


@pytest.mark.parametrize("make_args, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_a_message_and_no_traceback(make_args, expected, tmp_path, checkpoint, capsys):
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "ok.png")  # an input for 'predict'
    args = make_args(tmp_path, checkpoint)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"univseg {args[0] if args[0] != 'data' else 'data download'}: error:" in err
    assert expected in err, err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(UnivsegError, match="nope.yaml"):
        main(["--debug", "train", str(tmp_path / "nope.yaml")])

