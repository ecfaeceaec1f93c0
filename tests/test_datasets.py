"""Dataset adapters, driven by the registry: every adapter gets a tiny fixture in its exact native layout.

``CASES`` is the per-adapter fixture table. A case lists, per split, the image and label files
(relative to the dataset root) and the expected raw value -> train id table; the generic writer
puts a uniform image whose colour encodes a sample code at each image path, and a label whose
pattern depends on that code at each label path, so a mis-pairing is detected. Tables of
expected values are written out here independently of the adapters' own tables.

A new adapter must get a case (``test_every_adapter_has_a_fixture``); then it gets every check.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

import univseg.data.datasets  # noqa: F401  (registers the adapters)
from univseg.data.base import DataError
from univseg.data.datasets._mappings import mapping_files
from univseg.data.label_space import LABEL_SPACES
from univseg.data.mapping import ClassMapping, builtin_mapping_names, read_mapping_file
from univseg.data.registry import DATASETS, build_dataset

H, W = 12, 16  # 192 pixels: room for every raw value of the largest label table (ADE20K: 151)
VOID = 255

# ---------------------------------------------------------------------------------------------
# independent expected tables
# ---------------------------------------------------------------------------------------------

# Cityscapes label id -> train id (cityscapesscripts/helpers/labels.py); every other id is void.
CS_ID_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CS_LABEL_IDS = {i: CS_ID_TO_TRAIN.get(i, VOID) for i in range(34)} | {255: VOID}  # all 34 ids + -1 (255)
CS_TRAIN_IDS = {i: i for i in range(19)} | {255: VOID}

# CamVid 32-class colours (label_colors.txt) -> 11-class train id (Sky 0, Building 1, Pole 2, Road 3,
# Pavement 4, Tree 5, SignSymbol 6, Fence 7, Car 8, Pedestrian 9, Bicyclist 10).
CAMVID32_COLORS = {
    (64, 128, 64): 9, (192, 0, 128): 1, (0, 128, 192): 10, (0, 128, 64): 1, (128, 0, 0): 1,
    (64, 0, 128): 8, (64, 0, 192): 9, (192, 128, 64): 9, (192, 192, 128): 2, (64, 64, 128): 7,
    (128, 0, 192): 3, (192, 0, 64): 3, (128, 128, 64): 6, (192, 0, 192): 10, (128, 64, 64): 8,
    (64, 192, 128): 4, (64, 64, 0): 9, (128, 64, 128): 3, (128, 128, 192): 4, (0, 0, 192): 4,
    (192, 128, 128): 6, (128, 128, 128): 0, (64, 128, 192): 8, (0, 0, 64): 2, (0, 64, 64): 6,
    (192, 64, 128): 8, (128, 128, 0): 5, (192, 128, 192): 8, (64, 0, 64): 1, (192, 192, 0): 5,
    (0, 0, 0): VOID, (64, 192, 0): 1,
}  # fmt: skip

# IDD level-3 id -> level-1 id (anue_labels.py): drivable 0, non-drivable 1, living things 2,
# vehicles 3, road side objects 4, far objects 5, sky 6.
IDD_L3_TO_L1 = {0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 2} | {i: 3 for i in range(6, 13)} | {
    i: 4 for i in range(13, 22)
} | {22: 5, 23: 5, 24: 5, 25: 6, 255: VOID}


def identity(n: int, void: int = 255) -> dict[int, int]:
    return {i: i for i in range(n)} | {void: VOID}


def offset(n: int) -> dict[int, int]:
    """0 = void, k = class k-1."""
    return {0: VOID} | {k: k - 1 for k in range(1, n + 1)}


# ---------------------------------------------------------------------------------------------
# fixture table
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    """A tiny dataset in an adapter's native layout.

    Attributes:
        adapter: registered dataset name.
        space: expected label space name.
        splits: split -> [(image path, label path or None)], paths relative to the root.
        raw_to_train: every raw label value (int, or RGB tuple for colour labels) -> expected train id.
        bad_raw: a raw value outside the label space.
        missing: (split, path relative to root) whose removal must fail that split naming the path.
        params: adapter params besides ``root``.
        label_mode: PIL mode of written labels ("L", "P", "RGB").
        extra: writes anything else the layout needs (list files, distractors): extra(root, case).
    """

    adapter: str
    space: str
    splits: dict[str, list[tuple[str, str | None]]]
    raw_to_train: dict
    bad_raw: object
    missing: tuple[str, str]
    params: dict = field(default_factory=dict)
    label_mode: str = "L"
    extra: Callable[[Path, "Case"], None] | None = None


def _cs_files(label_suffix: str) -> dict[str, list[tuple[str, str | None]]]:
    def s(split, city, fid, labeled=True):
        img = f"leftImg8bit/{split}/{city}/{city}_{fid}_leftImg8bit.png"
        return img, (f"gtFine/{split}/{city}/{city}_{fid}_gtFine_{label_suffix}.png" if labeled else None)

    return {
        "train": [s("train", "aachen", "000000_000019"), s("train", "aachen", "000001_000019"), s("train", "bochum", "000000_000313")],
        "val": [s("val", "frankfurt", "000000_000294")],
        "test": [s("test", "berlin", "000000_000019", False)],
        "train_extra": [s("train_extra", "augsburg", "000000_000000", False)],
    }


def _cs_distractors(root: Path, case: Case) -> None:
    """Files of the official gtFine package that are not labels for training."""
    for p in list((root / "gtFine").rglob("*_gtFine_label*Ids.png")):
        stem = p.name.split("_gtFine_")[0]
        Image.new("RGB", (W, H), (1, 2, 3)).save(p.parent / f"{stem}_gtFine_color.png")
        Image.new("I;16", (W, H)).save(p.parent / f"{stem}_gtFine_instanceIds.png")
        (p.parent / f"{stem}_gtFine_polygons.json").write_text("{}")


def _cs_train_ids_extra(root: Path, case: Case) -> None:
    """Official labelIds next to the trainIds, all 'unlabeled' (0): the trainIds must win."""
    for p in list((root / "gtFine").rglob("*_gtFine_labelTrainIds.png")):
        Image.fromarray(np.zeros((H, W), np.uint8)).save(str(p).replace("labelTrainIds", "labelIds"))


def _idd_files(label_suffix: str, image_tail="_leftImg8bit.png") -> dict[str, list[tuple[str, str | None]]]:
    def s(split, seq, fid, labeled=True):
        return f"leftImg8bit/{split}/{seq}/{fid}{image_tail}", (f"gtFine/{split}/{seq}/{fid}{label_suffix}" if labeled else None)

    return {
        "train": [s("train", "0", "005506"), s("train", "0", "005507"), s("train", "12", "000123")],
        "val": [s("val", "119", "903127"), s("val", "120", "000001")],
        "test": [s("test", "103", "206393", False)],
    }


def _idd_polygons(root: Path, case: Case) -> None:
    for p in list((root / "gtFine").rglob("*.png")):
        (p.parent / (p.name.split("_gtFine_")[0] + "_gtFine_polygons.json")).write_text("{}")


def _sun_lists(root: Path, case: Case) -> None:
    (root / "lists").mkdir()
    for split, samples in case.splits.items():
        (root / "lists" / f"{split}.txt").write_text("".join(f"{i} {lab}\n" for i, lab in samples))


def _voc_lists(root: Path, case: Case) -> None:
    d = root / "ImageSets" / "Segmentation"
    d.mkdir(parents=True)
    for split, samples in case.splits.items():
        if split == "train_aug":  # DeepLab-style two-column list with leading slashes
            (d / "train_aug.txt").write_text("".join(f"/{i} /{lab}\n" for i, lab in samples))
        else:
            (d / f"{split}.txt").write_text("".join(Path(i).stem + "\n" for i, _ in samples))


def _voc(split_ids: dict[str, list[str]]) -> dict[str, list[tuple[str, str | None]]]:
    return {
        split: [
            (f"JPEGImages/{i}.jpg", f"{'SegmentationClassAug' if split == 'train_aug' else 'SegmentationClass'}/{i}.png")
            for i in ids
        ]
        for split, ids in split_ids.items()
    }


def _flat(split_dirs: dict[str, tuple[str, str | None]], names: dict[str, list[str]], img_ext=".jpg", lab_ext=".png"):
    return {
        split: [(f"{d}/{n}{img_ext}", f"{ld}/{n}{lab_ext}" if ld else None) for n in names[split]]
        for split, (d, ld) in split_dirs.items()
    }


CASES: dict[str, Case] = {
    "cityscapes": Case(
        "cityscapes", "cityscapes", _cs_files("labelIds"), CS_LABEL_IDS, 34,
        ("val", "leftImg8bit/val"), extra=_cs_distractors,
    ),
    "cityscapes[trainIds]": Case(
        "cityscapes", "cityscapes", _cs_files("labelTrainIds"), CS_TRAIN_IDS, 19,
        ("train", "gtFine/train"), extra=_cs_train_ids_extra,
    ),
    "kitti": Case(
        "kitti", "cityscapes",
        {
            "train": [(f"training/image_2/{i:06d}_10.png", f"training/semantic/{i:06d}_10.png") for i in (0, 1, 7)],
            "test": [("testing/image_2/000000_10.png", None)],
        },
        CS_LABEL_IDS, 34, ("train", "training/semantic"),
    ),
    "bdd100k": Case(
        "bdd100k", "cityscapes",
        _flat(
            {"train": ("images/10k/train", "labels/sem_seg/masks/train"), "val": ("images/10k/val", "labels/sem_seg/masks/val"),
             "test": ("images/10k/test", None)},
            {"train": ["0004a4c0-d4dff0ad", "00054602-3bf57337"], "val": ["7d06fefd-f7be05a6"], "test": ["ac517380-00000000"]},
        ),
        CS_TRAIN_IDS, 19, ("val", "labels/sem_seg/masks/val"),
    ),
    "camvid": Case(
        "camvid", "camvid",
        {
            "train": [("train/0001TP_006690.png", "trainannot/0001TP_006690.png"), ("train/0001TP_006720.jpg", "trainannot/0001TP_006720.png")],
            "val": [("val/0016E5_07959.png", "valannot/0016E5_07959.png")],
            "test": [("test/Seq05VD_f00000.png", "testannot/Seq05VD_f00000.png")],
        },
        identity(11, void=11), 12, ("train", "trainannot"),
    ),
    "camvid32": Case(
        "camvid32", "camvid",
        {"all": [(f"701_StillsRaw_full/0001TP_00{n}.png", f"LabeledApproved_full/0001TP_00{n}_L.png") for n in ("6690", "6720", "8550")]},
        CAMVID32_COLORS, (1, 2, 3), ("all", "LabeledApproved_full"), label_mode="RGB",
    ),
    "idd": Case(
        "idd", "idd_level3", _idd_files("_gtFine_labellevel3Ids.png"), identity(26), 26, ("val", "gtFine/val"),
        extra=_idd_polygons,
    ),
    "idd[level1 from level3]": Case(
        "idd", "idd_level1", _idd_files("_gtFine_labellevel3Ids.png"), IDD_L3_TO_L1, 26, ("train", "leftImg8bit/train"),
        params={"level": 1},
    ),
    "idd[level1 files]": Case(
        "idd", "idd_level1", _idd_files("_gtFine_labellevel1Ids.png"), identity(7), 7, ("train", "gtFine/train"),
        params={"level": 1},
    ),
    "idd_lite": Case(
        "idd_lite", "idd_level1", _idd_files("_label.png", image_tail="_image.jpg"), identity(7), 7,
        ("val", "leftImg8bit/val"),
    ),
    "sunrgbd": Case(
        "sunrgbd", "sunrgbd",
        _flat({"train": ("train/image", "train/label"), "test": ("test/image", "test/label")},
              {"train": ["img-000001", "img-000002"], "test": ["img-005051"]}),
        offset(37), 38, ("test", "test/label"),
    ),
    "sunrgbd[lists]": Case(
        "sunrgbd", "sunrgbd",
        _flat({"train": ("image/train", "label/train"), "test": ("image/test", "label/test")},
              {"train": ["000001", "000002", "000003"], "test": ["005051"]}),
        offset(37), 38, ("train", "lists/train.txt"), params={"list_dir": "lists"}, extra=_sun_lists,
    ),
    "nyuv2": Case(
        "nyuv2", "nyuv2_40",
        _flat({"train": ("image/train", "label40/train"), "test": ("image/test", "label40/test")},
              {"train": ["0003", "0004"], "test": ["0001"]}, img_ext=".png"),
        offset(40), 41, ("train", "label40/train"),
    ),
    "nyuv2[13]": Case(
        "nyuv2", "nyuv2_13",
        _flat({"train": ("image/train", "label13/train"), "test": ("image/test", "label13/test")},
              {"train": ["0003", "0004"], "test": ["0001"]}, img_ext=".png"),
        offset(13), 14, ("test", "image/test"), params={"classes": 13},
    ),
    "mapillary": Case(
        "mapillary", "mapillary_v1.2",
        _flat(
            {"train": ("training/images", "training/v1.2/labels"), "val": ("validation/images", "validation/labels"),
             "test": ("testing/images", None)},
            {"train": ["--0ABC", "-0xyz1"], "val": ["_1abcd"], "test": ["zz9"]},
        ),
        identity(65, void=65), 66, ("val", "validation/labels"), label_mode="P",
    ),
    "ade20k": Case(
        "ade20k", "ade20k",
        _flat({"train": ("images/training", "annotations/training"), "val": ("images/validation", "annotations/validation")},
              {"train": ["ADE_train_00000001", "ADE_train_00000002"], "val": ["ADE_val_00000001"]}),
        offset(150), 151, ("val", "annotations/validation"),
    ),
    "pascal_voc": Case(
        "pascal_voc", "pascal_voc",
        _voc({"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"],
              "trainval": ["2007_000032", "2007_000033", "2007_000039"], "train_aug": ["2007_000032", "2008_000002"]}),
        identity(21), 21, ("val", "ImageSets/Segmentation/val.txt"), label_mode="P", extra=_voc_lists,
    ),
    "folder": Case(
        "folder", "mine",
        {
            "train": [("data/train/images/seq1/a_img.jpg", "data/train/labels/seq1/a_lbl.png"),
                      ("data/train/images/seq1/b_img.png", "data/train/labels/seq1/b_lbl.png"),
                      ("data/train/images/seq2/a_img.jpg", "data/train/labels/seq2/a_lbl.png")],
            "val": [("data/val/images/c_img.jpg", "data/val/labels/c_lbl.png")],
            "test": [("data/test/d_img.jpg", None)],
        },
        {10: 0, 20: 1, 30: 2, 31: 2, 0: VOID, 99: VOID, 255: VOID}, 40, ("train", "data/train/images"),
        params={
            "name": "mine", "classes": ["a", "b", "c"], "value_map": {10: 0, 20: 1, 30: 2, 31: 2, 99: 255},
            "void_values": [0, 255], "image_suffixes": ["_img.jpg", "_img.png"], "label_suffix": "_lbl.png",
            "splits": {"train": {"image_dir": "data/train/images", "label_dir": "data/train/labels"},
                       "val": {"image_dir": "data/val/images", "label_dir": "data/val/labels"},
                       "test": {"image_dir": "data/test"}},
        },
    ),
}  # fmt: skip

# ---------------------------------------------------------------------------------------------
# the generic writer
# ---------------------------------------------------------------------------------------------


def image_color(code: int) -> tuple[int, int, int]:
    return (20 * code + 10, 100, 50)


def decode_code(image: np.ndarray) -> int:
    """The sample code of a written image (robust to JPEG rounding)."""
    return int(round((float(image[..., 0].mean()) - 10) / 20))


def raw_pattern(case: Case, code: int) -> list:
    """The raw value of every pixel (row-major) of the label of sample ``code``: all raw values, rotated by ``code``."""
    values = sorted(case.raw_to_train)
    return [values[(j + code) % len(values)] for j in range(H * W)]


def write_label(path: Path, raw: list, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        Image.fromarray(np.array(raw, np.uint8).reshape(H, W, 3), "RGB").save(path)
    else:
        im = Image.fromarray(np.array(raw, np.uint8).reshape(H, W))
        if mode == "P":  # putpalette turns the L image into a P image with the same indices
            im.putpalette([v for i in range(256) for v in ((i * 7) % 256, (i * 13) % 256, (i * 29) % 256)])
        im.save(path)


@dataclass
class Written:
    root: Path
    case: Case
    code: dict[str, int]  # image path (relative) -> sample code

    def expected(self, code: int) -> np.ndarray:
        return np.array([self.case.raw_to_train[v] for v in raw_pattern(self.case, code)], np.uint8).reshape(H, W)

    def params(self, **override):
        return DATASETS.get(self.case.adapter).params(**({"root": self.root} | self.case.params | override))

    def build(self, split: str, **override):
        return build_dataset(self.case.adapter, self.params(**override), split)


def write_case(root: Path, case: Case) -> Written:
    code: dict[str, int] = {}
    for samples in case.splits.values():
        for img, _ in samples:
            code.setdefault(img, len(code))
    for split in case.splits:  # written in reverse order, so directory order is not sorted order
        for img, lab in reversed(case.splits[split]):
            p = root / img
            if not p.exists():
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (W, H), image_color(code[img])).save(p, quality=95)
            if lab is not None:
                write_label(root / lab, raw_pattern(case, code[img]), case.label_mode)
    if case.extra is not None:
        case.extra(root, case)
    return Written(root, case, code)


@pytest.fixture(params=sorted(CASES), ids=str)
def written(request, tmp_path) -> Written:
    return write_case(tmp_path / "ds", CASES[request.param])


def labeled_splits(case: Case) -> list[str]:
    return [s for s, samples in case.splits.items() if samples[0][1] is not None]


# ---------------------------------------------------------------------------------------------
# generic checks, for every case
# ---------------------------------------------------------------------------------------------


def our_adapters() -> list[str]:
    return [n for n in DATASETS.names() if DATASETS.get(n).build.__module__.startswith("univseg.data.datasets.")]


def test_every_adapter_has_a_fixture():
    covered = {c.adapter for c in CASES.values()}
    missing = sorted(set(our_adapters()) - covered)
    assert not missing, f"adapters without a fixture in CASES: {missing}"
    assert {"cityscapes", "camvid", "camvid32", "idd", "idd_lite", "sunrgbd", "nyuv2", "kitti", "mapillary",
            "bdd100k", "ade20k", "pascal_voc", "folder"} <= set(our_adapters())  # fmt: skip


def test_every_case_covers_all_splits_and_void():
    for name, case in CASES.items():
        assert set(case.splits) == set(DATASETS.get(case.adapter).splits), name
        assert VOID in case.raw_to_train.values(), f"{name}: fixture exercises no void value"
        assert len(case.raw_to_train) <= H * W, name


def test_counts_pairing_and_mapping(written: Written):
    case = written.case
    for split, samples in case.splits.items():
        ds = written.build(split)
        assert len(ds) == len(samples), split
        assert ds.label_space.name == case.space
        assert ds.has_labels == (samples[0][1] is not None), split
        ids = [ds.sample_id(i) for i in range(len(ds))]
        assert len(set(ids)) == len(ids), f"sample ids not unique: {ids}"
        assert all("/" not in s for s in ids)
        # order: sorted image paths (list files of the fixtures are written sorted)
        want_codes = [written.code[img] for img, _ in sorted(samples)]
        got_codes = []
        labels = []
        for i in range(len(ds)):
            image, label = ds.load_pair(i)
            assert image.shape == (H, W, 3) and image.dtype == np.uint8
            code = decode_code(image)
            got_codes.append(code)
            if ds.has_labels:
                assert label.dtype == np.uint8 and label.shape == (H, W)
                np.testing.assert_array_equal(label, written.expected(code), err_msg=f"{split} sample {ids[i]}")
                labels.append(label.tobytes())
            else:
                assert label is None and ds.load_label(i) is None
        assert got_codes == want_codes, f"{split}: order or pairing wrong"
        assert len(set(labels)) == len(labels), "fixture too weak: two samples of a split share a label"
        # deterministic
        assert [ds.sample_id(i) for i in range(len(ds))] == [written.build(split).sample_id(i) for i in range(len(ds))]


def test_every_raw_value_is_exercised(written: Written):
    """All raw values of the table appear in the fixture's labels (e.g. all 34 Cityscapes ids)."""
    seen = set()
    for split in labeled_splits(written.case):
        for img, _ in written.case.splits[split]:
            seen |= set(raw_pattern(written.case, written.code[img]))
    assert seen == set(written.case.raw_to_train)


