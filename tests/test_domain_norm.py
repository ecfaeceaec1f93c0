"""Per-domain BatchNorm: own statistics per domain in training, the label space's in evaluation."""
import json

import pytest
import torch

from univseg.config import validate_config
from univseg.data.synthetic import LABEL_SPACES
from univseg.engine.checkpoint import Checkpoint, init_from_checkpoint
from univseg.engine.predictor import Predictor
from univseg.engine.trainer import Trainer
from univseg.models.domain_norm import DomainBatchNorm2d, adapt_norm_keys
from univseg.models.universal import UniversalModel


def model(norm="domain", heads=("a", "b")):
    torch.manual_seed(0)
    return UniversalModel("erfnet", {h: 3 for h in heads}, embed_dim=4, backbone_args={"width": 0.25}, norm=norm)


def norm_state(m, domain):
    """Running means of every per-domain BatchNorm copy of ``domain``."""
    return [layer.norms[domain].running_mean.clone() for layer in m.modules() if isinstance(layer, DomainBatchNorm2d)]


def test_every_encoder_batchnorm_gets_one_copy_per_domain_and_heads_stay_as_they_are():
    m = model()
    layers = [x for x in m.modules() if isinstance(x, DomainBatchNorm2d)]
    plain = [x for x in m.encoder.modules() if isinstance(x, torch.nn.BatchNorm2d) and not any(x is n for l in layers for n in l.norms.values())]
    assert layers and not plain
    assert all(set(layer.norms) == {"a", "b"} for layer in layers)
    assert not any(isinstance(x, DomainBatchNorm2d) for x in m.heads.modules())


def test_a_domains_batch_updates_only_its_own_running_statistics():
    m = model().train()
    before_a, before_b = norm_state(m, "a"), norm_state(m, "b")
    m({"a": torch.rand(2, 3, 32, 48) * 255})
    after_a, after_b = norm_state(m, "a"), norm_state(m, "b")
    assert all(not torch.equal(x, y) for x, y in zip(before_a, after_a))
    assert all(torch.equal(x, y) for x, y in zip(before_b, after_b))


def test_each_domain_gets_its_own_encoder_pass_in_a_training_step():
    """Under per-domain norm, domain a's outputs in a joint step equal a step with a alone (its own
    batch statistics); under shared norm the other domain's images change them."""
    xa, xb = torch.rand(2, 3, 32, 48) * 255, torch.rand(3, 3, 32, 48) * 100
    for norm, same in (("domain", True), ("shared", False)):
        joint = model(norm).train()({"a": xa, "b": xb}, embed=True)["a"]
        alone = model(norm).train()({"a": xa}, embed=True)["a"]
        assert torch.allclose(joint["a"], alone["a"], atol=1e-5) == same, norm
        assert torch.allclose(joint["embedding"], alone["embedding"], atol=1e-5) == same, norm


def test_evaluation_uses_the_requested_label_spaces_statistics():
    m = model().train()
    m({"a": torch.rand(4, 3, 32, 48) * 255, "b": torch.rand(4, 3, 32, 48) * 100 + 150})  # different statistics
    m.eval()
    x = torch.rand(1, 3, 32, 48) * 255
    with torch.no_grad():
        own = m(x, heads=["a"])["a"]
        assert torch.equal(own, m(x, heads=["a"], domain="a")["a"])
        assert not torch.allclose(own, m(x, heads=["a"], domain="b")["a"])
        both = m(x)  # every head with its own domain's BatchNorm
        assert torch.equal(both["a"], own) and torch.equal(both["b"], m(x, heads=["b"])["b"])
    with pytest.raises(ValueError, match="needs domain"):
        m(x, embed=True)


