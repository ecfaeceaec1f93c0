"""``univseg data check`` (check_data) and the guarantee that training never reads a broken pair silently."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from univseg.config import load_config
from univseg.data.base import DataError, FileSegDataset, SegDataset
from univseg.data.check import check_data
from univseg.data.domain import build_domain
from univseg.data.label_space import LabelSpace
from univseg.data.recipe import select_domain
from univseg.data.registry import DATASETS, DatasetParams, register_dataset
from univseg.errors import LabelValueError, MissingFileError, MissingLabelError, UnreadableFileError

DATA_ROOT = Path(os.environ.get("UNIVSEG_DATA_ROOT", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
CLASSES = ["road", "car", "sky"]
W, H = 16, 12


def _rgb(seed: int, w: int = W, h: int = H) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _label(seed: int, w: int = W, h: int = H, values=(0, 1, 2, 255)) -> np.ndarray:
    return np.random.default_rng(100 + seed).choice(np.array(values, dtype=np.uint8), size=(h, w))


def _save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def _truncated_jpeg(path: Path, seed: int) -> Path:
    _save(path, _rgb(seed, 64, 48), quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _folder_cfg(root: Path, **domain) -> dict:
    ds = {
        "type": "folder", "root": str(root), "classes": CLASSES,
        "splits": {s: {"image_dir": f"images/{s}", "label_dir": f"labels/{s}"} for s in ("train", "val")},
    }
    return {"domains": [{"name": "mine", "dataset": ds, **domain}]}


def _clean_folder(root: Path, n_train: int = 4, n_val: int = 2) -> dict[str, list[Path]]:
    labels: dict[str, list[Path]] = {"train": [], "val": []}
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            seed = i + (50 if split == "val" else 0)
            w = W + 4 * (i % 2)  # two image sizes
            _save(root / "images" / split / f"s{i}.png", _rgb(seed, w))
            labels[split].append(_save(root / "labels" / split / f"s{i}.png", _label(seed, w)))
    return labels


def _brute_force_pixels(files: list[Path]) -> dict[str, int]:
    counts = {c: 0 for c in CLASSES}
    ignore = 0
    for f in files:
        for v in np.asarray(Image.open(f)).ravel().tolist():
            if v == 255:
                ignore += 1
            else:
                counts[CLASSES[v]] += 1
    return counts | {"(ignore)": ignore}


# ---------------------------------------------------------------------------------------------
# clean data
# ---------------------------------------------------------------------------------------------


def test_clean_folder_dataset_counts_sizes_and_pixels(tmp_path):
    labels = _clean_folder(tmp_path / "data", n_train=5, n_val=3)
    cfg = load_config(data=_folder_cfg(tmp_path / "data", labeled={"count": 2}))
    report = check_data(cfg, progress=False)
    assert report.ok, report.format()
    d = report.domain("mine")
    assert [p.kind for p in d.problems if p.severity == "error"] == []
    assert d.labeled_subset == 2 and d.unlabeled_pool == 3
    train, val = d.split("train"), d.split("val")
    assert (train.images, train.labeled, train.scanned, val.images, val.scanned) == (5, 5, 5, 3, 3)
    sz = train.size_summary()
    assert sz["min"] == [W, H] and sz["max"] == [W + 4, H] and sz["most_common"] == [W, H]
    assert sz["most_common_count"] == 3 and sz["distinct"] == 2
    for split, rep in (("train", train), ("val", val)):
        got = rep.stats.to_dict(CLASSES)
        expected = _brute_force_pixels(labels[split])
        assert got["pixels"] == {c: expected[c] for c in CLASSES}
        assert got["ignore_pixels"] == expected["(ignore)"]
        assert got["labels"] == len(labels[split])
    # the labeled-subset column covers exactly the labeled images
    from univseg.data.split_tool import make_labeled_split

    chosen = [labels["train"][i] for i in make_labeled_split(cfg, "mine").labeled]
    assert d.labeled_stats.to_dict(CLASSES)["pixels"] == {c: v for c, v in _brute_force_pixels(chosen).items() if c in CLASSES}
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and data["domains"][0]["splits"][0]["classes"]["pixels"]["car"] == _brute_force_pixels(labels["train"])["car"]
    text = report.format()
    assert "Domain 'mine'" in text and "car" in text and "OK:" in text and f"{W}x{H}" in text


def test_synthetic_config_is_ok_and_max_files(tiny_raw):
    cfg = load_config(data=tiny_raw)
    report = check_data(cfg, max_files=3, progress=False)
    assert report.ok, report.format()
    for d in report.domains:
        assert [s.name for s in d.splits] == ["train", "val"]
        assert all(s.scanned == 3 and s.partial for s in d.splits)
        assert d.split("train").images == 12 and d.labeled_subset == 4 and d.unlabeled_pool == 8
        st = d.split("train").stats
        assert int(st.pixels.sum() + st.ignore_pixels) == 3 * 32 * 48
    assert "first 3 files per split" in report.format()


# ---------------------------------------------------------------------------------------------
# broken data: every problem, each naming its file
# ---------------------------------------------------------------------------------------------


def _broken_folder(root: Path) -> dict[str, Path]:
    files = {}
    _save(root / "images/train/good.png", _rgb(1))
    files["good_label"] = _save(root / "labels/train/good.png", _label(1))
    files["truncated"] = _truncated_jpeg(root / "images/train/trunc.jpg", 2)
    _save(root / "labels/train/trunc.png", _label(2, 64, 48))
    _save(root / "images/train/badval.png", _rgb(3))
    files["badval"] = _save(root / "labels/train/badval.png", _label(3, values=(0, 1, 7, 9)))
    files["mismatch_image"] = _save(root / "images/train/mismatch.png", _rgb(4))
    files["mismatch"] = _save(root / "labels/train/mismatch.png", _label(4, W + 1, H))
    files["nolabel"] = _save(root / "images/train/nolabel.png", _rgb(5))
    _save(root / "images/val/v.png", _rgb(6))
    files["truncated_label"] = root / "labels/val/v.png"
    _save(files["truncated_label"], _label(6, 200, 150))
    files["truncated_label"].write_bytes(files["truncated_label"].read_bytes()[:60])
    _save(root / "images/val/v.png", _rgb(6, 200, 150))
    return files


def test_broken_folder_dataset_reports_every_problem(tmp_path):
    files = _broken_folder(tmp_path / "data")
    cfg = load_config(data=_folder_cfg(tmp_path / "data"))
    report = check_data(cfg, progress=False)
    assert not report.ok
    probs = {p.kind: p for p in report.problems}
    assert sorted(probs) == ["label_values", "missing_label", "size_mismatch", "unreadable_image", "unreadable_label"]
    assert all(p.severity == "error" for p in report.problems) and len(report.problems) == 5
    assert probs["unreadable_image"].file == str(files["truncated"]) and "trunc.jpg" in probs["unreadable_image"].message
    assert probs["label_values"].file == str(files["badval"]) and "badval.png" in probs["label_values"].message
    lab = np.asarray(Image.open(files["badval"]))
    assert probs["label_values"].values == {7: int((lab == 7).sum()), 9: int((lab == 9).sum())}
    assert probs["size_mismatch"].file == str(files["mismatch"])
    assert "mismatch.png" in probs["size_mismatch"].message and f"{W + 1}x{H}" in probs["size_mismatch"].message
    assert probs["missing_label"].file == str(files["nolabel"]) and "nolabel.png" in probs["missing_label"].message
    assert probs["unreadable_label"].file == str(files["truncated_label"]) and probs["unreadable_label"].split == "val"
    # the good pair is still counted
    train = report.domain("mine").split("train")
    assert train.images == 5 and train.labeled == 4 and train.scanned == 5
    assert train.stats.labels == 1 and int(train.stats.pixels.sum() + train.stats.ignore_pixels) == W * H
    text = report.format()
    for name in ("trunc.jpg", "badval.png", "mismatch.png", "nolabel.png", "NOT OK", "5 error(s)"):
        assert name in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False and data["errors"] == 5
    assert {p["kind"] for p in data["domains"][0]["problems"]} == set(probs)
    assert data["domains"][0]["problems"][0]["file"]


def test_camvid_layout_missing_label_does_not_hide_other_problems(tmp_path):
    root = tmp_path / "CamVid"
    for split in ("train", "val"):
        for i in range(2):
            _save(root / split / f"0001TP_{i:06d}.png", _rgb(i))
            _save(root / f"{split}annot" / f"0001TP_{i:06d}.png", _label(i, values=(0, 3, 8, 11)))
    _save(root / "train" / "0001TP_000009.png", _rgb(9))  # no label
    _save(root / "trainannot" / "0001TP_000001.png", _label(1, values=(0, 12, 40)))  # out of space (11 = void)
    cfg = load_config(data={"domains": [{"name": "camvid", "dataset": {"type": "camvid", "root": str(root)}}]})
    with pytest.raises(DataError, match="0001TP_000009"):  # what training does
        build_domain(cfg.domains[0], 0, 0)
    report = check_data(cfg, progress=False)
    kinds = sorted((p.kind, Path(p.file).name) for p in report.errors)
    assert kinds == [("label_values", "0001TP_000001.png"), ("missing_label", "0001TP_000009.png")]
    bad = next(p for p in report.problems if p.kind == "label_values")
    assert set(bad.values) == {12, 40} and "12" in bad.message and "40" in bad.message
    assert report.domain("camvid").split("train").labeled == 2


def test_broken_label_outside_labeled_subset_is_a_warning(tmp_path):
    _clean_folder(tmp_path / "data", n_train=3)
    _save(tmp_path / "data/images/train/zbad.png", _rgb(7))
    _save(tmp_path / "data/labels/train/zbad.png", _label(7, values=(0, 5)))
    split = tmp_path / "labeled.txt"
    split.write_text("s0.png\ns1.png\n")
    report = check_data(load_config(data=_folder_cfg(tmp_path / "data", labeled={"split_file": str(split)})), progress=False)
    assert report.ok, report.format()
    (p,) = [p for p in report.problems if p.kind == "label_values"]
    assert p.severity == "warning" and p.file.endswith("zbad.png")


def test_missing_root_and_bad_split_file_reported_per_domain(tmp_path, tiny_raw):
    raw = load_config(data=tiny_raw).to_dict()
    raw["domains"].append({"name": "gone", "dataset": {"type": "camvid", "root": str(tmp_path / "nowhere")}})
    raw["domains"].append({"name": "toomany", "dataset": tiny_raw["domains"][0]["dataset"], "labeled": {"count": 99}})
    bad_list = tmp_path / "lab.txt"
    bad_list.write_text("city_train_00000\nghost.png\n")
    raw["domains"].append({"name": "ghost", "dataset": tiny_raw["domains"][0]["dataset"], "labeled": {"split_file": str(bad_list)}})
    raw["domains"].append({"name": "ghostpool", "dataset": tiny_raw["domains"][0]["dataset"],
                           "unlabeled": {"split_file": str(bad_list)}})
    report = check_data(load_config(data=raw), max_files=2, progress=False)
    assert not report.ok
    assert report.domain("city").ok and report.domain("rural").ok
    gone = report.domain("gone")
    assert [(p.kind, p.split) for p in gone.problems] == [("build", "train, val")]
    assert "nowhere" in gone.problems[0].message and gone.labeled_subset is None
    (tm,) = report.domain("toomany").problems
    assert tm.kind == "labeled_subset" and "toomany" in tm.message and "99" in tm.message
    (gh,) = report.domain("ghost").problems
    assert gh.kind == "labeled_subset" and "ghost.png" in gh.message and str(bad_list) in gh.message
    (gp,) = report.domain("ghostpool").problems
    assert gp.kind == "unlabeled_pool" and "ghost.png" in gp.message and report.domain("ghostpool").unlabeled_pool is None
    assert "Domain 'gone'" in report.format()


def test_class_absent_and_train_val_overlap_warnings(tmp_path):
    root = tmp_path / "data"
    for i in range(2):
        _save(root / "images/train" / f"s{i}.png", _rgb(i))
        _save(root / "labels/train" / f"s{i}.png", _label(i, values=(0, 255)))  # never 'car' or 'sky'
    cfg_raw = _folder_cfg(root)
    cfg_raw["domains"][0]["dataset"]["splits"]["val"] = {"image_dir": "images/train", "label_dir": "labels/train"}
    report = check_data(load_config(data=cfg_raw), progress=False)
    assert report.ok
    warns = {(p.kind, p.split) for p in report.warnings}
    assert ("class_absent", "train") in warns and ("overlap", "val") in warns
    absent = next(p for p in report.warnings if p.kind == "class_absent")
    assert "car" in absent.message and "sky" in absent.message and "road" not in absent.message


def test_label_value_error_carries_values_and_pixel_counts(tmp_path):
    space = LabelSpace.from_names("s", ["a", "b"], void_ids=(255,))
    raw = np.array([[0, 1, 7, 7], [9, 7, 255, 1]], np.uint8)
    with pytest.raises(LabelValueError) as e:
        space.encode(raw, source="lab.png")
    assert e.value.values == {7: 3, 9: 1} and e.value.path == "lab.png"
    assert str(e.value).startswith("lab.png: label values [7, 9] are outside label space 's'")
    path = _save(tmp_path / "l.png", raw)
    ds = FileSegDataset(space, [_save(tmp_path / "i.png", _rgb(0, 4, 2))], [path])
    with pytest.raises(LabelValueError) as e:
        ds.load_label(0)
    assert e.value.values == {7: 3, 9: 1} and e.value.path == str(path)


class _Broken(SegDataset):
    """Three samples whose labels fail with typed errors carrying fields the messages do not repeat."""

    label_space = LabelSpace.from_names("broken", ["a", "b"])
    has_labels = True
    errors = (
        LabelValueError("opaque 0", path="/x/l0.png", values={300: 7}),
        MissingLabelError("opaque 1", path="/x/l1.png"),
        UnreadableFileError("opaque 2", path="/x/l2.png"),
    )

    def __len__(self) -> int:
        return len(self.errors)

    def sample_id(self, i: int) -> str:
        return f"s{i}"

    def load_image(self, i: int) -> np.ndarray:
        return np.zeros((2, 2, 3), np.uint8)

    def load_label(self, i: int) -> np.ndarray:
        raise self.errors[i]


def test_check_classifies_by_error_type_and_reads_its_fields():
    register_dataset("broken_for_check", params=DatasetParams, splits=("train", "val"))(lambda params, split: _Broken())
    try:
        cfg = load_config(data={"domains": [{"name": "b", "dataset": {"type": "broken_for_check"}}]})
        report = check_data(cfg, progress=False)
    finally:
        DATASETS.unregister("broken_for_check")
    got = [(p.kind, p.file, p.values, p.message) for p in report.problems if p.split == "train"]
    assert got == [
        ("label_values", "/x/l0.png", {300: 7}, "opaque 0"),
        ("missing_label", "/x/l1.png", None, "opaque 1"),
        ("unreadable_label", "/x/l2.png", None, "opaque 2"),
    ]


def test_tolerant_recipe_collects_typed_problems(tmp_path):
    root, folder = tmp_path / "nowhere", tmp_path / "nodir"
    dcfg = load_config(data={"domains": [{"name": "gone", "dataset": {"type": "camvid", "root": str(root)},
                                          "unlabeled": {"extra_dirs": [str(folder)]}}]}).domains[0]
    sel = select_domain(dcfg, 0, 0, tolerant=True)
    assert [(p.stage, p.split, type(p.error), p.error.path) for p in sel.problems] == [
        ("split", "train", MissingFileError, str(root)),
        ("split", "val", MissingFileError, str(root)),
        ("unlabeled", f"dir:{folder}", MissingFileError, str(folder)),
    ]
    assert sel.splits == {} and sel.labeled is None and sel.pool is None
    with pytest.raises(MissingFileError, match="nowhere"):
        select_domain(dcfg, 0, 0)


# ---------------------------------------------------------------------------------------------
# training never reads a broken pair silently
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("broken", ["truncated", "badval", "mismatch"])
def test_sample_view_raises_naming_the_file(tmp_path, broken):
    root = tmp_path / "data"
    _clean_folder(root, n_train=1, n_val=1)
    if broken == "truncated":
        bad = _truncated_jpeg(root / "images/train/x.jpg", 3)
        _save(root / "labels/train/x.png", _label(3, 64, 48))
    elif broken == "badval":
        _save(root / "images/train/x.png", _rgb(3))
        bad = _save(root / "labels/train/x.png", _label(3, values=(1, 42)))
    else:
        _save(root / "images/train/x.png", _rgb(3))
        bad = _save(root / "labels/train/x.png", _label(3, W, H + 2))
    cfg = load_config(data=_folder_cfg(root))
    dom = build_domain(cfg.domains[0], 0, cfg.seed)
    ids = [dom.labeled.sample_id(i) for i in range(len(dom.labeled))]
    k = ids.index("x")
    dom.labeled[ids.index("s0")]  # the good pair loads
    with pytest.raises(DataError) as e:
        dom.labeled[(k, 1)]
    expected = bad.name if broken != "mismatch" else "'x'"
    assert expected in str(e.value)
    if broken == "badval":
        assert "42" in str(e.value)
    with pytest.raises(DataError):
        dom.centroid_view[k]


def test_missing_label_stops_domain_build(tmp_path):
    root = tmp_path / "data"
    _clean_folder(root, n_train=2, n_val=1)
    _save(root / "images/train/lonely.png", _rgb(9))
    cfg = load_config(data=_folder_cfg(root, labeled={"count": 1}))
    with pytest.raises(DataError, match=r"lonely\.png"):
        build_domain(cfg.domains[0], 0, cfg.seed)


# ---------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------


@pytest.mark.skipif(not (DATA_ROOT / "camvid").is_dir(), reason=f"real data not found at {DATA_ROOT} (set UNIVSEG_DATA_ROOT)")
def test_real_camvid_and_idd_lite(tmp_path):
    domains = [{"name": "camvid", "dataset": {"type": "camvid", "root": str(DATA_ROOT / "camvid")}, "labeled": {"count": 20}}]
    if (DATA_ROOT / "idd_lite").is_dir():
        domains.append({"name": "idd", "dataset": {"type": "idd_lite", "root": str(DATA_ROOT / "idd_lite")},
                        "unlabeled": {"extra_splits": ["test"]}})
    report = check_data(load_config(data={"domains": domains}), max_files=4, progress=False)
    assert report.ok, report.format()
    cam = report.domain("camvid")
    assert (cam.split("train").images, cam.split("val").images) == (367, 101)
    assert cam.labeled_subset == 20 and cam.unlabeled_pool == 347
    train = cam.split("train")
    assert train.scanned == 4 and train.size_summary()["most_common"] == [480, 360]
    assert int(train.stats.pixels.sum() + train.stats.ignore_pixels) == 4 * 480 * 360
    assert train.stats.pixels[0] > 0  # sky
    if len(domains) == 2:
        idd = report.domain("idd")
        assert idd.split("test").images == 404 and idd.split("test").labels_checked is False
        assert idd.unlabeled_pool == 404 and idd.labeled_subset == 1403


@pytest.mark.parametrize("workers", [0, 1])
def test_training_stops_on_a_corrupt_labeled_image_naming_it(tmp_path, capsys, workers):
    """`univseg train` on a folder dataset whose labeled image is truncated: exit 2, the file is named."""
    import yaml

    from univseg.cli import main

    _clean_folder(tmp_path)
    bad = _truncated_jpeg(tmp_path / "images" / "train" / "s1.jpg", 1)
    (tmp_path / "images" / "train" / "s1.png").unlink()
    raw = _folder_cfg(tmp_path, batch_size=4, train_transforms=[{"type": "random_crop", "size": [8, 8]}])
    raw.update({
        "model": {"backbone": "erfnet", "backbone_args": {"width": 0.25}, "embed_dim": 4},
        "method": {"name": "joint"},
        "train": {"iters": 2, "num_workers": workers, "amp": "none"},
    })
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", str(cfg), "--work-dir", str(tmp_path / "work"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "corrupt or truncated" in err
    assert not (tmp_path / "work" / "latest.pt").exists()
