"""Labeled-subset selection, the unlabeled pool and split files (``univseg split``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from univseg.config import load_config
from univseg.data.base import DataError
from univseg.data.check import check_data
from univseg.data.domain import build_domain
from univseg.data.recipe import EmptySplitError, UnlabeledSplitError
from univseg.data.split_tool import make_labeled_split, with_labeled_rule, write_split_files
from univseg.data.splits import match_pool_entries, match_split_entries, read_split_file, select_subset

# ---------------------------------------------------------------------------------------------
# select_subset
# ---------------------------------------------------------------------------------------------


def test_select_subset_is_deterministic_and_seeded():
    a = select_subset(100, count=10, seed=3)
    assert a == select_subset(100, count=10, seed=3)
    assert a == sorted(a) and len(set(a)) == 10 and all(0 <= i < 100 for i in a)
    assert a != select_subset(100, count=10, seed=4)
    assert select_subset(7) == list(range(7))  # no rule: everything


def test_select_subset_nested_for_growing_counts():
    prev: set[int] = set()
    for k in range(1, 31):
        cur = set(select_subset(30, count=k, seed=11))
        assert len(cur) == k and prev <= cur
        prev = cur
    assert prev == set(range(30))


@pytest.mark.parametrize(
    "n, fraction, expected",
    [(10, 0.25, 3), (5, 0.5, 3), (7, 0.5, 4), (100, 0.29, 29), (10, 0.01, 1), (10, 1.0, 10), (3, 0.1, 1), (8, 0.3, 2)],
)
def test_select_subset_fraction_rounds_half_up_at_least_one(n, fraction, expected):
    assert len(select_subset(n, fraction=fraction, seed=0)) == expected


def test_select_subset_count_too_large():
    with pytest.raises(ValueError, match="asked for 11 images but only 10"):
        select_subset(10, count=11)


# ---------------------------------------------------------------------------------------------
# the labeled subset and unlabeled pool of a domain (synthetic data: no files)
# ---------------------------------------------------------------------------------------------


def _cfg(raw: dict, **domain0):
    raw["domains"] = raw["domains"][:1]
    raw["domains"][0].update(domain0)
    return load_config(data=raw)


def _ids(view) -> list[str]:
    return [view.sample_id(i) for i in range(len(view))]


def _pool_keys(items) -> list[tuple[str, str]]:
    return [(type(ds).__name__, ds.sample_id(i)) for ds, i in items]


def test_labeled_subset_follows_rule_and_seed(tiny_raw):
    cfg = _cfg(tiny_raw, labeled={"count": 4})
    dom = build_domain(cfg.domains[0], 0, cfg.seed)
    train_ids = [f"city_train_{i:05d}" for i in range(12)]
    assert _ids(dom.labeled) == [train_ids[i] for i in select_subset(12, 4, seed=cfg.seed)]
    cfg2 = _cfg(tiny_raw, labeled={"count": 4, "seed": 9})
    dom2 = build_domain(cfg2.domains[0], 0, cfg2.seed)
    assert _ids(dom2.labeled) == [train_ids[i] for i in select_subset(12, 4, seed=9)]
    cfg3 = _cfg(tiny_raw, labeled={"fraction": 0.5})
    assert len(build_domain(cfg3.domains[0], 0, cfg3.seed).labeled) == 6


@pytest.mark.parametrize("include", [False, True])
def test_pool_overlap_with_labeled(tiny_raw, include):
    cfg = _cfg(tiny_raw, labeled={"count": 4}, unlabeled={"include_labeled": include})
    dom = build_domain(cfg.domains[0], 0, cfg.seed)
    labeled, pool = set(_ids(dom.labeled)), set(_ids(dom.unlabeled))
    if include:
        assert labeled <= pool and len(pool) == 12
    else:
        assert not labeled & pool and len(pool) == 8
        assert labeled | pool == {f"city_train_{i:05d}" for i in range(12)}


def test_pool_without_train_images(tiny_raw):
    tiny_raw["domains"][0]["dataset"]["num_test"] = 3
    cfg = _cfg(tiny_raw, labeled={"count": 4}, unlabeled={"use_train": False, "extra_splits": ["test"]})
    dom = build_domain(cfg.domains[0], 0, cfg.seed)
    assert _ids(dom.unlabeled) == [f"city_test_{i:05d}" for i in range(3)]


def _image_dir(folder: Path, names: list[str], size=(12, 8)) -> Path:
    rng = np.random.default_rng(0)
    for n in names:
        p = folder / n
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(p)
    return folder


def test_pool_extra_splits_dirs_and_cap(tiny_raw, tmp_path):
    tiny_raw["domains"][0]["dataset"]["num_test"] = 3
    extra = _image_dir(tmp_path / "extra", ["a.png", "sub/b.jpg"])
    cfg = _cfg(tiny_raw, labeled={"count": 4}, unlabeled={"extra_splits": ["test"], "extra_dirs": [str(extra)]})
    dom = build_domain(cfg.domains[0], 0, cfg.seed)
    ids = _ids(dom.unlabeled)
    assert len(ids) == 8 + 3 + 2
    assert ids[8:11] == [f"city_test_{i:05d}" for i in range(3)]
    assert ids[11:] == ["a", "sub__b"]
    # max_images: a deterministic subset of that pool, in pool order
    capped = _cfg(tiny_raw, labeled={"count": 4},
                  unlabeled={"extra_splits": ["test"], "extra_dirs": [str(extra)], "max_images": 5})
    a = _ids(build_domain(capped.domains[0], 0, capped.seed).unlabeled)
    b = _ids(build_domain(capped.domains[0], 0, capped.seed).unlabeled)
    assert a == b and len(a) == 5
    assert a == [ids[i] for i in select_subset(len(ids), 5, None, capped.seed)]


def test_training_split_tool_and_check_share_one_recipe(tiny_raw, tmp_path):
    """build_domain, `univseg split` and `univseg data check` select the same labeled subset and pool."""
    tiny_raw["domains"][0]["dataset"]["num_test"] = 3
    extra = _image_dir(tmp_path / "extra", ["a.png", "sub/b.jpg"])
    cfg = _cfg(tiny_raw, labeled={"count": 5, "seed": 3},
               unlabeled={"extra_splits": ["test"], "extra_dirs": [str(extra)], "max_images": 9})
    dom = build_domain(cfg.domains[0], 0, cfg.seed)
    sel = make_labeled_split(cfg, "city")
    assert _ids(dom.labeled) == [sel.train.sample_id(i) for i in sel.labeled]
    assert _ids(dom.unlabeled) == [ds.sample_id(i) for ds, i in sel.pool]
    assert any(ds is not sel.train for ds, _ in sel.pool)  # the pool reaches the extra split / folder
    report = check_data(cfg, max_files=0, progress=False).domain("city")
    assert (report.labeled_subset, report.unlabeled_pool) == (5, 9)


@pytest.mark.parametrize(
    "domain0, error, kind, text",
    [
        ({"dataset": {"num_val": 0}}, EmptySplitError, "empty", "domains[0] (city): val split 'val' is empty"),
        ({"dataset": {"num_test": 2}, "train_split": "test"}, UnlabeledSplitError, "no_labels",
         "domains[0] (city): train split 'test' has no labels; it cannot provide the labeled subset"),
    ],
)
def test_split_level_problems_read_the_same_everywhere(tiny_raw, domain0, error, kind, text):
    tiny_raw["domains"][0]["dataset"].update(domain0.pop("dataset"))
    cfg = _cfg(tiny_raw, **domain0)
    with pytest.raises(error) as built:
        build_domain(cfg.domains[0], 0, cfg.seed)
    with pytest.raises(error) as split:
        make_labeled_split(cfg, "city")
    problems = check_data(cfg, max_files=0, progress=False).domain("city").problems
    assert [(p.kind, p.message) for p in problems] == [(kind, text)]
    assert str(built.value) == str(split.value) == text


def test_count_larger_than_split_names_domain(tiny_raw):
    cfg = _cfg(tiny_raw, labeled={"count": 50})
    with pytest.raises(DataError, match=r"\(city\)\.labeled: asked for 50 images but only 12.*split 'train'"):
        build_domain(cfg.domains[0], 0, cfg.seed)
    with pytest.raises(DataError, match=r"city.*asked for 50 images but only 12"):
        make_labeled_split(cfg, "city")


# ---------------------------------------------------------------------------------------------
# split files
# ---------------------------------------------------------------------------------------------


def _round_trip(raw_domain_cfg, tiny_raw, out: Path):
    """Write the split files of a one-domain config, read them back via split_file; return both domains."""
    cfg = _cfg(tiny_raw, **raw_domain_cfg)
    written = write_split_files(cfg, out)
    name = cfg.domains[0].name
    assert [p.relative_to(out).as_posix() for p in written] == [f"{name}/labeled.txt", f"{name}/unlabeled.txt", f"{name}/val.txt"]
    before = build_domain(cfg.domains[0], 0, cfg.seed)
    back = dict(raw_domain_cfg)
    back["labeled"] = {"split_file": str(out / name / "labeled.txt")}
    back["unlabeled"] = dict(raw_domain_cfg.get("unlabeled", {}), split_file=str(out / name / "unlabeled.txt"))
    cfg2 = _cfg(tiny_raw, **back)
    after = build_domain(cfg2.domains[0], 0, cfg2.seed)
    return before, after, written


def test_split_file_round_trip_synthetic_with_extras(tiny_raw, tmp_path):
    tiny_raw["domains"][0]["dataset"]["num_test"] = 3
    extra = _image_dir(tmp_path / "extra", ["a.png", "sub/b.jpg", "sub/a.png"])
    dcfg = {"labeled": {"count": 5, "seed": 2},
            "unlabeled": {"extra_splits": ["test"], "extra_dirs": [str(extra)], "max_images": 9}}
    before, after, written = _round_trip(dcfg, tiny_raw, tmp_path / "splits")
    assert _ids(after.labeled) == _ids(before.labeled) and len(before.labeled) == 5
    assert _pool_keys(after.unlabeled.items) == _pool_keys(before.unlabeled.items) and len(before.unlabeled) == 9
    assert _ids(after.val) == _ids(before.val)
    assert len(read_split_file(written[0])) == 5 and len(read_split_file(written[2])) == 4


def _folder_dataset(root: Path, train: list[str], val: list[str]) -> dict:
    rng = np.random.default_rng(1)
    for split, names in (("train", train), ("val", val)):
        _image_dir(root / "images" / split, names)
        for n in names:
            lab = root / "labels" / split / Path(n).with_suffix(".png")
            lab.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 3, (8, 12), dtype=np.uint8)).save(lab)
    return {
        "type": "folder", "root": str(root), "classes": ["a", "b", "c"],
        "splits": {s: {"image_dir": f"images/{s}", "label_dir": f"labels/{s}"} for s in ("train", "val")},
    }


def test_split_file_round_trip_files_with_clashing_names(tiny_raw, tmp_path):
    # 'x.png' and 'sub/x.png' share a file name: entries must match by relative path, not by name
    names = ["x.png", "sub/x.png", "sub/y.jpg", "z.png", "deep/er/x.jpg", "w.png"]
    ds = _folder_dataset(tmp_path / "data", names, ["v.png"])
    for seed in range(4):
        dcfg = {"name": "files", "dataset": ds, "labeled": {"count": 3, "seed": seed}}
        before, after, written = _round_trip(dcfg, tiny_raw, tmp_path / f"out{seed}")
        assert _ids(after.labeled) == _ids(before.labeled)
        assert _pool_keys(after.unlabeled.items) == _pool_keys(before.unlabeled.items)
    lines = written[0].read_text().splitlines()
    assert all(len(line.split()) == 2 and line.split()[1].endswith(".png") for line in lines)  # 'image label'
    assert all(not line.startswith("/") for line in lines)  # relative paths


def test_unknown_split_file_entries_name_file_and_entries(tiny_raw, tmp_path):
    split = tmp_path / "labeled.txt"
    split.write_text("# comment\ncity_train_00001\nnope_1.png label.png\n\nnope_2\n")
    cfg = _cfg(tiny_raw, labeled={"split_file": str(split)})
    with pytest.raises(DataError) as e:
        build_domain(cfg.domains[0], 0, cfg.seed)
    msg = str(e.value)
    assert str(split) in msg and "nope_1.png" in msg and "nope_2" in msg and "2 entries" in msg
    assert "city_train_00001" not in msg
    missing = tmp_path / "absent.txt"
    cfg = _cfg(tiny_raw, labeled={"split_file": str(missing)})
    with pytest.raises(DataError, match="split file not found: .*absent.txt"):
        build_domain(cfg.domains[0], 0, cfg.seed)


def test_ambiguous_file_name_entry_is_an_error(tmp_path):
    from univseg.data.registry import resolve_dataset

    ds_cfg = _folder_dataset(tmp_path / "data", ["x.png", "sub/x.png", "a/w.png", "b/w.jpg", "y.png"], ["v.png"])
    train = resolve_dataset(ds_cfg, "dataset").build("train")
    paths = [p.relative_to(tmp_path / "data/images/train").as_posix() for p in train.images]
    assert match_split_entries(train, ["x.png"], "f") == [paths.index("x.png")]  # exact relative path wins
    assert match_split_entries(train, ["x"], "f") == [paths.index("x.png")]  # sample id of x.png
    assert match_split_entries(train, ["sub/x.png", "./y.png"], "f") == sorted([paths.index("sub/x.png"), paths.index("y.png")])
    assert match_split_entries(train, ["y", "w.jpg"], "f") == sorted([paths.index("y.png"), paths.index("b/w.jpg")])
    with pytest.raises(DataError, match=r"f: 1 entries name several images.*: w$"):
        match_split_entries(train, ["w"], "f")  # stem of a/w.png and b/w.jpg
    assert match_pool_entries([train, train], [str(train.images[0])], "f") == [(0, 0)]


def test_cli_overrides_of_the_labeled_rule(tiny_raw, tmp_path):
    cfg = load_config(data=tiny_raw)
    written = write_split_files(cfg, tmp_path, domains=["rural"], count=2, seed=5)
    assert [p.parent.name for p in written] == ["rural"] * 3
    lines = (tmp_path / "rural" / "labeled.txt").read_text().splitlines()
    assert lines == [f"rural_train_{i:05d}" for i in select_subset(12, 2, seed=5)]
    assert len((tmp_path / "rural" / "unlabeled.txt").read_text().splitlines()) == 10
    # the same selection as a config carrying that rule, and as make_labeled_split
    sel = make_labeled_split(cfg, "rural", count=2, seed=5)
    assert sel.labeled == select_subset(12, 2, seed=5)
    raw = dict(tiny_raw)
    raw["domains"][1]["labeled"] = {"count": 2, "seed": 5}
    dom = build_domain(load_config(data=raw).domains[1], 1, 0)
    assert _ids(dom.labeled) == lines
    # seed alone re-draws the configured count; fraction replaces it
    assert with_labeled_rule(cfg, seed=7).domains[0].labeled.count == 4
    assert make_labeled_split(cfg, "city", seed=7).labeled == select_subset(12, 4, seed=7)
    assert len(make_labeled_split(cfg, "city", fraction=0.25).labeled) == 3
    assert cfg.domains[0].labeled.seed is None and cfg.domains[0].labeled.count == 4  # the input is untouched
    with pytest.raises(ValueError, match="either count or fraction"):
        with_labeled_rule(cfg, count=2, fraction=0.5)
    with pytest.raises(ValueError, match="no domain 'nope'"):
        write_split_files(cfg, tmp_path, domains=["nope"])
    with pytest.raises(DataError, match="city.*asked for 13 images but only 12"):
        write_split_files(cfg, tmp_path / "none", count=13)
    assert not (tmp_path / "none").exists()  # nothing half-written
