"""Tests for univseg.data.transforms: joint image/label augmentation built from config dicts."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from univseg.data.transforms import (
    IGNORE_INDEX,
    TRANSFORMS,
    Compose,
    Transform,
    build_transform,
    build_transforms,
    load_arrays,
)

ALL_TYPES = ["resize", "random_scale", "random_crop", "hflip", "color_jitter", "gaussian_blur", "pad_to_multiple"]

TRAIN_CFG = [
    {"type": "random_scale", "range": [0.5, 2.0], "aspect_range": [0.8, 1.25]},
    {"type": "random_crop", "size": [32, 48], "cat_max_ratio": 0.75},
    {"type": "hflip"},
    {"type": "color_jitter", "brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05},
    {"type": "gaussian_blur", "p": 0.5},
    {"type": "pad_to_multiple", "multiple": 16},
]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_pair(h: int = 40, w: int = 60, n_classes: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.integers(0, n_classes, (h, w), dtype=np.uint8)
    label[:3, :3] = IGNORE_INDEX
    return load_arrays(image, label)


def block_pair(h: int = 48, w: int = 72):
    """Label of irregular constant blocks; image value = 20 * class in all channels."""
    rows = np.array([0, 7, 19, 30, h])
    cols = np.array([0, 11, 20, 41, 57, w])
    label = np.zeros((h, w), dtype=np.uint8)
    c = 0
    for i in range(len(rows) - 1):
        for j in range(len(cols) - 1):
            label[rows[i] : rows[i + 1], cols[j] : cols[j + 1]] = c % 12
            c += 1
    image = np.repeat((label * 20).astype(np.uint8)[..., None], 3, axis=2)
    return load_arrays(image, label)


# ---------------------------------------------------------------- registry / load_arrays


def test_registry_has_all_types():
    for name in ALL_TYPES:
        assert name in TRANSFORMS
        assert issubclass(TRANSFORMS.get(name), Transform)


def test_load_arrays_convention():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    lbl = np.array([[0, 1, 255], [2, 3, 4]], dtype=np.uint8)
    image, label = load_arrays(img, lbl)
    assert image.dtype == torch.float32 and image.shape == (3, 2, 3)
    assert label.dtype == torch.int64 and label.shape == (2, 3)
    assert torch.equal(image[:, 1, 2], torch.tensor(img[1, 2], dtype=torch.float32))
    assert label.tolist() == lbl.tolist()
    image2, none = load_arrays(img, None)
    assert none is None and torch.equal(image, image2)
    # outputs own their memory
    img[0, 0, 0] = 77
    assert image[0, 0, 0] == 0
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        load_arrays(img.astype(np.float32), lbl)
    with pytest.raises(ValueError, match="does not match"):
        load_arrays(img, lbl[:, :2])


def test_compose_checks_inputs():
    pipe = build_transforms([{"type": "hflip"}])
    image, label = random_pair(8, 8)
    with pytest.raises(ValueError, match="int64"):
        pipe(image, label.to(torch.uint8), gen(0))
    with pytest.raises(ValueError, match="float32"):
        pipe(image.to(torch.uint8), label, gen(0))
    with pytest.raises(ValueError, match="does not match"):
        pipe(image, label[:4], gen(0))


# ---------------------------------------------------------------- determinism


def test_same_seed_same_output_and_global_rng_unused():
    pipe = build_transforms(TRAIN_CFG)
    image, label = random_pair()
    torch.manual_seed(123)
    a_img, a_lbl = pipe(image, label, gen(7))
    torch.manual_seed(999)  # global RNG state must not matter
    np.random.seed(5)
    b_img, b_lbl = pipe(image, label, gen(7))
    assert torch.equal(a_img, b_img) and torch.equal(a_lbl, b_lbl)
    # the input tensors are not modified in place
    image2, label2 = random_pair()
    assert torch.equal(image, image2) and torch.equal(label, label2)


def test_different_seeds_give_different_crops_and_flips():
    image, label = random_pair(40, 60)
    crop = build_transforms([{"type": "random_crop", "size": [20, 20]}])
    crops = {tuple(crop(image, label, gen(s))[1].flatten().tolist()) for s in range(6)}
    assert len(crops) > 1
    flip = build_transforms([{"type": "hflip"}])
    flips = {torch.equal(flip(image, label, gen(s))[1], label) for s in range(12)}
    assert flips == {True, False}


# ---------------------------------------------------------------- geometry


def test_hflip_consistent():
    img = np.zeros((2, 3, 3), dtype=np.uint8)
    img[..., 0] = [[1, 2, 3], [4, 5, 6]]
    lbl = np.array([[0, 1, 2], [3, 4, 255]], dtype=np.uint8)
    image, label = load_arrays(img, lbl)
    out_img, out_lbl = build_transform({"type": "hflip", "p": 1.0})(image, label, gen(0))
    assert out_img[0].tolist() == [[3, 2, 1], [6, 5, 4]]
    assert out_lbl.tolist() == [[2, 1, 0], [255, 4, 3]]
    same_img, same_lbl = build_transform({"type": "hflip", "p": 0.0})(image, label, gen(0))
    assert torch.equal(same_img, image) and torch.equal(same_lbl, label)


def test_crop_pads_small_inputs_exactly():
    img = np.full((3, 4, 3), 200, dtype=np.uint8)
    lbl = np.array([[1, 2, 3, 4]] * 3, dtype=np.uint8)
    image, label = load_arrays(img, lbl)
    out_img, out_lbl = build_transform({"type": "random_crop", "size": [5, 6]})(image, label, gen(3))
    assert out_img.shape == (3, 5, 6) and out_lbl.shape == (5, 6)
    # original sits top-left, padding bottom/right: image 0, label 255
    assert torch.all(out_img[:, :3, :4] == 200)
    assert torch.all(out_img[:, 3:, :] == 0) and torch.all(out_img[:, :, 4:] == 0)
    assert out_lbl[:3, :4].tolist() == lbl.tolist()
    assert torch.all(out_lbl[3:, :] == IGNORE_INDEX) and torch.all(out_lbl[:, 4:] == IGNORE_INDEX)
    assert out_lbl.dtype == torch.int64


def test_crop_partially_smaller_input():
    image, label = random_pair(10, 30)
    out_img, out_lbl = build_transform({"type": "random_crop", "size": [16, 16]})(image, label, gen(1))
    assert out_img.shape == (3, 16, 16)
    assert torch.all(out_lbl[10:] == IGNORE_INDEX) and torch.all(out_img[:, 10:] == 0)
    assert set(out_lbl[:10].unique().tolist()) <= set(label.unique().tolist())


def interior_mask(label: torch.Tensor) -> torch.Tensor:
    """Labeled pixels whose 5x5 neighbourhood is one class, away from the crop border."""
    lbl_f = label.to(torch.float32)[None, None]
    lo = -torch.nn.functional.max_pool2d(-lbl_f, 5, stride=1, padding=2)[0, 0]
    hi = torch.nn.functional.max_pool2d(lbl_f, 5, stride=1, padding=2)[0, 0]
    interior = (label != IGNORE_INDEX) & (lo == hi)
    interior[:2] = interior[-2:] = False  # neighbours outside the crop are unseen
    interior[:, :2] = interior[:, -2:] = False
    return interior


def test_scale_crop_flip_keep_alignment():
    image, label = block_pair()
    pipe = build_transforms(
        [
            {"type": "random_scale", "range": [0.5, 2.0], "aspect_range": [0.75, 1.33]},
            {"type": "random_crop", "size": [40, 40]},
            {"type": "hflip"},
        ]
    )
    n_detected = 0
    for seed in range(12):
        out_img, out_lbl = pipe(image, label, gen(seed))
        expected = (out_lbl * 20).to(torch.float32)
        # block interiors carry exactly their class value in every channel
        interior = interior_mask(out_lbl)
        assert interior.sum() >= 50
        for ch in range(3):
            assert torch.allclose(out_img[ch][interior], expected[interior], atol=1e-2)
        # padding: label 255 exactly where the image was padded with 0
        assert torch.all(out_img[:, out_lbl == IGNORE_INDEX] == 0)
        # the check has teeth: a misaligned (image-only flipped) pair fails it
        bad = out_img[0].flip(-1)
        n_detected += int(not torch.allclose(bad[interior], expected[interior], atol=1e-2))
    assert n_detected >= 10


def checkerboard(h: int, w: int, cell: int = 1, values=(3, 7)) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    board = ((yy // cell + xx // cell) % 2).to(torch.int64)
    return torch.where(board == 0, values[0], values[1])


def test_resize_label_is_nearest_on_checkerboard():
    label = checkerboard(4, 6)
    image = torch.zeros(3, 4, 6)
    _, up = build_transform({"type": "resize", "scale": 2.0})(image, label, gen(0))
    assert up.shape == (8, 12)
    assert torch.equal(up, label.repeat_interleave(2, 0).repeat_interleave(2, 1))
    _, down = build_transform({"type": "resize", "size": [4, 6]})(
        torch.zeros(3, 8, 12), checkerboard(8, 12, cell=2), gen(0)
    )
    assert torch.equal(down, label)
    out_img, odd = build_transform({"type": "resize", "size": [7, 5]})(image, label, gen(0))
    assert out_img.shape == (3, 7, 5)
    assert set(odd.unique().tolist()) <= {3, 7} and odd.dtype == torch.int64


def test_resize_short_side_keeps_aspect():
    image, label = random_pair(40, 60)
    out_img, out_lbl = build_transform({"type": "resize", "short_side": 20})(image, label, gen(0))
    assert out_img.shape == (3, 20, 30) and out_lbl.shape == (20, 30)
    out_img, _ = build_transform({"type": "resize", "short_side": 30})(image.transpose(1, 2), None, gen(0))
    assert out_img.shape == (3, 45, 30)


@pytest.mark.parametrize(
    "cfg",
    [
        {"type": "resize", "size": [17, 23]},
        {"type": "resize", "scale": 0.37},
        {"type": "resize", "short_side": 91},
        {"type": "random_scale", "range": [0.3, 2.5], "aspect_range": [0.5, 2.0]},
    ],
)
def test_resize_never_invents_label_values(cfg):
    image, label = random_pair(40, 60, n_classes=4)
    allowed = set(label.unique().tolist()) | {IGNORE_INDEX}
    t = build_transform(cfg)
    for seed in range(5):
        out_img, out_lbl = t(image, label, gen(seed))
        assert out_lbl.dtype == torch.int64 and out_lbl.shape == out_img.shape[-2:]
        assert set(out_lbl.unique().tolist()) <= allowed
        assert out_img.min() >= 0 and out_img.max() <= 255


def test_random_scale_range():
    image, label = random_pair(40, 60)
    t = build_transform({"type": "random_scale", "range": [0.5, 2.0]})
    sizes = set()
    for seed in range(10):
        out_img, out_lbl = t(image, label, gen(seed))
        h, w = out_img.shape[-2:]
        assert 20 <= h <= 80 and 30 <= w <= 120
        assert abs(w / h - 1.5) < 0.1
        sizes.add((h, w))
    assert len(sizes) > 1


def test_cat_max_ratio_avoids_single_class_crops():
    # left half class 0, right half class 1: only crops straddling the middle mix classes
    label = torch.zeros(64, 64, dtype=torch.int64)
    label[:, 32:] = 1
    label[:4] = IGNORE_INDEX  # ignore pixels are not counted
    image = torch.zeros(3, 64, 64)
    plain = build_transform({"type": "random_crop", "size": [24, 24]})
    guarded = build_transform({"type": "random_crop", "size": [24, 24], "cat_max_ratio": 0.75})

    def max_ratio(lbl):
        _, counts = lbl[lbl != IGNORE_INDEX].unique(return_counts=True)
        return counts.max().item() / counts.sum().item()

    plain_ok = sum(max_ratio(plain(image, label, gen(s))[1]) < 0.75 for s in range(20))
    guarded_ok = sum(max_ratio(guarded(image, label, gen(s))[1]) < 0.75 for s in range(20))
    assert plain_ok <= 12  # ~27% of single windows qualify
    assert guarded_ok >= 16  # ~96% with 10 tries
    # unlabeled input: cat_max_ratio has nothing to check and still crops
    out_img, out_lbl = guarded(image, None, gen(0))
    assert out_lbl is None and out_img.shape == (3, 24, 24)


def test_pad_to_multiple():
    image, label = random_pair(33, 50)
    out_img, out_lbl = build_transform({"type": "pad_to_multiple", "multiple": 16})(image, label, gen(0))
    assert out_img.shape == (3, 48, 64) and out_lbl.shape == (48, 64)
    assert torch.equal(out_img[:, :33, :50], image) and torch.equal(out_lbl[:33, :50], label)
    assert torch.all(out_img[:, 33:] == 0) and torch.all(out_img[:, :, 50:] == 0)
    assert torch.all(out_lbl[33:] == IGNORE_INDEX) and torch.all(out_lbl[:, 50:] == IGNORE_INDEX)
    same_img, _ = build_transform({"type": "pad_to_multiple", "multiple": 1})(image, label, gen(0))
    assert same_img.shape == image.shape


# ---------------------------------------------------------------- photometric


def test_color_jitter_image_only_and_in_range():
    image, label = random_pair()
    label_before = label.clone()
    t = build_transform({"type": "color_jitter", "brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.5})
    changed = 0
    for seed in range(5):
        out_img, out_lbl = t(image, label, gen(seed))
        assert out_lbl is label and torch.equal(label, label_before)
        assert out_img.dtype == torch.float32 and out_img.shape == image.shape
        assert out_img.min() >= 0 and out_img.max() <= 255
        changed += int(not torch.allclose(out_img, image))
    assert changed == 5
    # brightness factor > 1 brightens (torchvision semantics: [1-b, 1+b] -> [1.5, 2.0] here)
    bright = build_transform({"type": "color_jitter", "brightness": [1.5, 2.0]})
    dark = torch.full((3, 4, 4), 100.0)
    out, _ = bright(dark, None, gen(0))
    assert torch.all(out >= 150 - 1e-3) and torch.all(out <= 200 + 1e-3)
    # p = 0 and identity config are no-ops
    assert torch.equal(build_transform({"type": "color_jitter", "brightness": 0.5, "p": 0.0})(image, label, gen(0))[0], image)
    assert torch.equal(build_transform({"type": "color_jitter"})(image, label, gen(0))[0], image)


def test_color_jitter_scalar_semantics():
    t = build_transform({"type": "color_jitter", "brightness": 1.5, "hue": 0.1})
    assert t.params.brightness == (0.0, 2.5)  # clipped at 0 like torchvision
    assert t.params.hue == (-0.1, 0.1)


def test_gaussian_blur_image_only():
    image, label = random_pair()
    t = build_transform({"type": "gaussian_blur", "p": 1.0, "sigma": [1.0, 2.0]})
    out_img, out_lbl = t(image, label, gen(0))
    assert out_lbl is label
    assert out_img.shape == image.shape
    assert out_img.std() < image.std()  # smoothing noise reduces variance
    assert out_img.min() >= 0 and out_img.max() <= 255
    # tiny images do not break reflect padding
    tiny, _ = t(torch.rand(3, 2, 2) * 255, None, gen(1))
    assert tiny.shape == (3, 2, 2)


# ---------------------------------------------------------------- unlabeled / config round trip


@pytest.mark.parametrize("cfg", TRAIN_CFG + [{"type": "resize", "short_side": 24}])
def test_unlabeled_passes_through(cfg):
    image, _ = random_pair()
    t = build_transform(cfg)
    out_img, out_lbl = t(image, None, gen(2))
    assert out_lbl is None and out_img.ndim == 3 and out_img.dtype == torch.float32


def test_full_pipeline_unlabeled_and_labeled_same_geometry():
    pipe = build_transforms(TRAIN_CFG)
    image, label = random_pair()
    img_a, lbl_a = pipe(image, label, gen(11))
    img_b, lbl_b = pipe(image, None, gen(11))
    assert lbl_b is None and img_a.shape == img_b.shape
    assert lbl_a.shape == img_a.shape[-2:]
    assert img_a.shape[-2] % 16 == 0 and img_a.shape[-1] % 16 == 0


def test_config_round_trip():
    pipe = build_transforms(TRAIN_CFG)
    assert isinstance(pipe, Compose) and len(pipe) == len(TRAIN_CFG)
    cfg = pipe.config
    assert [c["type"] for c in cfg] == [c["type"] for c in TRAIN_CFG]
    assert cfg[1]["size"] == [32, 48]  # lists, YAML-friendly
    assert cfg[2]["p"] == 0.5  # defaults filled in
    again = build_transforms(cfg)
    assert again.config == cfg
    image, label = random_pair()
    a = pipe(image, label, gen(4))
    b = again(image, label, gen(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert len(build_transforms([])) == 0 and len(build_transforms(None)) == 0


# ---------------------------------------------------------------- config errors


def error_of(cfg, where="transforms") -> str:
    with pytest.raises(ValueError) as info:
        build_transforms(cfg, where=where)
    return str(info.value)


def test_unknown_type_suggests():
    msg = error_of([{"type": "hflip"}, {"type": "random_crp", "size": [4, 4]}])
    assert msg.startswith("transforms[1].type:")
    assert "random_crp" in msg and "Did you mean 'random_crop'" in msg
    for name in ALL_TYPES:
        assert name in msg  # lists the available types


def test_unknown_key_suggests():
    msg = error_of([{"type": "random_crop", "sise": [4, 4]}])
    assert "transforms[0].sise: unknown key." in msg
    assert "Did you mean 'size'" in msg
    assert "transforms[0].size: missing required key" in msg


def test_wrong_types_name_path_and_expectation():
    msg = error_of([{"type": "random_crop", "size": "big"}])
    assert msg.startswith("transforms[0].size:") and "[height, width]" in msg and "'big'" in msg
    msg = error_of([{"type": "hflip"}, {"type": "random_crop", "size": [4.5, 4]}])
    assert "transforms[1].size[0]:" in msg and "integer" in msg
    msg = error_of([{"type": "hflip", "p": "0.5"}])
    assert "transforms[0].p:" in msg and "number" in msg
    msg = error_of([{"type": "hflip", "p": 1.5}])
    assert "transforms[0].p:" in msg and "less than or equal to 1" in msg
    msg = error_of([{"type": "random_crop", "size": [4]}])
    assert "transforms[0].size[1]:" in msg
    msg = error_of([{"type": "random_scale", "range": [2.0, 0.5]}])
    assert "transforms[0].range:" in msg and "low <= high" in msg
    msg = error_of([{"type": "color_jitter", "hue": 0.7}])
    assert "transforms[0].hue:" in msg
    msg = error_of([{"type": "gaussian_blur", "kernel_size": 4}])
    assert "transforms[0].kernel_size:" in msg and "odd" in msg


def test_structural_errors():
    assert error_of({"type": "hflip"}).startswith("transforms: expected a list")
    assert error_of(["hflip"]).startswith("transforms[0]: expected a mapping")
    msg = error_of([{"size": [4, 4]}])
    assert msg.startswith("transforms[0]: missing 'type'") and "random_crop" in msg
    assert error_of([{"type": 3}]).startswith("transforms[0].type: expected a string")
    msg = error_of([{"type": "resize"}, {"type": "resize", "size": [4, 4], "scale": 2.0}])
    assert "transforms[0]: give exactly one of" in msg and "transforms[1]: give exactly one of" in msg


def test_all_errors_reported_and_custom_where():
    msg = error_of([{"type": "random_crp"}, {"type": "hflip", "q": 1}], where="data.train.transforms")
    lines = msg.splitlines()
    assert lines[0].startswith("data.train.transforms[0].type:")
    assert lines[1].startswith("data.train.transforms[1].q:")
    with pytest.raises(ValueError, match=r"^transform\.size:"):
        build_transform({"type": "random_crop", "size": "x"})


def test_size_int_shorthand_and_frozen_params():
    t = build_transform({"type": "random_crop", "size": 8})
    assert t.params.size == (8, 8)
    with pytest.raises(Exception):
        t.params.size = (4, 4)  # type: ignore[misc]