def test_image_without_label_is_an_error(written: Written):
    split = labeled_splits(written.case)[0]
    img, lab = written.case.splits[split][-1]
    (written.root / lab).unlink()
    with pytest.raises(DataError) as e:
        written.build(split)
    assert str(written.root / img) in str(e.value)
    assert str(written.root / lab) in str(e.value)


def test_label_value_outside_space_is_an_error_naming_the_file(written: Written):
    case = written.case
    split = labeled_splits(case)[0]
    img, lab = case.splits[split][0]
    raw = raw_pattern(case, written.code[img])
    raw[5] = case.bad_raw
    write_label(written.root / lab, raw, case.label_mode)
    ds = written.build(split)
    i = next(i for i in range(len(ds)) if decode_code(ds.load_image(i)) == written.code[img])
    with pytest.raises(DataError) as e:
        ds.load_label(i)
    assert str(written.root / lab) in str(e.value)
    with pytest.raises(DataError):
        ds.load_pair(i)


def test_missing_root_is_an_error_naming_it(written: Written, tmp_path):
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(DataError) as e:
        written.build(next(iter(written.case.splits)), root=missing)
    assert str(missing) in str(e.value)
    assert "expected" in str(e.value) or "configured" in str(e.value)


def test_missing_split_folder_is_an_error_naming_it(written: Written):
    split, rel = written.case.missing
    path = written.root / rel
    assert path.exists(), "fixture names a path it did not write"
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(DataError) as e:
        written.build(split)
    assert str(path) in str(e.value)
    assert "expected layout" in str(e.value)


