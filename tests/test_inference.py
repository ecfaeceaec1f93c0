"""Sliding-window inference, flip and multi-scale test-time augmentation, batch prediction of videos."""
import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from univseg.cli import main
from univseg.config import validate_config
from univseg.engine.inference import InferenceSettings, infer_logits, window_starts
from univseg.errors import ConfigError
from univseg.models.universal import UniversalModel

WHOLE = InferenceSettings()


def tiny_model(**kwargs) -> UniversalModel:
    torch.manual_seed(0)
    return UniversalModel("erfnet", {"a": 3, "b": 4}, embed_dim=4, backbone_args={"width": 0.25}, **kwargs).eval()


def images(b: int = 2, h: int = 32, w: int = 48) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(1)) * 255


class WindowStub(nn.Module):
    """Logits that depend on the pixel and on the whole window: k * pixel + mean of the window."""

    def forward(self, x: torch.Tensor, heads) -> dict:
        pixel, mean = x[:, :1], x.mean(dim=(1, 2, 3), keepdim=True)
        return {h: torch.cat([k * pixel + mean for k in range(3)], 1) for h in heads}


class PixelStub(nn.Module):
    """Logits computed per pixel (a 1x1 convolution): exactly translation-equivariant."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 5, 1)

    def forward(self, x: torch.Tensor, heads) -> dict:
        return {h: self.conv(x / 255) for h in heads}


class FlipSymmetric(nn.Module):
    """A model whose logits are exactly mirror-symmetric: the mean of its logits and its mirrored image's."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, heads) -> dict:
        a, b = self.model(x, heads=heads), self.model(x.flip(-1), heads=heads)
        return {h: (a[h] + b[h].flip(-1)) / 2 for h in heads}


def slide(crop, stride, **kw) -> InferenceSettings:
    return InferenceSettings("slide", crop, stride, **kw)


@torch.no_grad()
@pytest.mark.parametrize("crop", [(32, 48), (40, 64)])
def test_one_window_covering_the_image_equals_whole_image(crop):
    model, x = tiny_model(), images()
    whole = infer_logits(model, x, ["a", "b"])
    got = infer_logits(model, x, ["a", "b"], slide(crop, (8, 8)))
    assert set(got) == {"a", "b"} and got["a"].shape == (2, 3, 32, 48) and got["b"].shape == (2, 4, 32, 48)
    for h in ("a", "b"):
        torch.testing.assert_close(got[h], whole[h], rtol=0, atol=1e-5)


@pytest.mark.parametrize("length,crop,stride", [(48, 20, 12), (10, 4, 3), (13, 5, 2), (9, 9, 4), (7, 9, 3), (16, 4, 4), (17, 4, 4)])
def test_windows_cover_every_pixel_and_end_at_the_border(length, crop, stride):
    starts = window_starts(length, crop, stride)
    assert starts[0] == 0 and min(starts[-1] + crop, length) == length
    assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))
    covered = np.zeros(length, int)
    for s in starts:
        covered[s:s + crop] += 1
    assert covered.min() >= 1
    assert window_starts(48, 20, 12) == [0, 12, 24, 28]


@torch.no_grad()
def test_overlapping_windows_average_logits_per_pixel():
    x, crop, stride = images(1, 10, 13), (4, 5), (3, 2)
    got = infer_logits(WindowStub(), x, ["a"], slide(crop, stride))["a"][0]
    windows = [(y, c) for y in window_starts(10, 4, 3) for c in window_starts(13, 5, 2)]
    expected = torch.zeros(3, 10, 13)
    for i in range(10):
        for j in range(13):
            inside = [(y, c) for y, c in windows if y <= i < y + crop[0] and c <= j < c + crop[1]]
            values = [WindowStub()(x[..., y:y + crop[0], c:c + crop[1]], ["a"])["a"][0, :, i - y, j - c] for y, c in inside]
            expected[:, i, j] = torch.stack(values).mean(0)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


@torch.no_grad()
def test_slide_of_a_per_pixel_model_equals_whole_image():
    model, x = PixelStub(), images(2, 30, 41)
    got = infer_logits(model, x, ["a"], slide((16, 16), (5, 7)))["a"]
    torch.testing.assert_close(got, infer_logits(model, x, ["a"])["a"], rtol=0, atol=1e-5)


