"""The 'souly' method (Souly et al., ICCV 2017): K+1 losses by hand, generator, the generator step
leaving the model alone, training and exact resume."""
import copy
import math

import pytest
import torch
from torch import nn

from conftest import assert_same_training_state, records, run_killed_at, TINY
from univseg.config import ConfigError, validate_config
from univseg.data.label_space import ClassInfo, LabelSpace
from univseg.engine.checkpoint import Checkpoint
from univseg.engine.experiment import default_methods
from univseg.engine.trainer import Trainer
from univseg.methods import METHODS, build_method
from univseg.methods.souly import Generator, SoulyGAN, gan_terms, generator_layout

IGN = 255
SMALL = {"nz": 8, "ngf": 4, "image_size": 16}


def p_fake(l1, l2, f):  # softmax probability of the fake class among [l1, l2, f]
    return math.exp(f) / (math.exp(l1) + math.exp(l2) + math.exp(f))


def souly_raw(raw, **souly):
    raw["method"] = {"name": "souly", "souly": {**SMALL, **souly}}
    raw["train"].update(iters=4, checkpoint_interval=2, eval_interval=0)
    return raw


def make_trainer(raw, work_dir, resume=False):
    return Trainer(validate_config(raw), work_dir, resume=resume, progress=False)


def test_registered_with_dcgan_defaults_and_an_experiment_row(tiny_raw):
    assert METHODS.get("souly") is SoulyGAN
    cfg = validate_config(tiny_raw)
    s = cfg.method.souly
    assert (s.nz, s.lr, tuple(s.betas), s.lambda_gan, s.batch_size) == (100, 2e-4, (0.5, 0.999), 1.0, None)
    assert "souly" in default_methods(cfg)
    tiny_raw["method"] = {"name": "souly", "souly": {"image_size": 24}}
    with pytest.raises(ConfigError, match=r"method\.souly\.image_size: .*4 \* 2\^k"):
        validate_config(tiny_raw)
    tiny_raw["method"]["souly"]["image_size"] = [4, 48]
    with pytest.raises(ConfigError, match=r"method\.souly\.image_size: .*at least 8"):
        validate_config(tiny_raw)
    tiny_raw["method"]["souly"]["image_size"] = [32, 48]  # the tiny config's training images
    assert validate_config(tiny_raw).method.souly.image_size == (32, 48)


# per pixel (class logit 1, class logit 2, fake logit) of three 1x2 images: labeled, unlabeled, generated
LAB = [(1.0, -0.5, 0.3), (0.2, 0.4, 2.0)]  # the second pixel is an ignore pixel
UNL = [(0.0, 1.0, -1.0), (2.0, 0.5, 0.5)]
GEN = [(0.5, 0.0, 1.5), (-1.0, 0.0, -0.5)]
EXPECT_REAL = -(math.log(1 - p_fake(*LAB[0])) + math.log(1 - p_fake(*UNL[0])) + math.log(1 - p_fake(*UNL[1]))) / 3
EXPECT_FAKE = -(math.log(p_fake(*GEN[0])) + math.log(p_fake(*GEN[1]))) / 2


def as_logits(*images):  # -> [B, K+1, 1, 2]
    return torch.tensor([[[[px[c] for px in img]] for c in range(3)] for img in images])


def test_k_plus_one_terms_by_hand():
    out = as_logits(LAB, UNL, GEN)
    assert out.shape == (3, 3, 1, 2)
    label = torch.tensor([[[0, IGN]]])
    real, fake = gan_terms(out[:, :2], out[:, 2:], label, n_real=2, ignore_index=IGN)
    assert real.item() == pytest.approx(EXPECT_REAL, rel=1e-6)
    assert fake.item() == pytest.approx(EXPECT_FAKE, rel=1e-6)
    # without unlabeled images: only the labeled image is real
    real, fake = gan_terms(out[[0, 2], :2], out[[0, 2], 2:], label, n_real=1, ignore_index=IGN)
    assert real.item() == pytest.approx(-math.log(1 - p_fake(*LAB[0])), rel=1e-6)
    assert fake.item() == pytest.approx(EXPECT_FAKE, rel=1e-6)