def test_unknown_param_is_rejected(written: Written):
    with pytest.raises(ValidationError):
        written.params(no_such_option=1)
    with pytest.raises(ValidationError):
        DATASETS.get(written.case.adapter).params(**written.case.params)  # root is required


# ---------------------------------------------------------------------------------------------
# adapter-specific checks
# ---------------------------------------------------------------------------------------------


def test_cityscapes_official_table_covers_all_ids():
    assert set(range(34)) <= set(CS_LABEL_IDS)
    space = LABEL_SPACES.get("cityscapes")
    raw = np.array(sorted(CS_LABEL_IDS), np.uint8)
    np.testing.assert_array_equal(space.encode(raw), [CS_LABEL_IDS[v] for v in sorted(CS_LABEL_IDS)])
    assert space.names[:3] == ["road", "sidewalk", "building"] and space.num_classes == 19


def test_cityscapes_family_shares_one_label_space(tmp_path):
    a = write_case(tmp_path / "a", CASES["cityscapes"]).build("train")
    b = write_case(tmp_path / "b", CASES["cityscapes[trainIds]"]).build("train")
    c = write_case(tmp_path / "c", CASES["bdd100k"]).build("train")
    d = write_case(tmp_path / "d", CASES["kitti"]).build("train")
    assert a.label_space is b.label_space is c.label_space is d.label_space