def saved_domain_model(tiny_raw, path):
    """A city + rural model with per-domain norm, after one training pass (different statistics per
    domain), saved as a checkpoint at ``path``."""
    tiny_raw["model"]["norm"] = "domain"
    cfg = validate_config(tiny_raw)
    m = UniversalModel("erfnet", {"city": 9, "rural": 8}, embed_dim=8, backbone_args={"width": 0.25}, norm="domain").train()
    m({"city": torch.rand(2, 3, 32, 48) * 255, "rural": torch.rand(2, 3, 32, 48) * 100})
    Checkpoint(cfg.to_dict(), {"city": LABEL_SPACES["fine"], "rural": LABEL_SPACES["coarse"]}, m.state_dict()).save(path)
    return m


def test_saved_and_loaded_model_predicts_identically(tmp_path, tiny_raw):
    m = saved_domain_model(tiny_raw, tmp_path / "m.pt")
    predictor = Predictor.from_checkpoint(tmp_path / "m.pt", device="cpu", amp="none")
    assert predictor.model.norm == "domain"
    image = (torch.rand(32, 48, 3) * 255).to(torch.uint8).numpy()
    m.eval()
    x = torch.tensor(image).permute(2, 0, 1).float().unsqueeze(0)
    with torch.no_grad():
        for head in ("city", "rural"):
            assert torch.equal(predictor.logits(image, head), m(x, heads=[head])[head][0])
    assert all((predictor.predict_all(image)[h] == predictor.predict(image, h)).all() for h in ("city", "rural"))


def test_norm_keys_adapt_between_layouts():
    shared = {"enc.bn.weight": torch.tensor([1.0]), "enc.conv.weight": torch.tensor([2.0])}
    per_domain = {"enc.bn.norms.a.weight": torch.tensor([3.0]), "enc.bn.norms.b.weight": torch.tensor([4.0])}
    # shared file -> per-domain model: every domain starts from the shared layer
    got = adapt_norm_keys(shared, ["enc.bn.norms.x.weight", "enc.bn.norms.y.weight", "enc.conv.weight"])
    assert got["enc.bn.norms.x.weight"].item() == got["enc.bn.norms.y.weight"].item() == 1.0
    # a new domain starts from the chosen domain (default: the file's first)
    assert adapt_norm_keys(per_domain, ["enc.bn.norms.c.weight"])["enc.bn.norms.c.weight"].item() == 3.0
    assert adapt_norm_keys(per_domain, ["enc.bn.norms.c.weight"], "b")["enc.bn.norms.c.weight"].item() == 4.0
    # per-domain file -> shared model: the chosen domain's copy
    assert adapt_norm_keys(per_domain, ["enc.bn.weight"], "b")["enc.bn.weight"].item() == 4.0


def test_fine_tuning_a_new_domain_starts_from_the_chosen_domains_batchnorm(tmp_path, tiny_raw):
    src = saved_domain_model(tiny_raw, tmp_path / "s.pt")
    dst = UniversalModel("erfnet", {"new": 8}, embed_dim=8, backbone_args={"width": 0.25}, norm="domain")
    fresh = init_from_checkpoint(dst, tmp_path / "s.pt", {"new": LABEL_SPACES["coarse"]}, norm_from="rural")
    assert fresh == ["new"]
    assert all(torch.equal(x, y) for x, y in zip(norm_state(dst, "new"), norm_state(src, "rural")))
    assert not all(torch.equal(x, y) for x, y in zip(norm_state(dst, "new"), norm_state(src, "city")))


def test_training_with_domain_norm_resumes_exactly(tiny_raw, tmp_path):
    from conftest import run_killed_at

    tiny_raw["model"]["norm"] = "domain"
    full, part = tmp_path / "full", tmp_path / "part"
    Trainer(validate_config(tiny_raw), full, progress=False).run()
    run_killed_at(Trainer(validate_config(tiny_raw), part, progress=False), 4)
    Trainer(validate_config(tiny_raw), part, resume=True, progress=False).run()
    a, b = Checkpoint.load(full / "latest.pt"), Checkpoint.load(part / "latest.pt")
    assert any(".norms.rural." in k for k in a.model)
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    logs = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in logs if "ent_cross" in r] == [3, 4, 5, 6]  # centroids computed per domain