@torch.no_grad()
def test_flip_of_a_flip_symmetric_model_changes_nothing():
    model, x = FlipSymmetric(tiny_model()), images(1)
    torch.testing.assert_close(
        infer_logits(model, x, ["b"], InferenceSettings(flip=True))["b"], infer_logits(model, x, ["b"])["b"], rtol=0, atol=1e-5
    )


@torch.no_grad()
def test_flip_and_scales_average_the_views():
    model, x = tiny_model(), images(1)
    plain = model(x, heads=["a"])["a"]
    mirrored = model(x.flip(-1), heads=["a"])["a"].flip(-1)
    got = infer_logits(model, x, ["a"], InferenceSettings(flip=True))["a"]
    torch.testing.assert_close(got, (plain + mirrored) / 2, rtol=0, atol=1e-5)
    assert torch.equal(infer_logits(model, x, ["a"], InferenceSettings(scales=(1.0,)))["a"], plain)
    half = model(F.interpolate(x, size=(16, 24), mode="bilinear", align_corners=False), heads=["a"])["a"]
    half = F.interpolate(half, size=(32, 48), mode="bilinear", align_corners=False)
    got = infer_logits(model, x, ["a"], InferenceSettings(scales=(0.5, 1.0)))["a"]
    torch.testing.assert_close(got, (half + plain) / 2, rtol=0, atol=1e-5)


@torch.no_grad()
def test_per_domain_norm_uses_each_heads_domain_through_slide_and_flip():
    model = tiny_model(norm="domain").train()
    model({"a": torch.rand(2, 3, 32, 48) * 255, "b": torch.rand(2, 3, 32, 48) * 100})  # different statistics per domain
    model.eval()
    x = images()
    got = infer_logits(model, x, ["a", "b"], slide((32, 48), (16, 16), flip=True, scales=(1.0,)))
    for h in ("a", "b"):
        own = (model(x, heads=[h], domain=h)[h] + model(x.flip(-1), heads=[h], domain=h)[h].flip(-1)) / 2
        torch.testing.assert_close(got[h], own, rtol=0, atol=1e-5)
    assert not torch.allclose(got["a"], model(x, heads=["a"], domain="b")["a"], atol=1e-3)
    overlapping = infer_logits(model, x, ["a"], slide((16, 32), (8, 8), flip=True, scales=(0.75, 1.0)))["a"]
    assert overlapping.shape == (2, 3, 32, 48) and torch.isfinite(overlapping).all()


def test_default_config_keeps_whole_image_inference(tiny_raw):
    cfg = validate_config(tiny_raw)
    assert InferenceSettings.from_config(cfg.eval) == WHOLE
    assert (cfg.eval.mode, cfg.eval.crop, cfg.eval.stride, cfg.eval.flip, cfg.eval.scales) == ("whole", None, None, False, [1.0])


@pytest.mark.parametrize("ev,message", [
    ({"mode": "slide"}, "eval.crop: needed with mode 'slide'"),
    ({"mode": "slide", "crop": [16, 16]}, "eval.stride: needed with mode 'slide'"),
    ({"mode": "slide", "crop": [16, 16], "stride": [8, 20]}, "eval.stride: [8, 20] is larger than the crop [16, 16]"),
    ({"mode": "sliding"}, "eval.mode: Input should be 'whole' or 'slide'"),
    ({"crop": [0, 16]}, "eval.crop[0]: Input should be greater than 0"),
    ({"scales": []}, "eval.scales: List should have at least 1 item"),
    ({"scales": [1.0, -0.5]}, "eval.scales[1]: Input should be greater than 0"),
    ({"flipp": True}, "eval.flipp: unknown key. Did you mean 'flip'?"),
])
def test_config_errors_name_the_key(tiny_raw, ev, message):
    tiny_raw["eval"] = ev
    with pytest.raises(ConfigError) as e:
        validate_config(tiny_raw, source="x.yaml")
    assert message in str(e.value) and "x.yaml" in str(e.value)


def test_settings_errors_name_the_setting():
    with pytest.raises(ConfigError, match=r"stride: \[9, 4\] is larger than the crop \[8, 8\]") as e:
        slide((8, 8), (9, 4))
    assert e.value.key == "stride"
    with pytest.raises(ConfigError, match="crop: needed with mode 'slide'"):
        InferenceSettings(mode="slide")
    assert slide([8, 8], [4, 4]).crop == (8, 8)