def test_cityscapes_unlabeled_splits(tmp_path):
    w = write_case(tmp_path / "ds", CASES["cityscapes"])
    for split in ("test", "train_extra"):
        ds = w.build(split)
        assert not ds.has_labels and ds.load_label(0) is None


def test_cityscapes_partial_train_ids_is_an_error(tmp_path):
    w = write_case(tmp_path / "ds", CASES["cityscapes[trainIds]"])
    img, lab = CASES["cityscapes[trainIds]"].splits["train"][1]
    (w.root / lab).unlink()  # its labelIds file still exists, but the split uses trainIds
    with pytest.raises(DataError, match="labelTrainIds"):
        w.build("train")


def test_idd_level1_grouping_matches_official():
    from univseg.data.datasets.idd import IDD_LEVEL1_FROM_LEVEL3

    raw = np.array(sorted(IDD_L3_TO_L1), np.uint8)
    np.testing.assert_array_equal(IDD_LEVEL1_FROM_LEVEL3.encode(raw), [IDD_L3_TO_L1[v] for v in sorted(IDD_L3_TO_L1)])


def test_camvid32_unknown_colour_names_colour(tmp_path):
    w = write_case(tmp_path / "ds", CASES["camvid32"])
    img, lab = CASES["camvid32"].splits["all"][0]
    raw = raw_pattern(w.case, w.code[img])
    raw[0] = (7, 7, 7)
    write_label(w.root / lab, raw, "RGB")
    ds = w.build("all")
    i = next(i for i in range(len(ds)) if decode_code(ds.load_image(i)) == w.code[img])
    with pytest.raises(DataError, match=r"\(7, 7, 7\)") as e:
        ds.load_label(i)
    assert e.value.values == {(7, 7, 7): 1} and e.value.path == str(w.root / lab)


