"""timm encoders (``model.backbone: timm/<name>``): both feature levels at output stride 8 and 16,
a training run through the trainer, checkpoint round trip, ONNX export parity, per-domain
BatchNorm, the offline pretrained-weights error and the config errors. Random-init small models."""
from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from univseg.config import validate_config
from univseg.engine.checkpoint import Checkpoint
from univseg.engine.predictor import Predictor
from univseg.engine.trainer import Trainer
from univseg.errors import CheckpointError, ConfigError, UnknownNameError
from univseg.models.backbones import build_backbone
from univseg.models.domain_norm import domain_norm_layers
from univseg.models.universal import UniversalModel

timm = pytest.importorskip("timm")

MODELS = ["resnet18", "mobilenetv3_small_050", "efficientnet_b0", "convnext_atto"]


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", MODELS)
def test_both_feature_levels_at_the_output_stride(name, output_stride):
    torch.manual_seed(0)
    net = build_backbone(f"timm/{name}", output_stride=output_stride).eval()
    assert net.output_stride == output_stride
    with torch.no_grad():
        feats = net.forward_features(torch.randn(2, 3, 64, 96))
    assert feats["low"].shape == (2, net.low_level_channels, 16, 24)
    assert feats["out"].shape == (2, net.out_channels, 64 // output_stride, 96 // output_stride)
    model = UniversalModel(f"timm/{name}", {"a": 5}, embed_dim=4, decoder="deeplabv3plus",
                           backbone_args={"output_stride": output_stride}, decoder_args={"channels": 16}).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 96) * 255)["a"].shape == (1, 5, 64, 96)


def timm_raw(tiny_raw: dict, name: str, **model: object) -> dict:
    raw = copy.deepcopy(tiny_raw)
    raw["model"] = {"backbone": f"timm/{name}", "backbone_args": {"output_stride": 16}, "embed_dim": 8,
                    "decoder": "deeplabv3plus", "decoder_args": {"channels": 16}, **model}
    raw["train"].update({"iters": 2, "eval_interval": 0, "checkpoint_interval": 2})
    raw["eval"]["batch_size"] = 2
    return raw


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])
def test_training_changes_the_encoder_and_the_checkpoint_predicts_the_same(tiny_raw, tmp_path, name):
    """A trainer run (per-domain BatchNorm, activation checkpointing) updates the timm weights;
    latest.pt rebuilds the same model (weights_only load) and predicts the same logits."""
    raw = timm_raw(tiny_raw, name, norm="domain")
    raw["train"]["activation_checkpointing"] = True
    trainer = Trainer(validate_config(raw), tmp_path, progress=False)
    before = {k: v.clone() for k, v in trainer.model.encoder.state_dict().items()}
    trainer.run()
    after = trainer.model.encoder.state_dict()
    changed = [k for k in before if k.endswith("weight") and not torch.equal(before[k], after[k])]
    assert len(changed) > 0.5 * sum(k.endswith("weight") for k in before)
    if name == "resnet18":  # BatchNorm: one copy per domain; ConvNeXt has LayerNorm only
        assert len(domain_norm_layers(trainer.model)) > 10
    predictor = Predictor.from_checkpoint(tmp_path / "latest.pt", device="cpu", amp="none")
    x = torch.rand(1, 3, 32, 48) * 255
    trainer.model.eval()
    with torch.no_grad():
        for head in ("city", "rural"):
            torch.testing.assert_close(predictor.model(x, heads=[head])[head], trainer.model(x, heads=[head])[head])
    saved = Checkpoint.load(tmp_path / "latest.pt")
    assert saved.config["model"]["backbone"] == f"timm/{name}"


@pytest.mark.parametrize("name", ["mobilenetv3_small_050", "efficientnet_b0"])
def test_onnx_export_matches_pytorch(tmp_path, name):
    pytest.importorskip("onnxruntime")
    from conftest import TINY

    from univseg.data.synthetic import LABEL_SPACES
    from univseg.engine.export import export_model, verify_export

    raw = timm_raw(TINY, name, norm="domain")
    torch.manual_seed(0)
    m = UniversalModel(f"timm/{name}", {"city": 9, "rural": 8}, embed_dim=8, backbone_args={"output_stride": 16},
                       decoder="deeplabv3plus", decoder_args={"channels": 16}, norm="domain").train()
    m({"city": torch.rand(2, 3, 64, 64) * 255, "rural": torch.rand(2, 3, 64, 64) * 100})  # distinct BatchNorm statistics
    ckpt = Checkpoint(validate_config(raw).to_dict(), {"city": LABEL_SPACES["fine"], "rural": LABEL_SPACES["coarse"]}, m.state_dict())
    ckpt.save(tmp_path / "m.pt")
    out = export_model(tmp_path / "m.pt", "onnx", "all", tmp_path / "m.onnx")
    reference = Predictor.from_checkpoint(tmp_path / "m.pt", device="cpu", amp="none")
    check = verify_export(reference, out, images=[], sizes=[(64, 96), (80, 64)])
    assert check.ok, check.format()
    assert len(check.comparisons) == 4 and all(c.agreement > 0.999 for c in check.comparisons)


