"""Backbones: both feature levels, shapes at stride 8, gradients, determinism, lookup errors and weight loading."""
from __future__ import annotations

import inspect
import math
import warnings

import pytest
import torch
from torch import nn

import univseg.models  # noqa: F401  (the package import registers the backbones)
from univseg.models.backbones import BACKBONES, Backbone, build_backbone, load_backbone_weights
from univseg.models.backbones.resnet import dilate_layer
from univseg.errors import CheckpointError, ConfigError, UnknownNameError

ALL = BACKBONES.names()


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def small(name: str, **kw) -> Backbone:
    """Build ``name`` fast where it has a size knob (the erfnet width)."""
    torch.manual_seed(0)
    return build_backbone(name, **kw)


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_has_the_promised_names():
    assert set(ALL) == {"erfnet", "drn_d_22", "drn_d_38", "resnet18", "resnet50", "resnet101",
                        "mobilenet_v2", "efficientnet_lite0"}


@pytest.mark.parametrize("name", ALL)
def test_train_step_reaches_first_conv(name):
    model = small(name).train()
    assert isinstance(model, Backbone)
    assert isinstance(model.out_channels, int) and model.output_stride == 8
    y = model(torch.randn(2, 3, 32, 48))
    assert y.shape == (2, model.out_channels, 4, 6)
    y.square().mean().backward()
    grad = first_conv(model).weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_eval_shapes_any_size_and_determinism(name):
    model = small(name).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, model.out_channels, 8, 12)
        x = torch.randn(1, 3, 67, 101)  # not a multiple of 8: ceil(67/8) x ceil(101/8)
        a, b = model(x), model(x)
    assert a.shape == (1, model.out_channels, math.ceil(67 / 8), math.ceil(101 / 8))
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)


def small_args(name: str) -> dict:
    """A small width for backbones that have a ``width`` option (erfnet: 0.25)."""
    return {"width": 0.25} if "width" in inspect.signature(BACKBONES.get(name).build).parameters else {}


@pytest.mark.parametrize("name", ALL)
def test_forward_features_has_both_levels_and_forward_is_out(name):
    model = small(name, **small_args(name)).eval()
    assert isinstance(model.low_level_channels, int)
    x = torch.randn(2, 3, 67, 93)  # odd sizes: every level is ceil(size / stride)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model(x)
    assert set(feats) == {"low", "out"}
    assert feats["low"].shape == (2, model.low_level_channels, math.ceil(67 / 4), math.ceil(93 / 4))
    s = model.output_stride
    assert feats["out"].shape == (2, model.out_channels, math.ceil(67 / s), math.ceil(93 / s))
    assert torch.equal(out, feats["out"])


def test_unknown_name_lists_names_and_suggests():
    with pytest.raises(UnknownNameError) as info:
        build_backbone("erfnt")
    msg = str(info.value)
    assert "Did you mean 'erfnet'?" in msg
    for name in ALL:
        assert name in msg


def test_unknown_option_lists_accepted_ones():
    with pytest.raises(ConfigError, match="width"):
        build_backbone("resnet18", width=0.5)
    with pytest.raises(ConfigError, match="accepted options: width, dropout"):
        build_backbone("erfnet", widht=0.5)


def test_erfnet_width_and_dropout():
    half = build_backbone("erfnet", width=0.5, dropout=0.0)
    assert half.out_channels == 64
    assert all(m.p == 0.0 for m in half.modules() if isinstance(m, nn.Dropout2d))
    assert half(torch.randn(1, 3, 40, 56)).shape == (1, 64, 5, 7)
    assert n_params(half) < n_params(build_backbone("erfnet")) / 3
    ps = sorted({m.p for m in build_backbone("erfnet").modules() if isinstance(m, nn.Dropout2d)})
    assert ps == [0.03, 0.3]  # ERFNet's own values by default
    with pytest.raises(ValueError):
        build_backbone("erfnet", width=0)


def test_parameter_counts_are_plausible():
    assert 1.8e6 <= n_params(build_backbone("erfnet")) <= 2.1e6
    assert 11.0e6 <= n_params(build_backbone("resnet18")) <= 11.3e6  # 11.69M minus the 0.51M fc
    assert 15.0e6 <= n_params(build_backbone("drn_d_22")) <= 16.0e6  # 16.4M minus the 0.51M fc
    assert 25.5e6 <= n_params(build_backbone("drn_d_38")) <= 26.5e6
    assert 23.0e6 <= n_params(build_backbone("resnet50")) <= 24.0e6


