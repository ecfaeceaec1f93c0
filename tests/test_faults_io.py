"""Faults at the edges of the file system (issue 12, parts 0 and 3): image modes, prediction output,
config variables, image/label size mismatches and symbolic links.

Each test reproduces one defect: it failed before the fix and passes now.
"""
from __future__ import annotations

import copy
import errno
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY
from PIL import Image

from univseg.cli import main
from univseg.config import load_config, validate_config
from univseg.data.base import FileSegDataset, image_to_rgb, list_files, read_image, read_label
from univseg.data.check import check_data
from univseg.data.datasets._common import find_images
from univseg.data.label_space import ClassInfo, LabelSpace
from univseg.data.synthetic import LABEL_SPACES
from univseg.engine.checkpoint import Checkpoint
from univseg.engine.predictor import as_array
from univseg.errors import ConfigError, LabelValueError, MissingLabelError, UnreadableFileError
from univseg.models.universal import build_model

GREY16 = np.array([[0, 257, 128 * 257, 65535]], dtype=np.uint16)  # 0, 1, 128, 255 after value / 257
GREY8 = np.array([[0, 1, 128, 255]], dtype=np.uint8)


def grey_rgb(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=2)


def saved(tmp_path: Path, name: str, im: Image.Image) -> Path:
    path = tmp_path / name
    im.save(path)
    return path


# ------------------------------------------------------------------------------------------ images

def test_16bit_grey_png_is_scaled_by_its_bit_depth_not_read_as_white(tmp_path):
    path = saved(tmp_path, "g16.png", Image.fromarray(GREY16))
    assert Image.open(path).mode == "I;16"
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (1, 4, 3)
    assert np.array_equal(image, grey_rgb(GREY8))  # before: [0, 1, 255, 255] (values clipped at 255)
    # datasets read images through the same reader
    ds = FileSegDataset(LabelSpace.from_names("x", ["a", "b"]), [path])
    assert np.array_equal(ds.load_image(0), grey_rgb(GREY8))


def _palette(tmp_path: Path) -> tuple[Path, np.ndarray]:
    im = Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), "L").convert("P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    im.info["transparency"] = 0
    return saved(tmp_path, "p.png", im), np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)


def _rgba(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], dtype=np.uint8)
    return saved(tmp_path, "rgba.png", Image.fromarray(rgba, "RGBA")), rgba[..., :3]


def _la(tmp_path: Path) -> tuple[Path, np.ndarray]:
    la = np.array([[[7, 0], [200, 255]]], dtype=np.uint8)
    return saved(tmp_path, "la.png", Image.fromarray(la, "LA")), grey_rgb(la[..., 0])


def _one_bit(tmp_path: Path) -> tuple[Path, np.ndarray]:
    im = Image.fromarray(np.array([[0, 255, 0]], dtype=np.uint8), "L").convert("1")
    return saved(tmp_path, "one.png", im), grey_rgb(np.array([[0, 255, 0]], dtype=np.uint8))


def _cmyk(tmp_path: Path) -> tuple[Path, np.ndarray]:
    path = saved(tmp_path, "c.tif", Image.new("CMYK", (2, 1), (0, 255, 0, 0)))
    return path, np.full((1, 2, 3), [255, 0, 255], dtype=np.uint8)


def _float(tmp_path: Path) -> tuple[Path, np.ndarray]:
    path = saved(tmp_path, "f.tif", Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)))
    return path, grey_rgb(np.array([[0, 128, 255]], dtype=np.uint8))


def _grey16_big_endian(tmp_path: Path) -> tuple[Path, np.ndarray]:
    return saved(tmp_path, "b16.tif", Image.fromarray(GREY16.astype(">u2"))), grey_rgb(GREY8)


@pytest.mark.parametrize("make", [_palette, _rgba, _la, _one_bit, _cmyk, _float, _grey16_big_endian],
                         ids=["P+palette", "RGBA", "LA", "1", "CMYK", "F", "I;16B"])
def test_every_pil_mode_with_a_brightness_scale_is_read_as_rgb(make, tmp_path):
    path, expected = make(tmp_path)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.flags.writeable
    assert np.array_equal(image, expected), (Image.open(path).mode, image)