def test_activation_checkpointing_recomputes_the_timm_stages():
    """The stages are recomputed (fewer activations kept), with the same gradients and statistics."""
    from test_activation_checkpoint import forward_backward

    torch.manual_seed(0)
    net = build_backbone("timm/resnet18", output_stride=16).train()
    x = torch.randn(2, 3, 64, 64)
    out_a, grad_a, state_a, kept_a = forward_backward(copy.deepcopy(net), x, False)
    out_b, grad_b, state_b, kept_b = forward_backward(copy.deepcopy(net), x, True)
    torch.testing.assert_close(out_b["out"], out_a["out"], rtol=0, atol=0)
    for k in grad_a:
        torch.testing.assert_close(grad_b[k], grad_a[k], rtol=1e-5, atol=1e-6, msg=k)
    assert all(torch.equal(state_b[k], state_a[k]) for k in state_a)
    assert kept_b < 0.35 * kept_a, (kept_b, kept_a)
    net.activation_checkpointing = ["body.layer4"]
    flags = {name: m._univseg_checkpointed for name, m in net.named_modules()}
    assert flags["body.layer4.1"] and not flags["body.layer3.0"]


def test_pretrained_imagenet_offline_names_the_file_and_how_to_place_it(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as err:
        build_backbone("timm/resnet18", pretrained="imagenet")
    message = str(err.value)
    assert "timm/resnet18.a1_in1k" in message and "model.safetensors" in message, message
    assert "huggingface-cli download timm/resnet18.a1_in1k" in message and "models--timm--resnet18.a1_in1k" in message
    assert err.value.key == "model.pretrained"


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])
def test_a_weights_file_in_timms_layout_loads_through_timm(tmp_path, name):
    """The file a user downloads (the whole classifier's state dict, timm's key names) loads, read without
    executing code; the classifier is dropped and nested names (ConvNeXt's stages.0 -> stages_0) are
    mapped by timm. A file that is not one, or holds another architecture, is refused naming it."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    full = timm.create_model(name, pretrained=False)
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, tmp_path / "model.safetensors")
    torch.save(full.state_dict(), tmp_path / "model.pth")
    torch.save({"state_dict": full.state_dict()}, tmp_path / "wrapped.pth")  # a training script's checkpoint
    stem = dict(full.named_parameters())[next(iter(dict(full.named_parameters())))]
    for file in ("model.safetensors", "model.pth", "wrapped.pth"):
        loaded = build_backbone(f"timm/{name}", pretrained=str(tmp_path / file))
        first = next(p for k, p in loaded.named_parameters())
        assert torch.equal(first, stem), file
    with pytest.raises(CheckpointError, match=r"backbone weights file not found: .*missing.pth"):
        build_backbone(f"timm/{name}", pretrained=str(tmp_path / "missing.pth"))
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"could not read the safetensors file .*broken.safetensors"):
        build_backbone(f"timm/{name}", pretrained=str(tmp_path / "broken.safetensors"))
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=rf"other.pth does not hold the weights of timm model '{name}'"):
        build_backbone(f"timm/{name}", pretrained=str(tmp_path / "other.pth"))


def test_imagenet_config_takes_the_weights_normalisation(tiny_raw):
    raw = timm_raw(tiny_raw, "mobilenetv3_small_050", pretrained="imagenet")
    cfg = validate_config(raw)  # no download: only the pretrained config is read
    expected = timm.models.get_pretrained_cfg("mobilenetv3_small_050")
    assert cfg.model.mean == pytest.approx(tuple(255 * m for m in expected.mean))
    assert cfg.model.std == pytest.approx(tuple(255 * s for s in expected.std))


def test_config_errors_name_the_key(tiny_raw, monkeypatch):
    with pytest.raises(ConfigError, match=r"model.backbone: .*unknown timm model 'resnt18'. Did you mean 'resnet18'"):
        validate_config(timm_raw(tiny_raw, "resnt18"))
    with pytest.raises(ConfigError, match=r"model.backbone_args.output_stride: timm model 'vit_tiny_patch16_224' cannot dilate"):
        build_backbone("timm/vit_tiny_patch16_224", output_stride=16)
    with pytest.raises(ConfigError, match=r"no stride-4 feature map"):
        build_backbone("timm/vit_tiny_patch16_224", output_stride=32)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "timm" else real_find_spec(n, *a))
    with pytest.raises(ConfigError, match=r'model.backbone: .*need the timm package: pip install "univseg\[timm\]"') as err:
        validate_config(timm_raw(tiny_raw, "resnet18"))
    assert err.value.key == "model.backbone"


def test_unknown_backbone_lists_the_timm_family():
    with pytest.raises(UnknownNameError, match=r"Available: .*resnet18.*timm/<name>"):
        build_backbone("resnt")
