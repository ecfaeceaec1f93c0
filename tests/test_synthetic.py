"""Tests of the built-in synthetic multi-domain dataset (univseg.data.synthetic)."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from pydantic import ValidationError

import univseg.data.synthetic as syn
from univseg.data.label_space import IGNORE_INDEX
from univseg.data.mapping import ClassMapping, builtin_mapping_names
from univseg.data.registry import DATASETS, build_dataset
from univseg.data.synthetic import (
    LABEL_SPACES,
    SCENE_CLASSES,
    STYLES,
    SyntheticDataset,
    SyntheticParams,
    render_scene,
)

FINE = LABEL_SPACES["fine"]
COARSE = LABEL_SPACES["coarse"]


def make(split: str = "train", **kw) -> SyntheticDataset:
    kw.setdefault("num_train", 30)
    kw.setdefault("num_val", 10)
    kw.setdefault("num_test", 5)
    return SyntheticDataset(SyntheticParams(**kw), split)


# ---------------------------------------------------------------- determinism


def test_same_sample_is_byte_identical_across_instances():
    a, b = make(style="rural"), make(style="rural")
    for i in (0, 7, 29):
        ia, la = a.load_pair(i)
        ib, lb = b.load_pair(i)
        assert ia.dtype == np.uint8 and ia.shape == (96, 128, 3)
        assert la.dtype == np.uint8 and la.shape == (96, 128)
        assert ia.tobytes() == ib.tobytes()
        assert la.tobytes() == lb.tobytes()


def test_cache_returns_fresh_arrays():
    ds = make()
    img = ds.load_image(3)
    img[:] = 0
    lab = ds.load_label(3)
    lab[:] = 0
    assert ds.load_image(3).any()
    assert (ds.load_label(3) != 0).any()
    assert ds.load_image(3).tobytes() == make().load_image(3).tobytes()


def test_render_scene_is_a_pure_function_of_the_rng():
    a = render_scene("city", np.random.default_rng([1, 2, 3]), 64, 80)
    b = render_scene("city", np.random.default_rng([1, 2, 3]), 64, 80)
    assert a[0].shape == (64, 80, 3) and a[1].shape == (64, 80)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    assert a[1].max() < len(SCENE_CLASSES)


def test_different_seed_index_or_split_gives_different_samples():
    base = make(seed=0)
    img0, lab0 = base.load_pair(0)
    assert not np.array_equal(img0, base.load_image(1))
    assert not np.array_equal(lab0, base.load_label(1))
    other_seed = make(seed=1)
    assert not np.array_equal(img0, other_seed.load_image(0))
    assert not np.array_equal(lab0, other_seed.load_label(0))
    for split in ("val", "test"):
        assert not np.array_equal(img0, make(split, seed=0).load_image(0))


def test_image_size_follows_params():
    ds = make(height=48, width=72)
    img, lab = ds.load_pair(0)
    assert img.shape == (48, 72, 3) and lab.shape == (48, 72)


#: sha256 of (image, fine label, coarse label) of train sample 1 per (style, seed), 96x128.
_GOLDEN_SAMPLES = {
    ("city", 0): (
        "uint8(96, 128, 3):1cc974d27d4905ade1453b8eb063e555154c0b7cfce357179418c39f787f4ded",
        "uint8(96, 128):02549ada656212624136ac61c17d8e8ddd3faf42ee1e26b6cd072a5934edf08f",
        "uint8(96, 128):99cd56bc25cd2a1e3950b6f9727fd5130e085a3b97c4b83876f9d4ad42113886",
    ),
    ("city", 1): (
        "uint8(96, 128, 3):a3267b12802fe7bac0396db24c804e9a1faf579bd42d5ac34908baeda6b03d93",
        "uint8(96, 128):de957c4478014c9442c55c72ac3ac9f1108f8b21cd93cbab93923d391c49ab30",
        "uint8(96, 128):3373f9d69ebf17e2f15d9b10a46c0e06a30ef225ca590457a30a7bd8a5d1399c",
    ),
    ("city", 2): (
        "uint8(96, 128, 3):573c0277071742c84140aa863b190071febeab314ad2dc3c45e3a4474665b585",
        "uint8(96, 128):68262c5911557db1f37fae4f2c5d2a5f886a8e403b7bdc2fe1d21a6b82f67aa9",
        "uint8(96, 128):fde8256350b65bd2ff8b6efc5be90ab4474899f7e87d3b63c95ecda9d5ec7b73",
    ),
    ("rural", 0): (
        "uint8(96, 128, 3):bd04d4c57b8a4dab607aea813b1b5ccaee98f069036d20210ee4b8bf040ada54",
        "uint8(96, 128):dca4093c4c0252b59f6e31ec0fea4c43172d310b46e4d910170a2f1dc73dffaf",
        "uint8(96, 128):ca2ec75458bbcbf70f527186063ef6986134e3f7bb453d55fdb30bc563c55262",
    ),
    ("rural", 1): (
        "uint8(96, 128, 3):245a1cd4a10532bfc06496a11e0d2a5637b7a5f99849b1fa604005149c0e0464",
        "uint8(96, 128):4d8ca8191d711c6fe709c0d7bc10dc5c946a1b5d10ff28014cb083df6d915510",
        "uint8(96, 128):f709c9a233dfd286d160d2efb443cb08b03e837a97954612837d4b845572e2ba",
    ),
    ("rural", 2): (
        "uint8(96, 128, 3):cd4f0971aeac739a47df2cc858d24568b67998f794d747e3241c10a016a04b90",
        "uint8(96, 128):5dd6932934bd066bcc16794676f29a9b6e4ca01d7f1e98af98049954582e2df1",
        "uint8(96, 128):11c306cc0be2f0921a438e7fe01fb3a343cf26bb6181ba31b87de80f8e4a3309",
    ),
    ("night", 0): (
        "uint8(96, 128, 3):bb8b3b0efc7a71cbc284871ad25cd85684dc3b2fac691c687c89b9b79bc5cda0",
        "uint8(96, 128):9da4eb7f5f28bfd09efe234037799032e9339e7e65af34cb98a698dc4e45a7ac",
        "uint8(96, 128):174a554a5e57e3bd1fa53f398d7c0ea99ee2d5aaf2cfd4f0770fe962a4202fbd",
    ),
    ("night", 1): (
        "uint8(96, 128, 3):1d0d21df5b26bc07941cc44f18519d5d00ebea2d919da31bd37a0ad250ffd84b",
        "uint8(96, 128):117213029099a8d0bc8f59c9eb977f2b96366657d8685b0feedc2491f197d59a",
        "uint8(96, 128):d7f7c3615df384ecbea99bf4f34faa9b686f4d496c9ba0432e5f075936684eac",
    ),
    ("night", 2): (
        "uint8(96, 128, 3):d5352b6212659627fe15f27e05b25b6fef9057a8a065746a99a57331df5c59a7",
        "uint8(96, 128):65852b509dc519fd9a561a58dd16dd4bff102399f7620d0fd2b3f8275fdce601",
        "uint8(96, 128):5cb2b954785f843c9bdeb5122a26d7b437d3406baafaa62e385e0806c07d4080",
    ),
}
#: sha256 of (image, scene label) of render_scene(style, default_rng([7, 3]), 300, 320).
_GOLDEN_LARGE = {
    "city": (
        "uint8(300, 320, 3):6b80638a2bdeecaa566e4c8dd42247f19a144443685c4e8fbfa6b706ea8ef326",
        "uint8(300, 320):e1da20c2b5742013f24c7e3f5a1c950b76a3e5d88c7e0fbaf754f8429323ccc6",
    ),
    "rural": (
        "uint8(300, 320, 3):15e07276d051431573dc59919c85b5ce861b6b92e43f8124240766272b572bb7",
        "uint8(300, 320):a879ec80d870feae95a7f3885266eefe96fb11de52808030acaaccbb3be0b3c9",
    ),
    "night": (
        "uint8(300, 320, 3):28a1b239d802fa875e6d4c97d990c4a3c83e2e4e672a5f8ed76a6554e813a2b2",
        "uint8(300, 320):f1e35b9a97292b56d3ac71b6249f0cf1de1a1bd3275c6f10283643270f64bc2d",
    ),
}


def _digest(a: np.ndarray) -> str:
    return f"{a.dtype}{a.shape}:{hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()}"


@pytest.mark.parametrize(("style", "seed"), sorted(_GOLDEN_SAMPLES))
def test_golden_samples_are_unchanged(style, seed):
    fine = make(style=style, seed=seed, taxonomy="fine")
    coarse = make(style=style, seed=seed, taxonomy="coarse")
    got = (_digest(fine.load_image(1)), _digest(fine.load_label(1)), _digest(coarse.load_label(1)))
    assert got == _GOLDEN_SAMPLES[(style, seed)]


@pytest.mark.parametrize("style", sorted(_GOLDEN_LARGE))
def test_golden_large_scenes_are_unchanged(style):
    image, scene = render_scene(style, np.random.default_rng([7, 3]), 300, 320)
    assert (_digest(image), _digest(scene)) == _GOLDEN_LARGE[style]


def test_golden_cases_cover_every_style():
    assert {s for s, _ in _GOLDEN_SAMPLES} == set(_GOLDEN_LARGE) == set(STYLES.names())


# ---------------------------------------------------------------- taxonomies


def test_label_spaces():
    assert FINE.name == "synthetic-fine" and COARSE.name == "synthetic-coarse"
    assert FINE.names == ["sky", "building", "road", "sidewalk", "vegetation", "pole", "car", "truck", "person"]
    assert COARSE.names == ["sky", "building", "ground", "vegetation", "pole", "vehicle", "person", "animal"]
    for space in (FINE, COARSE):
        assert space.void_ids == (IGNORE_INDEX,)
        assert len({c.color for c in space.classes}) == space.num_classes  # distinct colours
    assert ("synthetic-fine", "synthetic-coarse") in builtin_mapping_names()
    assert ("synthetic-coarse", "synthetic-fine") in builtin_mapping_names()


def test_builtin_mappings_both_directions():
    f2c = ClassMapping.builtin(FINE, COARSE)
    c2f = ClassMapping.builtin(COARSE, FINE)
    assert f2c is not None and c2f is not None
    assert f2c.lut[FINE.index("road")] == f2c.lut[FINE.index("sidewalk")] == COARSE.index("ground")
    assert f2c.lut[FINE.index("car")] == f2c.lut[FINE.index("truck")] == COARSE.index("vehicle")
    assert f2c.lut[FINE.index("person")] == COARSE.index("person")
    assert c2f.lut[COARSE.index("ground")] == FINE.index("road")
    assert c2f.lut[COARSE.index("vehicle")] == FINE.index("car")
    assert c2f.lut[COARSE.index("animal")] == -1
    assert c2f.lut[COARSE.index("sky")] == FINE.index("sky")


@pytest.mark.parametrize("style", ["city", "rural"])
def test_taxonomies_share_images_and_labels_agree_with_mapping(style):
    fine, coarse = make(style=style, taxonomy="fine"), make(style=style, taxonomy="coarse")
    assert fine.label_space is FINE and coarse.label_space is COARSE
    f2c = ClassMapping.builtin(FINE, COARSE)
    animal = COARSE.index("animal")
    saw_animal = False
    for i in range(8):
        assert fine.load_image(i).tobytes() == coarse.load_image(i).tobytes()
        lf, lc = fine.load_label(i), coarse.load_label(i)
        valid = lf != IGNORE_INDEX
        assert np.array_equal(f2c.apply(lf[valid]), lc[valid])
        # the only pixels void in fine are animals, which the coarse taxonomy labels
        assert np.all(lc[~valid] == animal)
        assert not np.any(lc[valid] == animal)
        assert not np.any(lc == IGNORE_INDEX)
        saw_animal |= bool((~valid).any())
    assert saw_animal == (style == "rural")


def test_label_values_within_label_space():
    for tax, space in LABEL_SPACES.items():
        for style in STYLES:
            ds = make(style=style, taxonomy=tax)
            for i in range(4):
                lab = ds.load_label(i)
                assert space.invalid_values(lab) == []
                assert set(np.unique(lab).tolist()) <= set(range(space.num_classes)) | {IGNORE_INDEX}


def test_every_fine_class_appears_in_first_20_city_samples():
    ds = make(style="city", num_train=20)
    seen = np.zeros(FINE.num_classes, dtype=np.int64)
    for i in range(20):
        seen += np.bincount(ds.load_label(i).ravel(), minlength=256)[: FINE.num_classes]
    missing = [n for n, c in zip(FINE.names, seen) if c == 0]
    assert not missing, f"classes never drawn: {missing}"


# ---------------------------------------------------------------- styles


def _class_means(style: str, cls: int, n: int = 12) -> np.ndarray:
    ds = make(style=style)
    pix = []
    for i in range(n):
        img, lab = ds.render(i)
        pix.append(img[lab == cls].astype(np.float64))
    return np.concatenate(pix).mean(0)


def test_styles_registered():
    assert {"city", "rural", "night"} <= set(STYLES.names())


@pytest.mark.parametrize("cls_name", ["road", "sky", "vegetation", "building"])
def test_styles_differ_in_class_colours(cls_name):
    cls = SCENE_CLASSES.index(cls_name)
    city, rural, night = (_class_means(s, cls) for s in ("city", "rural", "night"))
    assert np.abs(city - rural).sum() > 60, (cls_name, city, rural)
    assert np.abs(city - night).sum() > 100, (cls_name, city, night)
    assert night.mean() < city.mean()


def test_animals_in_rural_never_in_city():
    animal = SCENE_CLASSES.index("animal")
    rural = make(style="rural")
    assert sum(bool((rural.render(i)[1] == animal).any()) for i in range(20)) >= 10
    for style in ("city", "night"):
        ds = make(style=style, num_train=40)
        assert not any((ds.render(i)[1] == animal).any() for i in range(40))


def test_rural_has_fewer_buildings_more_vegetation():
    def fractions(style):
        ds = make(style=style)
        labs = np.stack([ds.render(i)[1] for i in range(15)])
        return (labs == SCENE_CLASSES.index("building")).mean(), (labs == SCENE_CLASSES.index("vegetation")).mean()

    (b_city, v_city), (b_rural, v_rural) = fractions("city"), fractions("rural")
    assert b_rural < b_city
    assert v_rural > v_city


# ---------------------------------------------------------------- params, splits, registry


def test_unknown_style_lists_valid_styles():
    with pytest.raises(ValidationError) as e:
        SyntheticParams(style="desert")
    msg = str(e.value)
    assert "desert" in msg
    for name in ("city", "rural", "night"):
        assert name in msg


def test_params_validation():
    with pytest.raises(ValidationError):
        SyntheticParams(taxonomy="medium")
    with pytest.raises(ValidationError):
        SyntheticParams(num_train=-1)
    with pytest.raises(ValidationError):
        SyntheticParams(colour="red")  # unknown keys are rejected
    p = SyntheticParams()
    assert (p.style, p.taxonomy, p.num_train, p.num_val, p.num_test) == ("city", "fine", 200, 40, 0)
    assert (p.height, p.width, p.seed) == (96, 128, 0)


def test_splits_lengths_ids_and_labels():
    train, val, test = make("train"), make("val"), make("test")
    assert (len(train), len(val), len(test)) == (30, 10, 5)
    assert train.has_labels and val.has_labels and not test.has_labels
    assert test.load_label(0) is None
    img, lab = test.load_pair(4)
    assert img.shape == (96, 128, 3) and lab is None
    assert train.sample_id(3) == "city_train_00003"
    assert test.sample_id(4) == "city_test_00004"
    assert len({train.sample_id(i) for i in range(len(train))}) == len(train)
    with pytest.raises(IndexError):
        train.load_image(30)
    with pytest.raises(IndexError):
        test.load_label(5)


def test_registered_dataset_builds_through_registry():
    spec = DATASETS.get("synthetic")
    assert spec.params is SyntheticParams
    assert spec.splits == ("train", "val", "test")
    params = spec.params.model_validate({"style": "night", "taxonomy": "coarse", "num_val": 3})
    ds = build_dataset("synthetic", params, "val")
    assert isinstance(ds, SyntheticDataset)
    assert len(ds) == 3 and ds.label_space.name == "synthetic-coarse"
    assert ds.sample_id(2) == "night_val_00002"
    assert ds.load_pair(0)[0].shape == (96, 128, 3)
    with pytest.raises(ValueError, match="splits"):
        build_dataset("synthetic", params, "extra")


def test_dataset_pickles_for_worker_processes():
    import pickle

    ds = make(style="rural", taxonomy="coarse")
    ds.load_image(0)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.load_image(0).tobytes() == ds.load_image(0).tobytes()
    assert clone.load_label(1).tobytes() == ds.load_label(1).tobytes()


def test_module_exports():
    for name in ("render_scene", "LABEL_SPACES", "STYLES", "SyntheticParams", "SyntheticDataset"):
        assert hasattr(syn, name)
