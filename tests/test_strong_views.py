"""Strong views of unlabeled images (weak-to-strong consistency, FixMatch / UniMatch): the data side."""
from __future__ import annotations

import pytest
import torch

from univseg.config import validate_config
from univseg.data.domain import SampleView, build_domain, collate
from univseg.data.transforms import (
    TRANSFORMS, Transform, TransformParams, build_transform, cutmix_box, load_arrays, register_transform,
)
from univseg.engine.trainer import Trainer
from univseg.errors import ConfigError, DataError
from univseg.methods import METHODS, Method

H, W = 32, 48  # the tiny config's synthetic image size


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def luma(image: torch.Tensor) -> torch.Tensor:
    gray = 0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]
    return gray.expand(3, -1, -1)


def city(tiny_raw: dict, **domain_keys):
    """The tiny config's 'city' domain with ``domain_keys`` overridden."""
    tiny_raw["domains"][0].update(domain_keys)
    cfg = validate_config(tiny_raw)
    return build_domain(cfg.domains[0], 0, cfg.seed)


def box_extent(mask: torch.Tensor) -> tuple[int, int]:
    """(rows, cols) spanned by a mask that must be exactly one filled rectangle."""
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    assert len(rows) == h and len(cols) == w and int(mask.sum()) == h * w
    return h, w


# ---------------------------------------------------------------- transforms


def test_random_grayscale_numbers_label_and_rng():
    image = torch.tensor([[[100.0, 255.0]], [[50.0, 255.0]], [[200.0, 255.0]]])  # [3, 1, 2]
    label = torch.tensor([[1, 2]])
    rng = torch.get_rng_state()
    out, lab = build_transform({"type": "random_grayscale", "p": 1.0})(image, label, gen(0))
    assert torch.equal(torch.get_rng_state(), rng)  # only the passed generator is used
    assert lab is label and out.shape == (3, 1, 2) and out.dtype == torch.float32
    # 0.299 * 100 + 0.587 * 50 + 0.114 * 200 = 29.9 + 29.35 + 22.8 = 82.05; white stays white
    assert torch.allclose(out, torch.tensor([82.05, 255.0]).expand(3, 1, 2), atol=1e-4)
    assert torch.equal(build_transform({"type": "random_grayscale", "p": 0.0})(image, None, gen(0))[0], image)
    assert build_transform({"type": "random_grayscale"}).params.p == 0.1  # torchvision's default
    gray = [bool(torch.equal(build_transform({"type": "random_grayscale", "p": 0.5})(image, None, gen(s))[0], image)) for s in range(20)]
    assert 0 < sum(gray) < 20


def test_every_transform_is_geometric_or_photometric():
    expect = {
        "resize": True, "random_scale": True, "random_crop": True, "hflip": True, "pad_to_multiple": True,
        "color_jitter": False, "gaussian_blur": False, "random_grayscale": False,
    }  # fmt: skip
    assert {name: TRANSFORMS.get(name).geometric for name in TRANSFORMS} == expect

    class Unmarked(Transform):
        Params = TransformParams

        def __call__(self, image, label, g):
            return image, label

    with pytest.raises(TypeError, match="geometric"):
        register_transform("unmarked")(Unmarked)
    assert "unmarked" not in TRANSFORMS


def test_cutmix_box_probability_area_and_clipping():
    assert not cutmix_box((H, W), 0.0, (0.1, 0.25), (0.5, 2.0), gen(0)).any()
    fractions = []
    for seed in range(50):
        box = cutmix_box((100, 100), 1.0, (0.1, 0.25), (0.5, 2.0), gen(seed))
        assert box.shape == (100, 100) and box.dtype == torch.bool
        h, w = box_extent(box)
        fractions.append(h * w / 100**2)
        assert 0.5 - 0.02 <= h / w <= 2.0 + 0.05  # rounding of h and w to whole pixels
    assert 0.1 - 0.011 <= min(fractions) and max(fractions) <= 0.25 + 0.011
    assert min(fractions) < 0.13 and max(fractions) > 0.22  # the range is covered, not one size
    # 90-100 % of a 10x10 image with height/width 4 is ~19 x 5: clipped to the full height
    box = cutmix_box((10, 10), 1.0, (0.9, 1.0), (4.0, 4.0), gen(3))
    assert box_extent(box) == (10, 5)


# ---------------------------------------------------------------- domain items


