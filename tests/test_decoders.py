"""Decoders: output shapes at any size, batch size 1 in train mode, gradients, ASPP layout,
parameter-count formulas, option errors, and composition with a real backbone."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import univseg.models  # noqa: F401  (registers the backbones)
from univseg.errors import ConfigError, UnknownNameError
from univseg.models.backbones import build_backbone
from univseg.models.decoders import ASPP, DECODERS, Decoder, SeparableConv, build_decoder

ALL = DECODERS.names()
IN, LOW = 40, 24  # channels of the fake "out" and "low" levels


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def levels(batch: int, height: int = 67, width: int = 93) -> dict[str, torch.Tensor]:
    """Fake backbone features of a ``height x width`` image: stride 4 and stride 8, ceil-rounded."""
    return {
        "low": torch.randn(batch, LOW, -(-height // 4), -(-width // 4)),
        "out": torch.randn(batch, IN, -(-height // 8), -(-width // 8)),
    }


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def make(name: str, **args) -> Decoder:
    torch.manual_seed(0)
    return build_decoder(name, IN, LOW, **args)


def test_registry_has_the_promised_names():
    assert set(ALL) >= {"none", "deeplabv3plus", "lraspp"}


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("size", [(67, 93), (32, 48)])
def test_output_shape_at_any_size(name, size):
    decoder = make(name).eval()
    assert isinstance(decoder, Decoder) and isinstance(decoder.out_channels, int)
    feats = levels(2, *size)
    with torch.no_grad():
        y = decoder(feats)
    level = "out" if name == "none" else "low"
    assert y.shape == (2, decoder.out_channels, *feats[level].shape[-2:])
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ALL)
def test_batch_size_one_in_train_mode_reaches_every_parameter(name):
    decoder = make(name).train()
    y = decoder({k: v.requires_grad_() for k, v in levels(1).items()})
    assert y.shape[:2] == (1, decoder.out_channels)
    y.square().mean().backward()
    for pname, p in decoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


def test_none_returns_the_input_object_and_has_no_parameters():
    decoder = make("none")
    feats = levels(1)
    assert decoder(feats) is feats["out"]
    assert decoder.out_channels == IN and n_params(decoder) == 0


def test_aspp_branches_and_shapes():
    aspp = ASPP(16, channels=8, rates=(1, 2, 3), dropout=0.0).eval()
    x = torch.randn(2, 16, 9, 12)
    assert len(aspp.branches) == 5  # 1x1, three rates, image pooling
    with torch.no_grad():
        for branch in aspp.branches:
            assert branch(x).shape == (2, 8, 9, 12)
        separable = [b for b in aspp.branches if isinstance(b, SeparableConv)]
        assert [b[0].dilation for b in separable] == [(1, 1), (2, 2), (3, 3)]
        assert all(b[0].groups == 16 for b in separable)  # depthwise
        assert aspp.project[0][0].in_channels == 5 * 8 and aspp.project[0][0].out_channels == 8
        assert aspp(x).shape == (2, 8, 9, 12)


def test_deeplabv3plus_defaults():
    decoder = make("deeplabv3plus")
    rates = [b[0].dilation[0] for b in decoder.aspp.branches if isinstance(b, SeparableConv)]
    assert rates == [12, 24, 36]
    assert decoder.out_channels == 256 and decoder.low_project[0].out_channels == 48
    assert decoder.aspp.project[1].p == 0.1


def deeplabv3plus_params(C: int, I: int, K: int, L: int = 48, R: int = 3) -> int:
    """The formula of the DeepLabV3Plus docstring."""
    aspp = (I * C + 2 * C) + R * (I * (C + 11) + 2 * C) + (I * C + C) + ((R + 2) * C * C + 2 * C)
    return aspp + (K * L + 2 * L) + ((C + L) * (C + 11) + 2 * C) + (C * (C + 11) + 2 * C)


@pytest.mark.parametrize(
    "in_channels, low_level_channels, args",
    [(2048, 256, {"channels": 256}), (512, 64, {"channels": 128}), (40, 24, {"channels": 16, "rates": (1, 2), "low_channels": 8})],
)
def test_deeplabv3plus_parameter_count_matches_formula(in_channels, low_level_channels, args):
    decoder = build_decoder("deeplabv3plus", in_channels, low_level_channels, **args)
    expected = deeplabv3plus_params(
        args["channels"], in_channels, low_level_channels, args.get("low_channels", 48), len(args.get("rates", (12, 24, 36)))
    )
    assert n_params(decoder) == expected
    if in_channels == 2048:
        assert expected == 3_182_448


def test_lraspp_channels_and_parameter_count():
    decoder = build_decoder("lraspp", 2048, 256)
    assert decoder.out_channels == 128 + 48
    assert n_params(decoder) == 2 * 2048 * 128 + 2 * 128 + 256 * 48
    assert build_decoder("lraspp", IN, LOW, channels=16, low_channels=8).out_channels == 24


def test_option_errors():
    with pytest.raises(ConfigError, match=r"accepted options: channels, rates, low_channels, dropout"):
        build_decoder("deeplabv3plus", IN, LOW, chanels=128)
    with pytest.raises(ConfigError, match="accepted options: none"):
        build_decoder("none", IN, LOW, channels=8)
    with pytest.raises(UnknownNameError, match="Did you mean 'lraspp'"):
        build_decoder("lrasp", IN, LOW)
    for bad in ({"channels": 0}, {"rates": ()}, {"rates": (0, 6)}, {"dropout": 1.0}):
        with pytest.raises(ConfigError, match="model.decoder_args"):
            build_decoder("deeplabv3plus", IN, LOW, **bad)
    with pytest.raises(ConfigError, match="lraspp low_channels"):
        build_decoder("lraspp", IN, LOW, low_channels=0)


@pytest.mark.parametrize("name", ALL)
def test_composes_with_a_real_backbone(name):
    torch.manual_seed(0)
    encoder = build_backbone("erfnet", width=0.25).eval()
    decoder = build_decoder(name, encoder.out_channels, encoder.low_level_channels).eval()
    with torch.no_grad():
        y = decoder(encoder.forward_features(torch.randn(1, 3, 67, 93)))
    stride = encoder.output_stride if name == "none" else 4
    assert y.shape == (1, decoder.out_channels, -(-67 // stride), -(-93 // stride))
