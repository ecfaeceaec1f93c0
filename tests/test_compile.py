"""train.compile: the encoder and decoder through torch.compile give the eager numbers up to rounding,
with per-domain BatchNorm, activation checkpointing and two torchrun processes, and leave the weights'
names alone."""
import copy

import pytest
import torch
import yaml

from conftest import torchrun_train
from univseg.config import validate_config
from univseg.engine.checkpoint import Checkpoint
from univseg.engine.trainer import Trainer
from univseg.errors import ConfigError
from univseg.models.universal import UniversalModel

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_compiled_model_matches_eager_per_domain_with_checkpointing():
    """Outputs and each domain's running statistics with live BatchNorm; gradients with frozen
    BatchNorm (batch statistics of this tiny network amplify rounding differences between the fused
    and the eager kernels into gradient differences of 1e-3 relative either way, f64 as the judge)."""
    torch.manual_seed(0)
    eager = UniversalModel(
        "erfnet", {"a": 3, "b": 4}, embed_dim=4, backbone_args={"width": 0.25, "dropout": 0.0}, norm="domain"
    ).train()
    compiled = copy.deepcopy(eager).use_compile()
    compiled.encoder.activation_checkpointing = True
    assert compiled.compiled and not eager.compiled
    x = torch.rand(2, 3, 32, 48) * 255
    for m in (eager, compiled):
        m.out = m({"a": x, "b": x.flip(-1)}, embed=True)
    for d, head in (("a", "a"), ("b", "b"), ("b", "embedding")):
        torch.testing.assert_close(compiled.out[d][head], eager.out[d][head], rtol=1e-4, atol=1e-4)
    sa, sb = eager.state_dict(), compiled.state_dict()
    assert list(sa) == list(sb)  # no wrapper prefix in the names: checkpoints stay interchangeable
    for k in sa:  # each domain's running statistics updated once, by its own pass
        torch.testing.assert_close(sb[k], sa[k], rtol=1e-5, atol=1e-6, msg=k)
    for m in (eager, compiled):
        m.freeze_bn = True
        m.train()
        m.zero_grad()
        out = m({"a": x, "b": x.flip(-1)}, embed=True)
        (out["a"]["a"].logsumexp(1).mean() + out["b"]["b"].square().mean() + out["b"]["embedding"].mean()).backward()
    for (k, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=k)
    eager.eval(), compiled.eval()
    with torch.inference_mode():
        for head in ("a", "b"):
            torch.testing.assert_close(compiled(x, heads=[head])[head], eager(x, heads=[head])[head], rtol=1e-4, atol=1e-4)
    assert not compiled.use_compile(False).compiled


def test_training_compiled_reaches_the_eager_weights(tiny_raw, tmp_path):
    """Frozen BatchNorm and SGD, as for channels_last: rounding differs between the fused and the
    eager kernels, and batch statistics of 2 tiny images would amplify it step by step."""
    runs = {}
    for flag in (False, True):
        raw = copy.deepcopy(tiny_raw)
        raw["model"]["freeze_bn"] = True
        raw["model"]["backbone_args"]["dropout"] = 0.0  # inductor draws its own dropout masks
        raw["train"].update({"compile": flag, "iters": 4, "eval_interval": 2, "checkpoint_interval": 2,
                             "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9}})
        trainer = Trainer(validate_config(raw), tmp_path / str(flag), progress=False)
        assert trainer.model.compiled == flag
        runs[flag] = trainer.run()
    for k, v in runs[False]["domains"].items():
        assert runs[True]["domains"][k]["mIoU"] == pytest.approx(v["mIoU"], abs=0.02), k
    weights = {flag: Checkpoint.load(tmp_path / str(flag) / "latest.pt").model for flag in runs}
    for k, v in weights[False].items():
        torch.testing.assert_close(weights[True][k], v, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
def test_torchrun_two_processes_train_compiled(tiny_raw, tmp_path):
    """DistributedDataParallel over the compiled encoder and decoder: gradient hooks fire, both ranks
    stay in step, and the result matches the eager two-process run (frozen BatchNorm, SGD)."""
    results = {}
    for flag in (False, True):
        raw = copy.deepcopy(tiny_raw)
        raw["model"]["freeze_bn"] = True
        raw["model"]["backbone_args"]["dropout"] = 0.0
        raw["train"].update({"compile": flag, "iters": 4, "eval_interval": 0, "checkpoint_interval": 2,
                             "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9}})
        cfg = tmp_path / f"tiny_{flag}.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        torchrun_train(cfg, tmp_path / str(flag))
        results[flag] = Checkpoint.load(tmp_path / str(flag) / "latest.pt")
    assert results[True].iteration == 4 and results[True].data["world_size"] == 2
    for k, v in results[False].model.items():
        torch.testing.assert_close(results[True].model[k], v, rtol=1e-4, atol=1e-5, msg=k)


def _compiled_saved_bytes(out: torch.Tensor) -> int:
    """Bytes the compiled functions in ``out``'s graph keep for the backward pass."""
    seen, stack, total = set(), [out.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "CompiledFunction" in type(node).__name__:
            total += sum(t.numel() * t.element_size() for t in node.saved_tensors if t is not None)
        stack.extend(fn for fn, _ in node.next_functions)
    return total


def test_activation_memory_budget_keeps_fewer_activations_for_the_same_gradients():
    """train.activation_memory_budget: the compiled pass keeps less for the backward pass, recomputes
    the rest there, and gives the gradients of the unbudgeted compiled pass."""
    torch.manual_seed(0)
    base = UniversalModel("erfnet", {"a": 3}, embed_dim=4, backbone_args={"width": 0.25, "dropout": 0.0}).train()
    base.freeze_bn = True
    base.train()
    x = torch.rand(2, 3, 32, 48) * 255
    kept, grads = {}, {}
    for budget in (1.0, 0.1):
        torch._dynamo.reset()  # compiled code is shared by every model of a process: the first budget would stay
        m = copy.deepcopy(base).use_compile(True, memory_budget=budget)
        out = m(x, embed=True)
        kept[budget] = _compiled_saved_bytes(out["a"])
        (out["a"].logsumexp(1).mean() + out["embedding"].square().mean()).backward()
        grads[budget] = {k: p.grad for k, p in m.named_parameters()}
    assert 0 < kept[0.1] < 0.6 * kept[1.0], kept
    for k, g in grads[1.0].items():
        torch.testing.assert_close(grads[0.1][k], g, rtol=1e-4, atol=1e-6, msg=k)


def test_activation_memory_budget_without_compile_is_a_config_error(tiny_raw):
    tiny_raw["train"]["activation_memory_budget"] = 0.5
    with pytest.raises(ConfigError, match=r"train: activation_memory_budget applies to compiled passes only: set train.compile: true"):
        validate_config(tiny_raw)
    tiny_raw["train"]["compile"] = True
    assert validate_config(tiny_raw).train.activation_memory_budget == 0.5