class FixedModel(nn.Module):
    """A stand-in model for domain 'a': fixed class logits, and a 1-channel embedding equal to the fake logit."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, inputs, embed=False, heads=None):
        assert embed and set(inputs) == {"a"} and heads == ["a"]
        n = inputs["a"].shape[0]  # labeled, unlabeled and generated images in one batch
        return {"a": {"a": self.out[:n, :2], "embedding": self.out[:n, 2:]}}


def test_losses_put_labeled_unlabeled_and_generated_rows_in_their_terms():
    cfg = validate_config({"domains": [{"name": "a", "dataset": {"type": "synthetic"}}], "method": {"name": "souly", "souly": SMALL}}).method
    ls = LabelSpace("two", (ClassInfo("x", (0, 0, 0)), ClassInfo("y", (1, 1, 1))), ignore_index=IGN)
    method = build_method(cfg, {"a": ls}, embed_dim=1)
    with torch.no_grad():  # fake logit = the embedding
        method.fake_heads["a"].weight.fill_(1.0)
        method.fake_heads["a"].bias.zero_()
    batches = {"a": {"image": torch.zeros(1, 3, 1, 2), "label": torch.tensor([[[0, IGN]]]), "unlabeled": torch.zeros(1, 3, 1, 2)}}
    terms = method.losses(FixedModel(as_logits(LAB, UNL, GEN)), batches)
    ce = -math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(-0.5)))  # K classes only: the fake logit plays no part
    assert terms["ce_a"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["real"].item() == pytest.approx(EXPECT_REAL, rel=1e-6)
    assert terms["fake"].item() == pytest.approx(EXPECT_FAKE, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(ce + EXPECT_REAL + EXPECT_FAKE, rel=1e-6)
    # the fake heads' own step recomputes the same GAN terms from the stash
    s = method._stash["domains"]["a"]
    assert (s["n_real"], s["n_fake"]) == (2, 1)
    head = method.fake_head_loss("a", s["logits"], s["embedding"], s["n_real"], s["label"])
    assert head.item() == pytest.approx(terms["gan"].item(), rel=1e-6)


@pytest.mark.parametrize(
    "size, first, stages",
    [(8, (4, 4), 1), (16, (4, 4), 2), (32, (4, 4), 3),
     ((20, 36), (5, 9), 2),  # 20 / 4 = 5 -> two doublings; 5 * 4 = 20, 9 * 4 = 36: no crop
     ((180, 240), (6, 8), 5)],  # the benchmark's training crop: 192 x 256 cropped at the centre
)
def test_generator_is_dcgan_shaped_and_images_are_on_the_input_scale(size, first, stages):
    assert generator_layout(size) == (first, stages)
    torch.manual_seed(0)
    g = Generator(nz=8, ngf=4, size=size)
    images = g(torch.rand(3, 8) * 2 - 1)
    h, w = (size, size) if isinstance(size, int) else size
    assert images.shape == (3, 3, h, w)
    assert images.min() >= 0 and images.max() <= 255 and images.std() > 0
    convs = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert convs[0].kernel_size == first and convs[0].stride == (1, 1)
    assert [c.out_channels for c in convs] == [4 * 2 ** (stages - 1 - i) for i in range(stages)] + [3]
    assert isinstance(g.net[-1], nn.Tanh)
    full = g.net(torch.zeros(1, 8, 1, 1))  # before the centre crop: first map * 2^stages
    assert full.shape[-2:] == (first[0] * 2**stages, first[1] * 2**stages)
    top, left = (full.shape[-2] - h) // 2, (full.shape[-1] - w) // 2
    assert torch.allclose(g(torch.zeros(1, 8)), (full[..., top:top + h, left:left + w] + 1) * 127.5)


@pytest.mark.parametrize("generator_loss", ["feature_matching", "fool"])
def test_generator_step_trains_generators_and_fake_heads_but_leaves_the_model_alone(tiny_raw, tmp_path, generator_loss):
    tiny_raw["model"]["norm"] = "domain"  # per-domain BatchNorm: each domain's passes use its own statistics
    t = make_trainer(souly_raw(tiny_raw, generator_loss=generator_loss, image_size=[32, 48]), tmp_path)  # the tiny crop
    assert set(t.optimizers) == {"model", "fake_heads", "generators"}
    images = t.method.generate("city", 3, (32, 48))
    assert images.shape == (3, 3, 32, 48) and images.min() >= 0 and images.max() <= 255

    batches = t._next_batches(t._loaders())
    t.method.losses(t.model, batches)["loss"].backward()
    assert all(p.grad is None for p in t.method.parameters())  # the model loss trains the model only
    assert t.model.embedding.weight.grad is not None  # the fake heads' gradient reaches the model through E
    t.model.zero_grad(set_to_none=True)
    model_before = {k: v.clone() for k, v in t.model.state_dict().items()}
    method_before = {k: v.clone() for k, v in t.method.state_dict().items()}

    aux = t.method.auxiliary_losses(0)
    assert set(aux) == {"fake_heads", "generators"}
    assert torch.isfinite(aux["generators"]["g_loss"]) and aux["generators"]["g_loss"] > 0
    for name, terms in aux.items():
        t._step_auxiliary(name, terms["loss"])
    assert all(p.grad is None for p in t.model.parameters())  # nothing for the next model step
    for k, v in t.model.state_dict().items():  # weights and BatchNorm statistics
        assert torch.equal(v, model_before[k]), k
    for k, v in t.method.state_dict().items():
        assert not torch.equal(v, method_before[k]), k
    assert t.method.auxiliary_losses(1) == {}  # the stash is used once


@pytest.mark.parametrize("generator_loss", ["feature_matching", "fool"])
def test_generator_loss_by_the_formula(tiny_raw, tmp_path, generator_loss):
    """L_G against the module doc's formulas, from the model run directly on the same real and generated images."""
    t = make_trainer(souly_raw(tiny_raw, generator_loss=generator_loss), tmp_path)
    real = t._next_batches(t._loaders())["rural"]["unlabeled"]
    torch.manual_seed(3)
    loss = t.method.generator_loss(t.model, "rural", real, 2)
    torch.manual_seed(3)
    fakes = t.method.generate("rural", 2, tuple(real.shape[-2:]))
    with torch.no_grad():
        out = t.model(torch.cat([real, fakes]), heads=["rural"], embed=True, domain="rural")
    emb = out["embedding"]
    if generator_loss == "feature_matching":
        expected = ((emb[:2].mean((0, 2, 3)) - emb[2:].mean((0, 2, 3))) ** 2).sum() / emb.shape[1]
    else:
        logits = out["rural"][2:]
        f = nn.functional.interpolate(t.method.fake_heads["rural"](emb[2:]), size=logits.shape[-2:], mode="bilinear", align_corners=False)
        p = torch.cat([logits, f], 1).softmax(1)[:, -1]
        expected = -torch.log(1 - p).mean()
    assert real.shape[0] == 2 and loss.item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted 4-iteration run of the tiny config: (work dir, trainer, initial method state)."""
    work_dir = tmp_path_factory.mktemp("souly_full")
    t = make_trainer(souly_raw(copy.deepcopy(TINY)), work_dir)
    before = {k: v.clone() for k, v in t.method.state_dict().items()}
    t.run()
    return work_dir, t, before


def test_training_logs_finite_moving_terms_and_trains_generators(full_run):
    work_dir, t, before = full_run
    logs = [r for r in records(work_dir) if "loss" in r]
    assert [r["iter"] for r in logs] == [1, 2, 3, 4]
    keys = ("ce_city", "ce_rural", "sup", "real", "fake", "gan", "g_loss", "loss")
    for r in logs:
        assert set(keys) <= set(r)
        assert all(math.isfinite(v) and v > 0 for k, v in r.items() if k in keys)
        assert r["loss"] == pytest.approx(r["sup"] + r["gan"], rel=1e-5)
    for k in keys:
        assert len({r[k] for r in logs}) == len(logs), k
    after = Checkpoint.load(work_dir / "latest.pt").method
    assert {k.split(".")[1] for k in before} == {"city", "rural"}
    for k, v in before.items():
        assert not torch.equal(v, after[k]), k
    lr = 2e-4 * (1 - 3 / 4) ** 0.9
    assert t.optimizers["generators"].param_groups[0]["lr"] == pytest.approx(lr)
    assert t.optimizers["fake_heads"].param_groups[0]["lr"] == pytest.approx(lr)


def test_resume_after_kill_equals_uninterrupted_run(full_run, tiny_raw, tmp_path):
    """Die after 3 iterations (checkpoint at 2), resume: same model, generators, fake heads and their optimizers."""
    raw = souly_raw(tiny_raw)
    full, part = full_run[0], tmp_path / "part"
    run_killed_at(make_trainer(raw, part), 3)
    assert Checkpoint.load(part / "latest.pt").iteration == 2
    make_trainer(raw, part, resume=True).run()

    a = Checkpoint.load(full / "latest.pt")
    assert a.iteration == 4
    assert any(k.startswith("generators.rural.") for k in a.method) and any(k.startswith("fake_heads.city.") for k in a.method)
    assert_same_training_state(full, part, optimizers=("generators", "fake_heads"))