def test_rgb_label_for_index_dataset_is_an_error(tmp_path):
    w = write_case(tmp_path / "ds", CASES["camvid"])
    img, lab = CASES["camvid"].splits["val"][0]
    Image.new("RGB", (W, H), (1, 1, 1)).save(w.root / lab)
    with pytest.raises(DataError, match="colour"):
        w.build("val").load_label(0)


def test_folder_unconfigured_split(tmp_path):
    w = write_case(tmp_path / "ds", CASES["folder"])
    params = dict(CASES["folder"].params)
    params["splits"] = {"train": params["splits"]["train"]}
    with pytest.raises(DataError, match="no 'val' split configured"):
        build_dataset("folder", DATASETS.get("folder").params(root=w.root, **params), "val")


def test_folder_defaults_same_stem_png(tmp_path):
    root = tmp_path / "plain"
    for split, names in {"train": ["x", "y"], "val": ["z"]}.items():
        for k, n in enumerate(names):
            (root / "img" / split).mkdir(parents=True, exist_ok=True)
            (root / "lab" / split).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (W, H), image_color(k)).save(root / "img" / split / f"{n}.jpg")
            Image.fromarray(np.full((H, W), k, np.uint8)).save(root / "lab" / split / f"{n}.png")
    (root / "lab" / "train" / "unused.png").write_bytes(b"")  # an orphan label is ignored
    p = DATASETS.get("folder").params(
        root=root, classes=["a", "b"],
        splits={"train": {"image_dir": "img/train", "label_dir": "lab/train"}, "val": {"image_dir": "img/val", "label_dir": "lab/val"}},
    )  # fmt: skip
    ds = build_dataset("folder", p, "train")
    assert ds.label_space.name == "folder" and len(ds) == 2
    assert [int(ds.load_label(i)[0, 0]) for i in range(2)] == [0, 1]
    assert [ds.sample_id(i) for i in range(2)] == ["x", "y"]


