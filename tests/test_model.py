"""The universal model: heads on demand, shapes, normalisation inside, fine-tuning initialisation."""
import pytest
import torch

from univseg.models.universal import UniversalModel


@pytest.fixture
def model():
    torch.manual_seed(0)
    return UniversalModel("erfnet", {"a": 5, "b": 3}, embed_dim=6, backbone_args={"width": 0.25}).eval()


def test_outputs_at_input_size_and_embedding_at_stride_8(model):
    x = torch.rand(2, 3, 37, 53) * 255
    out = model(x, embed=True)
    assert out["a"].shape == (2, 5, 37, 53) and out["b"].shape == (2, 3, 37, 53)
    assert out["embedding"].shape[:2] == (2, 6) and out["embedding"].shape[2] == -(-37 // 8)


def test_forward_runs_only_requested_heads(model):
    calls = []
    for name, head in model.heads.items():
        head.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    emb_calls = []
    model.embedding.register_forward_hook(lambda m, i, o: emb_calls.append(1))
    out = model(torch.rand(1, 3, 32, 32) * 255, heads=["b"])
    assert list(out) == ["b"] and calls == ["b"] and emb_calls == []
    with pytest.raises(KeyError, match="no head 'c'"):
        model(torch.rand(1, 3, 32, 32), heads=["c"])


def test_multi_domain_call_routes_each_domain_to_its_head(model):
    xa, xb = torch.rand(2, 3, 32, 48) * 255, torch.rand(1, 3, 32, 48) * 255
    out = model({"a": xa, "b": xb}, embed=True)
    assert set(out) == {"a", "b"} and set(out["a"]) == {"a", "embedding"}
    # batched over domains, but the same result as separate calls (eval mode: no batch statistics)
    torch.testing.assert_close(out["a"]["a"], model(xa, heads=["a"])["a"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["b"]["b"], model(xb, heads=["b"])["b"], rtol=1e-4, atol=1e-4)


def test_list_of_batches_gets_one_encoder_pass_each_with_its_own_batch_statistics(model):
    """Train mode: [labeled, unlabeled] of every domain = the k-th batches of all domains batched
    together per pass, outputs concatenated in list order; different from one concatenated pass."""
    model.train()
    for m in model.modules():  # dropout off: only BatchNorm differs between train and eval mode
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.eval()
    torch.manual_seed(1)
    la, ua = torch.rand(2, 3, 32, 48) * 255, torch.rand(3, 3, 32, 48) * 255 + 40
    lb, ub = torch.rand(1, 3, 24, 32) * 255, torch.rand(2, 3, 24, 32) * 255
    passes = []
    model.decoder.register_forward_hook(lambda m, i, o: passes.append(i[0]["out"].shape[0]))
    out = model({"a": [la, ua], "b": [lb, ub]}, embed=True)
    assert sorted(passes) == [1, 2, 2, 3]  # four passes: (labeled|unlabeled) x (two image sizes)
    assert out["a"]["a"].shape[0] == 5 and out["a"]["embedding"].shape[0] == 5 and out["b"]["b"].shape[0] == 3
    ref_labeled, ref_unlabeled = model({"a": la}, embed=True)["a"], model({"a": ua}, embed=True)["a"]
    for key in ("a", "embedding"):
        torch.testing.assert_close(out["a"][key], torch.cat([ref_labeled[key], ref_unlabeled[key]]))
    together = model({"a": torch.cat([la, ua])}, embed=False)["a"]["a"]
    assert (together[:2] - out["a"]["a"][:2]).abs().max() > 1e-3  # shared statistics change the labeled logits


def test_normalisation_is_inside_the_model(model):
    x = torch.full((1, 3, 16, 16), 100.0)
    feats = model.features(x)
    direct = model.encoder((x - model.mean) / model.std)
    torch.testing.assert_close(feats, direct)
    assert "mean" not in model.state_dict()  # a buffer, not saved: configs carry it


def test_conv_head_variant_and_empty_heads():
    m = UniversalModel("erfnet", {"a": 4}, embed_dim=3, head_channels=8, backbone_args={"width": 0.25})
    assert m(torch.rand(1, 3, 24, 24))["a"].shape == (1, 4, 24, 24)
    with pytest.raises(ValueError, match="at least one head"):
        UniversalModel("erfnet", {}, backbone_args={"width": 0.25})


def test_init_from_checkpoint_copies_encoder_and_keeps_new_head_fresh(tmp_path, tiny_raw):
    from univseg.config import validate_config
    from univseg.engine.checkpoint import Checkpoint, init_from_checkpoint
    from univseg.errors import CheckpointError
    from univseg.models.universal import build_model
    from univseg.data.synthetic import LABEL_SPACES

    cfg = validate_config(tiny_raw)
    src = build_model(cfg.model, {"city": 9})
    ckpt = tmp_path / "src.pt"
    Checkpoint(cfg.to_dict(), {"city": LABEL_SPACES["fine"]}, src.state_dict()).save(ckpt)
    torch.manual_seed(1)
    dst = build_model(cfg.model, {"rural": 8})
    before = dst.heads["rural"].weight.clone()
    fresh = init_from_checkpoint(dst, ckpt, {"rural": LABEL_SPACES["coarse"]})
    assert fresh == ["rural"]
    assert torch.equal(dst.encoder.state_dict()["initial_block.conv.weight"], src.encoder.state_dict()["initial_block.conv.weight"])
    assert torch.equal(dst.embedding.weight, src.embedding.weight)
    assert torch.equal(dst.heads["rural"].weight, before)
    tiny_raw["model"]["embed_dim"] = 4
    other = build_model(validate_config(tiny_raw).model, {"rural": 8})
    with pytest.raises(CheckpointError, match="embedding"):
        init_from_checkpoint(other, ckpt, {"rural": LABEL_SPACES["coarse"]})


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, "none"), (True, False, "bf16"), (False, True, "bf16")])
def test_amp_auto_picks_bf16_only_on_cpus_with_native_bf16(monkeypatch, avx512_bf16, amx, expected):
    """Plain AVX-512 lets oneDNN emulate bf16 (slower than fp32): auto must not take it."""
    from univseg.engine.precision import resolve_amp

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert resolve_amp("auto", torch.device("cpu")) == expected
    assert resolve_amp("bf16", torch.device("cpu")) == "bf16" and resolve_amp("none", torch.device("cpu")) == "none"