def test_weak_view_is_the_plain_view_and_strong_views_share_its_geometry(tiny_raw):
    crop_flip = [{"type": "random_crop", "size": [24, 32], "cat_max_ratio": 0.75}, {"type": "hflip"}]
    d = city(tiny_raw, train_transforms=crop_flip, strong_transforms=[{"type": "random_grayscale", "p": 1.0}])
    plain, strong = d.unlabeled_view(0), d.unlabeled_view(3)
    assert plain is d.unlabeled and strong is not None and len(strong) == len(plain)
    discriminative = False
    for seed in range(4):
        key = (seed % len(plain), 1000 + seed)
        item, ref = strong[key], plain[key]
        assert set(item) == {"image", "index", "valid", "strong", "cutmix"} and set(ref) == {"image", "index"}
        assert torch.equal(item["image"], ref["image"])  # same weak draws, although the crop balances classes
        assert item["strong"].shape == (3, 3, 24, 32) and item["strong"].dtype == torch.float32
        for view in item["strong"]:
            assert torch.allclose(view, luma(item["image"]), atol=1e-3)  # same crop window and flip
        discriminative |= not torch.allclose(luma(item["image"]), luma(item["image"].flip(-1)), atol=1e-3)
    assert discriminative


def test_valid_marks_the_padding_of_a_crop_larger_than_the_image(tiny_raw):
    pad_flip = [{"type": "random_crop", "size": [40, 56]}, {"type": "hflip", "p": 1.0}]
    d = city(tiny_raw, train_transforms=pad_flip)
    item = d.unlabeled_view(1)[(0, 7)]
    valid, image = item["valid"], item["image"]
    assert valid.shape == (40, 56) and valid.dtype == torch.bool
    # padding was added at the bottom (rows 32..39) and right (cols 48..55), then mirrored to the left
    assert valid[:H, 56 - W :].all() and not valid[H:].any() and not valid[:, : 56 - W].any()
    assert (image[:, ~valid] == 0).all() and torch.equal(image, d.unlabeled_view(0)[(0, 7)]["image"])
    assert d.unlabeled_view(1)[(1, 7)]["valid"].sum() == H * W


def test_unlabeled_items_carry_their_labels_moved_with_the_weak_view_for_diagnostics(tiny_raw):
    """The label of an unlabeled item goes through the weak view's crop (with padding) and flip exactly
    as a labeled item's label does, padding becomes 255, and the image and draws do not change."""
    pad_flip = [{"type": "random_crop", "size": [40, 56]}, {"type": "hflip"}]
    d = city(tiny_raw, train_transforms=pad_flip)
    with_labels, plain = d.unlabeled_view(1, with_labels=True), d.unlabeled_view(1)
    ds, j = d.unlabeled.items[0]
    labeled = SampleView([(ds, j)], d.unlabeled.transforms, with_labels=True)
    for seed in range(3):
        item, ref, lab = with_labels[(0, seed)], plain[(0, seed)], labeled[(0, seed)]
        assert torch.equal(item["image"], ref["image"]) and torch.equal(item["strong"], ref["strong"])
        assert torch.equal(item["label"], lab["label"]) and torch.equal(item["image"], lab["image"])
        assert (item["label"][~item["valid"]] == 255).all() and (item["label"][item["valid"]] < 255).any()


def test_geometric_weak_view_drops_the_photometric_train_transforms(tiny_raw):
    flip_jitter = [{"type": "hflip", "p": 1.0}, {"type": "color_jitter", "brightness": 0.5, "p": 1.0}]
    d = city(tiny_raw, train_transforms=flip_jitter)
    ds, j = d.unlabeled.items[0]
    image = load_arrays(ds.load_image(j), None)[0]
    geometric, full = d.unlabeled_view(1, geometric_weak=True)[(0, 3)], d.unlabeled_view(1)[(0, 3)]
    assert torch.equal(geometric["image"], image.flip(-1))
    assert not torch.allclose(full["image"], image.flip(-1))