def test_folder_list_files(tmp_path):
    root = tmp_path / "lists"
    (root / "im").mkdir(parents=True)
    (root / "gt").mkdir()
    for k, n in enumerate(["b", "a", "c"]):
        Image.new("RGB", (W, H), image_color(k)).save(root / "im" / f"{n}.png")
        Image.fromarray(np.full((H, W), k, np.uint8)).save(root / "gt" / f"{n}_mask.png")
    (root / "images.txt").write_text("im/b.png\nim/a.png\nim/c.png\n")
    (root / "labels.txt").write_text("gt/b_mask.png\ngt/a_mask.png\ngt/c_mask.png\n")
    (root / "pairs.txt").write_text("im/b.png gt/b_mask.png\nim/a.png gt/a_mask.png\n")
    base = dict(root=root, classes=["a", "b", "c"])
    mk = DATASETS.get("folder").params

    ds = build_dataset("folder", mk(**base, splits={"train": {"image_list": "images.txt", "label_list": "labels.txt"}}), "train")
    assert [(decode_code(ds.load_image(i)), int(ds.load_label(i)[0, 0])) for i in range(3)] == [(0, 0), (1, 1), (2, 2)]

    ds = build_dataset("folder", mk(**base, splits={"train": {"image_list": "pairs.txt"}}), "train")
    assert len(ds) == 2 and int(ds.load_label(1)[0, 0]) == 1

    ds = build_dataset(
        "folder", mk(**base, label_suffix="_mask.png", splits={"train": {"image_list": "images.txt", "label_dir": "gt"}}), "train"
    )
    assert [int(ds.load_label(i)[0, 0]) for i in range(3)] == [0, 1, 2]

    ds = build_dataset("folder", mk(**base, splits={"val": {"image_list": "images.txt"}}), "val")
    assert not ds.has_labels and len(ds) == 3

    (root / "labels.txt").write_text("gt/b_mask.png\n")
    with pytest.raises(DataError, match="pair line by line"):
        build_dataset("folder", mk(**base, splits={"train": {"image_list": "images.txt", "label_list": "labels.txt"}}), "train")