@pytest.mark.parametrize(
    "image, message",
    [
        (Image.fromarray(np.array([[0, 70000]], dtype=np.int32)), "32-bit integer pixels"),
        (Image.fromarray(np.array([[0.0, 3.5]], dtype=np.float32)), r"floating-point pixels in \[0, 3.5\]"),
        (Image.new("HSV", (2, 2)), "pixel mode 'HSV'"),
    ],
    ids=["I 32-bit", "F outside 0..1", "HSV"],
)
def test_images_without_a_brightness_scale_are_refused_naming_the_file(image, message, tmp_path):
    path = tmp_path / "odd.tif"
    if image.mode != "HSV":
        image.save(path)
        with pytest.raises(UnreadableFileError, match=message) as e:
            read_image(path)
        assert e.value.path == str(path) and str(path) in str(e.value) and "convert it" in str(e.value)
    with pytest.raises(UnreadableFileError, match=message):
        image_to_rgb(image)


def test_predictor_reads_pil_images_of_any_mode_like_files():
    assert np.array_equal(as_array(Image.fromarray(GREY16)), grey_rgb(GREY8))


# ------------------------------------------------------------------------------------------ labels

def test_16bit_labels_keep_their_values(tmp_path):
    path = saved(tmp_path, "lab16.png", Image.fromarray(np.array([[0, 1, 300]], dtype=np.uint16)))
    assert read_label(path).tolist() == [[0, 1, 300]]  # never rescaled
    space = LabelSpace("wide", (ClassInfo("a", (0, 0, 0), (0,)), ClassInfo("b", (1, 1, 1), (1,)), ClassInfo("c", (2, 2, 2), (300,))))
    ds = FileSegDataset(space, [path], [path])
    assert ds.load_label(0).tolist() == [[0, 1, 2]]


@pytest.mark.parametrize("dtype, name", [(np.uint16, "lab16.png"), (">u2", "lab16b.tif")])
def test_16bit_label_values_outside_the_label_space_name_the_file(dtype, name, tmp_path):
    path = saved(tmp_path, name, Image.fromarray(np.array([[0, 1, 300]], dtype=dtype)))
    ds = FileSegDataset(LabelSpace.from_names("x", ["a", "b"]), [path], [path])
    # before: the big-endian TIFF was converted to 8 bits, 300 clipped to 255 and read as void
    with pytest.raises(LabelValueError, match=r"label values \[300\]") as e:
        ds.load_label(0)
    assert e.value.path == str(path) and str(path) in str(e.value)


def test_one_bit_labels_read_as_0_and_1(tmp_path):
    path = saved(tmp_path, "one.png", Image.fromarray(np.array([[0, 255]], dtype=np.uint8), "L").convert("1"))
    assert read_label(path).tolist() == [[0, 1]]  # before: 0 and 255 (void)


def test_float_labels_are_refused_naming_the_file(tmp_path):
    path = saved(tmp_path, "f.tif", Image.fromarray(np.array([[0.0, 1.0]], dtype=np.float32)))
    with pytest.raises(UnreadableFileError, match="pixel mode 'F'") as e:
        read_label(path)
    assert e.value.path == str(path)


# ------------------------------------------------------------------------------------------ predict

def tiny_checkpoint(path: Path) -> Path:
    """An untrained checkpoint of the tiny config (no training needed to test file handling)."""
    cfg = validate_config(copy.deepcopy(TINY))
    heads = {"city": LABEL_SPACES["fine"], "rural": LABEL_SPACES["coarse"]}
    model = build_model(cfg.model, {k: ls.num_classes for k, ls in heads.items()})
    Checkpoint(config=cfg.to_dict(), label_spaces=heads, model=model.state_dict()).save(path)
    return path


@pytest.fixture
def predict_setup(tmp_path) -> tuple[Path, Path]:
    ckpt = tiny_checkpoint(tmp_path / "model.pt")
    image = saved(tmp_path, "street.png", Image.fromarray(np.zeros((16, 24, 3), dtype=np.uint8)))
    return ckpt, image