def test_cutmix_boxes_follow_the_config_and_items_are_pure(tiny_raw):
    never = city(tiny_raw, cutmix={"p": 0.0}).unlabeled_view(2)
    assert not any(never[(i, 5)]["cutmix"].any() for i in range(3))
    d = city(tiny_raw, cutmix={"p": 1.0, "area": [0.1, 0.25], "ratio": [0.5, 2.0]})
    view = d.unlabeled_view(2)
    for seed in range(3):
        boxes = view[(seed, seed)]["cutmix"]
        assert boxes.shape == (2, H, W) and boxes.dtype == torch.bool
        for box in boxes:
            h, w = box_extent(box)
            assert 0.1 - 0.02 <= h * w / (H * W) <= 0.25 + 0.02  # whole-pixel rounding on a 32x48 image
    a, b, other = view[(4, 99)], view[(4, 99)], view[(4, 100)]
    assert all(torch.equal(a[k], b[k]) for k in ("image", "valid", "strong", "cutmix"))
    assert not torch.equal(a["cutmix"], other["cutmix"]) or not torch.equal(a["strong"], other["strong"])
    assert not torch.equal(a["strong"][0], a["strong"][1])  # the views are independent draws


def test_default_strong_pipeline_is_unimatchs(tiny_raw):
    d = city(tiny_raw)
    assert d.strong_transforms.config == [
        {"type": "color_jitter", "brightness": [0.5, 1.5], "contrast": [0.5, 1.5], "saturation": [0.5, 1.5], "hue": [-0.25, 0.25], "p": 0.8},
        {"type": "random_grayscale", "p": 0.2},
        {"type": "gaussian_blur", "sigma": [0.1, 2.0], "kernel_size": None, "p": 0.5},
    ]
    assert (d.cutmix.p, d.cutmix.area, d.cutmix.ratio) == (0.5, (0.02, 0.4), (0.3, 1 / 0.3))


def test_geometric_strong_transform_is_a_config_error_naming_the_key(tiny_raw):
    with pytest.raises(ConfigError, match=r"strong_transforms\[1\]: 'hflip' is geometric.*move it to train_transforms") as e:
        city(tiny_raw, strong_transforms=[{"type": "color_jitter", "brightness": 0.2}, {"type": "hflip"}])
    assert e.value.key == "domains[0].strong_transforms[1]"  # refused when the config is validated
    with pytest.raises(ConfigError, match="cutmix.area"):
        city(tiny_raw, cutmix={"area": [0.5, 0.2]})


def test_collate_stacks_strong_items(tiny_raw):
    view = city(tiny_raw).unlabeled_view(2)
    batch = collate([view[(i, i)] for i in range(3)])
    assert batch["image"].shape == (3, 3, H, W) and batch["valid"].shape == (3, H, W)
    assert batch["strong"].shape == (3, 2, 3, H, W) and batch["cutmix"].shape == (3, 2, H, W)


# ---------------------------------------------------------------- trainer


class TwoStrongViews(Method):
    """Needs two strong views per unlabeled image; only its batches are looked at."""

    needs_unlabeled = True
    strong_views = 2


def test_trainer_batches_carry_the_strong_views(tiny_raw, tmp_path):
    tiny_raw["method"] = {"name": "test-strong-views"}
    with METHODS.temporary("test-strong-views", TwoStrongViews):
        t = Trainer(validate_config(tiny_raw), tmp_path, progress=False)
        batches = t._next_batches(t._loaders())
        for b in batches.values():
            assert set(b) == {"image", "label", "unlabeled", "unlabeled_valid", "strong", "cutmix"}
            assert b["unlabeled"].shape == (2, 3, H, W)
            assert b["unlabeled_valid"].shape == (2, H, W) and b["unlabeled_valid"].dtype == torch.bool
            assert b["unlabeled_valid"].all()  # no crop or pad: every pixel is real
            assert b["strong"].shape == (2, 2, 3, H, W) and b["strong"].dtype == torch.float32
            assert b["cutmix"].shape == (2, 2, H, W) and b["cutmix"].dtype == torch.bool
        t.method.strong_views = 0  # what a method without strong views gets: the same weak images, nothing more
        plain = t._next_batches(t._loaders())
        for name, b in plain.items():
            assert set(b) == {"image", "label", "unlabeled"}
            assert torch.equal(b["unlabeled"], batches[name]["unlabeled"])
            assert torch.equal(b["image"], batches[name]["image"])
        image = torch.zeros(2, 3, H, W)
        ragged = {"city": {"labeled": iter([{"image": image, "label": torch.zeros(2, H, W, dtype=torch.long)}]),
                           "unlabeled": iter([{"image": [image[0], image[0, :, :8]]}])}}  # fmt: skip
        with pytest.raises(DataError, match="unlabeled images of one batch differ in size") as e:
            t._next_batches(ragged)
        assert e.value.key == "domains.city.train_transforms"