@pytest.mark.parametrize(
    "bad",
    [
        {"palette": [[1, 2, 3]]},  # wrong length
        {"palette": [[1, 2, 3], [4, 5, 6], [7, 8, 300]]},  # not a colour
        {"value_map": {10: 0, 20: 1}},  # class c has no raw value
        {"value_map": {10: 0, 20: 1, 30: 7}},  # target out of range
        {"value_map": {10: 0, 20: 1, 30: 2}, "void_values": [10]},  # value both void and mapped
        {"void_values": [1]},  # identity map: 1 is a class
        {"classes": []},
        {"classes": ["a", "a", "b"]},
        {"splits": {}},
        {"splits": {"train": {"image_dir": "x", "image_list": "y"}}},
        {"splits": {"train": {"label_dir": "x"}}},
        {"splits": {"training": {"image_dir": "x"}}},
        {"splits": {"train": {"image_dir": "x", "labels": "y"}}},
    ],
)
def test_folder_params_validation(bad):
    params = {"root": "/tmp", "classes": ["a", "b", "c"], "splits": {"train": {"image_dir": "x"}}} | bad
    with pytest.raises(ValidationError):
        DATASETS.get("folder").params(**params)


def test_duplicate_sample_ids_are_an_error(tmp_path):
    w = write_case(tmp_path / "ds", CASES["camvid"])
    shutil.copy(w.root / "train" / "0001TP_006690.png", w.root / "train" / "0001TP_006690.jpg")
    with pytest.raises(DataError, match="same sample id"):
        w.build("train")


