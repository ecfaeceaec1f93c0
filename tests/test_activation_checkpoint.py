"""Activation checkpointing (train.activation_checkpointing): same outputs, gradients and
BatchNorm statistics as without it, far fewer activations kept for the backward pass."""
import copy

import pytest
import torch

from univseg.config import validate_config
from univseg.errors import ConfigError
from univseg.engine.checkpoint import Checkpoint
from univseg.engine.trainer import Trainer
from univseg.models.backbones import build_backbone
from univseg.models.universal import UniversalModel

BACKBONES = [("erfnet", {"width": 0.25, "dropout": 0.1}), ("mobilenet_v2", {}), ("efficientnet_lite0", {}), ("resnet18", {}), ("drn_d_22", {})]


def saved_bytes(fn):
    """Bytes of the tensors autograd keeps for the backward pass while ``fn`` runs (its result, the bytes)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total


def forward_backward(net, x, checkpointing):
    net.activation_checkpointing = checkpointing
    net.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # dropout: the recomputation must draw the same masks
    out, kept = saved_bytes(lambda: net.forward_features(x))
    (out["out"].square().mean() + out["low"].mean()).backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters()}
    return out, grads, {k: v.clone() for k, v in net.state_dict().items()}, kept


@pytest.mark.parametrize("name, kwargs", BACKBONES)
def test_checkpointed_backbone_gives_the_same_outputs_gradients_and_statistics(name, kwargs):
    torch.manual_seed(0)
    net = build_backbone(name, **kwargs).train()
    x = torch.randn(2, 3, 48, 64)
    plain_net, ckpt_net = net, copy.deepcopy(net)
    out_a, grad_a, state_a, kept_a = forward_backward(plain_net, x, False)
    out_b, grad_b, state_b, kept_b = forward_backward(ckpt_net, x, True)
    for k in ("low", "out"):
        torch.testing.assert_close(out_b[k], out_a[k], rtol=0, atol=0)
    for k in grad_a:
        torch.testing.assert_close(grad_b[k], grad_a[k], rtol=1e-5, atol=1e-7, msg=k)
    for k in state_a:  # running statistics updated once (not again by the recomputation), counters too
        assert torch.equal(state_b[k], state_a[k]), k
    assert kept_b < 0.35 * kept_a, (kept_b, kept_a)


def test_per_domain_batchnorm_is_recomputed_with_the_domain_of_the_forward_pass():
    torch.manual_seed(0)
    model = UniversalModel("erfnet", {"a": 3, "b": 4}, embed_dim=4, backbone_args={"width": 0.25, "dropout": 0.0}, norm="domain").train()
    twin = copy.deepcopy(model)
    twin.encoder.activation_checkpointing = True
    x = torch.rand(2, 3, 32, 48) * 255
    for m in (model, twin):
        out = m({"a": x, "b": x.flip(-1)}, embed=True)  # the backward runs after both domains' passes ended
        (out["a"]["a"].logsumexp(1).mean() + out["b"]["b"].square().mean() + out["b"]["embedding"].mean()).backward()
    for (k, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=k)
    sa, sb = model.state_dict(), twin.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_with_activation_checkpointing_reaches_the_same_weights(tiny_raw, tmp_path):
    runs = {}
    for flag in (False, True):
        raw = copy.deepcopy(tiny_raw)
        raw["train"].update({"activation_checkpointing": flag, "eval_interval": 0})
        Trainer(validate_config(raw), tmp_path / str(flag), progress=False).run()
        runs[flag] = Checkpoint.load(tmp_path / str(flag) / "latest.pt")
    for k, v in runs[False].model.items():
        torch.testing.assert_close(runs[True].model[k], v, rtol=1e-4, atol=1e-5)


def test_channels_last_training_reaches_the_same_weights(tiny_raw, tmp_path):
    """Rounding differs between the layouts' convolution kernels; frozen BatchNorm and SGD keep it
    from growing (batch statistics of 2 tiny images amplify it ~10x per step, Adam's first steps
    turn it into lr-sized updates)."""
    runs = {}
    for flag in (False, True):
        raw = copy.deepcopy(tiny_raw)
        raw["model"]["freeze_bn"] = True
        raw["train"].update({"channels_last": flag, "eval_interval": 0, "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9}})
        trainer = Trainer(validate_config(raw), tmp_path / str(flag), progress=False)
        conv = trainer.model.encoder.initial_block.conv.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == flag and (flag or conv.is_contiguous())
        trainer.run()
        runs[flag] = Checkpoint.load(tmp_path / str(flag) / "latest.pt")
    for k, v in runs[False].model.items():
        torch.testing.assert_close(runs[True].model[k], v, rtol=1e-4, atol=1e-5)


def test_named_units_are_the_only_ones_checkpointed():
    """A list of submodule names checkpoints the units inside them: same numbers, memory in between."""
    torch.manual_seed(0)
    net = build_backbone("drn_d_22").train()
    x = torch.randn(2, 3, 48, 64)
    runs = {spec: forward_backward(copy.deepcopy(net), x, spec) for spec in (False, ("layer0", "layer1", "layer2"), True)}
    out_a, grad_a, state_a, kept_none = runs[False]
    out_b, grad_b, state_b, kept_early = runs[("layer0", "layer1", "layer2")]
    kept_all = runs[True][3]
    torch.testing.assert_close(out_b["out"], out_a["out"], rtol=0, atol=0)
    for k in grad_a:
        torch.testing.assert_close(grad_b[k], grad_a[k], rtol=1e-5, atol=1e-7, msg=k)
    assert all(torch.equal(state_b[k], state_a[k]) for k in state_a)
    assert kept_all < kept_early < kept_none
    # naming the early stages saves most of what they keep (all but their inputs)
    _, early_kept = saved_bytes(lambda: net.layer2(net.layer1(net.layer0(x))))
    assert 0.6 * early_kept < kept_none - kept_early < early_kept


def test_naming_a_submodule_selects_every_unit_inside_it():
    net = build_backbone("resnet18")
    net.activation_checkpointing = ["layer2"]
    flags = {name: m._univseg_checkpointed for name, m in net.named_modules()}
    assert flags["layer2.0"] and flags["layer2.1"] and not flags["layer1.0"] and not flags["layer3.1"]
    assert net.activation_checkpointing == ("layer2",)


def test_an_unknown_unit_name_is_a_config_error_naming_the_key_and_the_stages():
    net = build_backbone("drn_d_22")
    with pytest.raises(ConfigError, match=r"train.activation_checkpointing.*'layr2'.*Did you mean 'layer2'.*layer0, layer1") as err:
        net.activation_checkpointing = ["layer0", "layr2"]
    assert err.value.key == "train.activation_checkpointing"
    assert net.activation_checkpointing is False