def test_dilate_layer_matches_torchvision_for_bottlenecks():
    from torchvision import models as tvm

    ref = tvm.resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
    ours = build_backbone("resnet50")

    def geometry(m):
        return {
            n: (c.stride, c.dilation, c.padding)
            for n, c in m.named_modules()
            if isinstance(c, nn.Conv2d)
        }

    assert geometry(ours) == geometry(ref)
    assert set(ref.state_dict()) - set(ours.state_dict()) == {"fc.weight", "fc.bias"}


def test_dilate_layer_on_basic_blocks():
    from torchvision import models as tvm

    layer = tvm.resnet18(weights=None).layer4
    dilate_layer(layer, 4)
    convs = {n: c for n, c in layer.named_modules() if isinstance(c, nn.Conv2d)}
    assert all(c.stride == (1, 1) for c in convs.values())
    assert convs["0.conv1"].dilation == (2, 2) and convs["0.conv1"].padding == (2, 2)
    assert convs["0.conv2"].dilation == (4, 4) and convs["1.conv1"].dilation == (4, 4)
    assert convs["0.downsample.0"].dilation == (1, 1)


# ---------------------------------------------------------------- weight files


def params_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def randomised(name: str, **kw) -> Backbone:
    """An instance whose BN statistics are non-default too, so a round trip is meaningful."""
    torch.manual_seed(1)
    model = build_backbone(name, **kw)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("name", ["erfnet", "drn_d_22", "resnet18"])