def test_empty_split_folder_is_an_error(tmp_path):
    w = write_case(tmp_path / "ds", CASES["ade20k"])
    for p in (w.root / "images" / "validation").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="no images"):
        w.build("val")


# ---------------------------------------------------------------------------------------------
# label spaces and shipped class mappings
# ---------------------------------------------------------------------------------------------


def test_label_space_sizes():
    sizes = {"cityscapes": 19, "camvid": 11, "idd_level3": 26, "idd_level1": 7, "sunrgbd": 37, "nyuv2_40": 40,
             "nyuv2_13": 13, "mapillary_v1.2": 65, "ade20k": 150, "pascal_voc": 21,
             "synthetic-fine": 9, "synthetic-coarse": 8}  # fmt: skip
    assert {k: LABEL_SPACES.get(k).num_classes for k in sizes} == sizes


def test_default_palette_is_the_voc_palette_without_black():
    from univseg.data.label_space import default_palette, voc_color

    voc = LABEL_SPACES.get("pascal_voc").palette.tolist()
    assert voc[:3] == [[0, 0, 0], [128, 0, 0], [0, 128, 0]] and voc[15] == [192, 128, 128]
    assert default_palette(20) == [voc_color(i) for i in range(1, 21)] == [tuple(c) for c in voc[1:]]


def test_shipped_mappings_load_against_their_label_spaces():
    files = mapping_files()
    assert {p.name for p in files} >= {"cityscapes_to_camvid.yaml", "cityscapes_to_idd_level1.yaml", "camvid_to_idd_level1.yaml"}
    for path in files:
        shipped = read_mapping_file(path)
        src, dst = LABEL_SPACES.get(shipped.source), LABEL_SPACES.get(shipped.target)
        m = ClassMapping.from_yaml(path, src, dst)
        assert set(shipped.table) == set(src.names), f"{path.name} leaves source classes out"
        assert (src.name, dst.name) in builtin_mapping_names()
        assert ClassMapping.builtin(src, dst).lut == m.lut


def test_camvid_to_idd_mapping_is_the_documented_one():
    camvid, idd = LABEL_SPACES.get("camvid"), LABEL_SPACES.get("idd_level1")
    m = ClassMapping.builtin(camvid, idd)
    got = {camvid.names[i]: idd.names[t] for i, t in enumerate(m.lut)}
    assert got == {
        "Sky": "sky", "Building": "far objects", "Tree": "far objects", "Pole": "road side objects",
        "SignSymbol": "road side objects", "Fence": "road side objects", "Road": "drivable", "Pavement": "non-drivable",
        "Car": "vehicles", "Pedestrian": "living things", "Bicyclist": "living things",
    }  # fmt: skip