def test_predict_out_naming_a_file_is_a_clear_error(predict_setup, tmp_path, capsys):
    ckpt, image = predict_setup
    (tmp_path / "out.txt").write_text("mine")
    assert main(["predict", str(ckpt), str(image), "--out", str(tmp_path / "out.txt"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--out" in err and "out.txt is a file" in err, err
    assert (tmp_path / "out.txt").read_text() == "mine"


def _full_disk_png_writer(monkeypatch) -> None:
    """PIL's PNG writer writes a few bytes, then fails as on a full disk."""

    def fail(im, fp, filename, *args, **kwargs):
        fp.write(b"\x89PNG\r\n\x1a\n half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(Image.SAVE, "PNG", fail)


def test_a_full_disk_during_predict_leaves_no_truncated_png_and_names_the_file(predict_setup, tmp_path, capsys, monkeypatch):
    ckpt, image = predict_setup
    out = tmp_path / "out"
    _full_disk_png_writer(monkeypatch)
    assert main(["predict", str(ckpt), str(image), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "No space left on device" in err
    assert f"cannot write prediction {out / 'street_city.png'}" in err, err
    assert not [p for p in out.iterdir()]  # neither a truncated PNG nor a temporary file


def test_a_failed_prediction_write_keeps_the_previous_file(predict_setup, tmp_path, capsys, monkeypatch):
    ckpt, image = predict_setup
    out = tmp_path / "out"
    assert main(["predict", str(ckpt), str(image), "--out", str(out), "--no-progress"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _full_disk_png_writer(monkeypatch)
    assert main(["predict", str(ckpt), str(image), "--out", str(out), "--no-progress"]) == 2
    assert "is intact" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# ------------------------------------------------------------------------------------------ config

def test_unset_variable_names_the_file_and_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("UNIVSEG_TEST_NO_ROOT", raising=False)
    raw = copy.deepcopy(TINY)
    raw["domains"][1]["dataset"] = {"type": "camvid", "root": "${UNIVSEG_TEST_NO_ROOT}/camvid"}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert str(path) in message and "domains[1].dataset.root" in message and e.value.key == "domains[1].dataset.root"
    assert "UNIVSEG_TEST_NO_ROOT" in message and "${UNIVSEG_TEST_NO_ROOT:-...}" in message


# ------------------------------------------------------------------------------------------ size mismatch

def test_size_mismatch_in_training_names_both_files_and_the_domain_also_from_worker_processes(tmp_path, capsys):
    from test_cli_errors import FAST, folder_domain

    cfg = folder_domain(tmp_path, label_size=(8, 8))
    assert main(["train", str(cfg), *FAST, "--set", "train.num_workers=1", "--work-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "DataLoader worker" not in err, err
    assert "domain 'mine'" in err, err
    assert str(tmp_path / "images" / "train" / "0.png") in err and str(tmp_path / "labels" / "train" / "0.png") in err


# ------------------------------------------------------------------------------------------ symbolic links

def linked_folder(root: Path) -> Path:
    """images/train with two real images, a broken link, a two-link loop and a folder link back up."""
    folder = root / "images" / "train"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png"):
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(folder / name)
    os.symlink("gone.png", folder / "broken.png")
    os.symlink("loop2.png", folder / "loop1.png")
    os.symlink("loop1.png", folder / "loop2.png")
    os.symlink("..", folder / "sub" / "up")
    return folder


def test_listing_skips_broken_and_looping_links_with_one_warning(tmp_path, capsys):
    folder = linked_folder(tmp_path)
    keep = lambda name: name.endswith(".png")  # noqa: E731
    assert list_files(folder, keep) == [folder / "a.png", folder / "sub" / "b.png"]
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and str(folder) in err and "(and 3 more)" in err, err
    assert find_images(folder, recursive=True) == [folder / "a.png", folder / "sub" / "b.png"]
    assert capsys.readouterr().err == ""  # once per folder


def test_data_check_reports_each_broken_or_looping_link(tmp_path):
    folder = linked_folder(tmp_path)
    labels = tmp_path / "labels" / "train"
    (labels / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png"):
        Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(labels / name)
    raw = copy.deepcopy(TINY)
    raw["domains"] = [{
        "name": "mine",
        "dataset": {"type": "folder", "root": str(tmp_path), "classes": ["background", "road"],
                    "splits": {"train": {"image_dir": "images/train", "label_dir": "labels/train"}}},
        "val_split": "train", "labeled": {"count": 1},
    }]
    report = check_data(load_config(data=raw), progress=False)
    links = {p.file: p for p in report.problems if p.kind == "bad_link"}
    assert set(links) == {str(folder / n) for n in ("broken.png", "loop1.png", "loop2.png", "sub/up")}
    assert "broken symbolic link to gone.png" in links[str(folder / "broken.png")].message
    assert "symbolic link loop" in links[str(folder / "loop1.png")].message
    assert "leads back to" in links[str(folder / "sub" / "up")].message
    assert all(p.severity == "warning" for p in links.values())
    assert "bad_link" in report.format()


def test_a_label_that_is_a_broken_link_says_so(tmp_path):
    from univseg.data.datasets._common import pair_labels

    image = saved(tmp_path, "x.png", Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)))
    os.symlink("nowhere.png", tmp_path / "x_label.png")
    with pytest.raises(MissingLabelError, match="is a broken symbolic link to nowhere.png"):
        pair_labels([image], lambda p: p.with_name("x_label.png"))