def test_local_weights_round_trip(tmp_path, name):
    src = randomised(name)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    torch.manual_seed(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a full match must not warn
        dst = build_backbone(name, pretrained=str(path))
    assert params_equal(src, dst)
    assert not params_equal(src, small(name))


def test_wrapped_and_prefixed_files_load(tmp_path):
    src = randomised("erfnet", width=0.25)
    sd = src.state_dict()
    variants = {
        "module": {f"module.{k}": v for k, v in sd.items()},
        "state_dict": {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
        "model": {"model": dict(sd), "optimizer": {"lr": 0.1}},
        # a whole ERFNet (encoder + decoder + classifier), as saved by the reference code
        "full": {**{f"module.encoder.{k}": v for k, v in sd.items()},
                 "module.encoder.output_conv.weight": torch.zeros(20, 32, 1, 1),
                 "module.decoder.output_conv.weight": torch.zeros(16, 20, 2, 2)},
    }
    for tag, obj in variants.items():
        path = tmp_path / f"{tag}.pth"
        torch.save(obj, path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            dst = build_backbone("erfnet", width=0.25, pretrained=path)
        assert params_equal(src, dst), tag


def test_classifier_keys_are_ignored_and_old_bn_counters_tolerated(tmp_path):
    src = randomised("resnet18")
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    path = tmp_path / "imagenet_like.pth"
    torch.save(sd, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dst = build_backbone("resnet18", pretrained=path)
    for k, v in src.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(v, dst.state_dict()[k])


def test_partial_file_warns_with_missing_and_unexpected_keys(tmp_path):
    sd = randomised("drn_d_22").state_dict()
    part = {k: v for k, v in sd.items() if k.startswith("layer0.")}
    part["extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save(part, path)
    with pytest.warns(UserWarning, match=r"missing key\(s\).*layer1\.0\.weight.*unexpected.*extra\.weight"):
        dst = build_backbone("drn_d_22", pretrained=path)
    assert torch.equal(dst.layer0[0].weight, sd["layer0.0.weight"])


def test_missing_file_raises_with_the_path(tmp_path):
    path = tmp_path / "nope" / "weights.pth"
    with pytest.raises(CheckpointError, match="nope"):
        build_backbone("erfnet", pretrained=str(path))


def test_file_without_matching_keys_raises(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(2), "bar.bias": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=r"no key .* matches.*foo\.weight"):
        build_backbone("resnet18", pretrained=path)


def test_shape_mismatch_raises(tmp_path):
    path = tmp_path / "wide.pth"
    torch.save(build_backbone("erfnet").state_dict(), path)
    with pytest.raises(CheckpointError, match="wrong shape"):
        build_backbone("erfnet", width=0.5, pretrained=path)


def test_file_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": build_backbone("erfnet", width=0.25).state_dict(), "cfg": Exploit()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        build_backbone("erfnet", width=0.25, pretrained=path)


class Exploit:  # any non-allowlisted class; unpickling it would run arbitrary code paths
    pass


def test_erfnet_imagenet_is_a_clear_error():
    with pytest.raises(ValueError, match="erfnet.*ImageNet.*local"):
        build_backbone("erfnet", pretrained="imagenet")


def test_load_backbone_weights_accepts_a_state_dict():
    src = randomised("erfnet", width=0.25)
    dst = build_backbone("erfnet", width=0.25)
    report = load_backbone_weights(dst, {"model": src.state_dict()})
    assert params_equal(src, dst)
    assert not report.missing and not report.unexpected and len(report.loaded) == len(src.state_dict())


# ---------------------------------------------------------------- mobilenet_v2, efficientnet_lite0

DILATABLE = ["mobilenet_v2", "efficientnet_lite0"]


@pytest.mark.parametrize("name", DILATABLE)
@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilatable_backbones_at_both_output_strides(name, output_stride):
    model = small(name, output_stride=output_stride).eval()
    assert model.output_stride == output_stride
    assert (model.low_level_channels, model.out_channels) == (24, 1280)
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 67, 93))
    assert set(feats) == {"low", "out"}
    assert feats["low"].shape == (1, 24, math.ceil(67 / 4), math.ceil(93 / 4))
    assert feats["out"].shape == (1, 1280, math.ceil(67 / output_stride), math.ceil(93 / output_stride))


@pytest.mark.parametrize("name", DILATABLE)
def test_output_stride_changes_geometry_not_parameters(name):
    a, b = small(name, output_stride=8), small(name, output_stride=16)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    dilations = sorted({c.dilation[0] for c in a.modules() if isinstance(c, nn.Conv2d)})
    assert dilations == [1, 2, 4]  # OS 8: the stride-16 stage at rate 2, the stride-32 stage at rate 4
    assert sorted({c.dilation[0] for c in b.modules() if isinstance(c, nn.Conv2d)}) == [1, 2]
    with pytest.raises(ConfigError, match="output_stride: must be one of 8, 16, got 32"):
        build_backbone(name, output_stride=32)


def test_dilation_schedule_follows_deeplab():
    from univseg.models.backbones.dilation import dilation_schedule, last_unit_at_stride

    strides = [2, 1, 2, 1, 2, 1, 2, 1, 2, 1]
    assert dilation_schedule(strides, 8) == [(2, 1), (1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (1, 1), (1, 2), (1, 2), (1, 4)]
    assert dilation_schedule(strides, 16) == [(2, 1), (1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (2, 1), (1, 1), (1, 1), (1, 2)]
    assert last_unit_at_stride(strides, 4) == 3


def test_mobilenet_v2_keeps_torchvision_module_names():
    from torchvision import models as tvm

    ref = tvm.mobilenet_v2(weights=None).state_dict()
    ours = build_backbone("mobilenet_v2").state_dict()
    assert set(ref) - set(ours) == {"classifier.1.weight", "classifier.1.bias"}
    assert set(ours) <= set(ref)


def test_efficientnet_lite0_layout():
    from univseg.models.backbones.efficientnet_lite import Conv2dSame, MBConvBlock

    model = build_backbone("efficientnet_lite0")
    blocks = [b for b in model._blocks if isinstance(b, MBConvBlock)]
    assert len(blocks) == 16 and blocks[0]._expand_conv is None and blocks[1]._expand_conv is not None
    assert not any(isinstance(m, (nn.SiLU, nn.Sigmoid)) for m in model.modules())  # lite: no swish, no SE
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    sd = model.state_dict()
    assert "_blocks.15._project_conv.weight" in sd and sd["_conv_head.weight"].shape == (1280, 320, 1, 1)
    # TensorFlow "SAME" padding: stride 2 on an even size pads one row at the bottom only
    conv = Conv2dSame(1, 1, 3, stride=2)
    nn.init.ones_(conv.weight)
    y = conv(torch.ones(1, 1, 4, 4))
    assert y.shape == (1, 1, 2, 2) and y[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]


def test_dilatable_parameter_counts():
    assert 2.1e6 <= n_params(build_backbone("mobilenet_v2")) <= 2.3e6  # 3.50M minus the 1.28M classifier
    assert 3.3e6 <= n_params(build_backbone("efficientnet_lite0")) <= 3.45e6  # 4.65M minus the 1.28M classifier