# ----------------------------------------------------------------------------- end to end: Predictor and CLI


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny checkpoint trained through the CLI (32x48 synthetic images)."""
    from conftest import train_tiny_with_cli

    cfg, work = train_tiny_with_cli(tmp_path_factory.mktemp("inference"), "train.iters=2", "train.eval_interval=0")
    return cfg, work / "latest.pt"


def test_predictor_uses_its_inference_settings(trained):
    from univseg import Predictor

    _, ckpt = trained
    image = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", amp="none")
    whole = predictor.logits(image, "city")
    predictor.inference = slide((32, 48), (8, 8))
    torch.testing.assert_close(predictor.logits(image, "city"), whole, rtol=0, atol=1e-5)
    tta = Predictor.from_checkpoint(ckpt, device="cpu", amp="none", inference=slide((16, 32), (16, 16), flip=True, scales=(0.5, 1.0)))
    assert not torch.allclose(tta.logits(image, "city"), whole)
    both = tta.predict_all(image)
    assert all(np.array_equal(both[h], tta.predict(image, h)) for h in ("city", "rural"))


def write_video(path, frames: int = 3, h: int = 32, w: int = 48) -> None:
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_predict_a_folder_and_a_video_with_sliding_windows(trained, tmp_path):
    _, ckpt = trained
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / "sub" / "b.png")
    video = tmp_path / "clip.mp4"
    write_video(video)
    out = tmp_path / "out"
    args = ["predict", str(ckpt), str(folder), str(video), "--out", str(out), "--label-space", "city",
            "--mode", "slide", "--crop", "16", "32", "--stride", "8", "16", "--flip", "--scales", "0.75", "1.0"]
    assert main(args + ["--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_city.png", "a_city_overlay.png", "b_city.png", "b_city_overlay.png", "clip"]
    frames = sorted(p.name for p in (out / "clip").iterdir())
    assert frames == [f"frame_{k:06d}_city{s}.png" for k in range(3) for s in ("", "_overlay")]
    ids = np.asarray(Image.open(out / "clip" / "frame_000002_city.png"))
    assert ids.shape == (32, 48) and ids.max() < 9
    overlay = np.asarray(Image.open(out / "clip" / "frame_000000_city_overlay.png"))  # 32x48 frame, legend under it
    assert overlay.shape[0] > 32 and overlay.shape[1] >= 48 and overlay.shape[2] == 3


def test_predict_errors_name_the_flag_or_the_missing_extra(trained, tmp_path, capsys, monkeypatch):
    _, ckpt = trained
    video = tmp_path / "clip.mp4"
    write_video(video, frames=1)
    assert main(["predict", str(ckpt), str(video), "--out", str(tmp_path / "o"), "--mode", "slide", "--crop", "8", "8"]) == 2
    assert "stride: needed with mode 'slide'" in capsys.readouterr().err
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    assert main(["predict", str(ckpt), str(broken), "--out", str(tmp_path / "o")]) == 2
    assert f"cannot read video {broken}" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    assert main(["predict", str(ckpt), str(video), "--out", str(tmp_path / "o")]) == 2
    assert 'pip install "univseg[video]"' in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_eval_with_a_window_covering_the_image_matches_whole_image(trained, tmp_path, capsys):
    cfg, ckpt = trained
    results = {}
    for name, flags in {
        "whole": [],
        "slide": ["--mode", "slide", "--crop", "32", "48", "--stride", "16", "16"],
        "tta": ["--mode", "slide", "--crop", "16", "32", "--stride", "8", "16", "--flip", "--scales", "0.75", "1.0"],
    }.items():
        out = tmp_path / f"{name}.json"
        assert main(["eval", str(cfg), str(ckpt), "--out", str(out), "--no-progress", *flags]) == 0
        results[name] = json.loads(out.read_text())
    for domain in ("city", "rural"):
        assert results["slide"]["domains"][domain]["mIoU"] == pytest.approx(results["whole"]["domains"][domain]["mIoU"], abs=1e-9)
        assert 0 <= results["tta"]["domains"][domain]["mIoU"] <= 1
    assert main(["eval", str(cfg), str(ckpt), "--out", str(tmp_path / "x.json"), "--mode", "slide"]) == 2
    assert "eval.crop: needed with mode 'slide'" in capsys.readouterr().err
