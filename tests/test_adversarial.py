"""The 'adversarial' baseline (Hung et al., BMVC 2018): discriminator, losses, training, exact resume."""
import copy
import math

import pytest
import torch
from torch import nn

from conftest import assert_same_training_state, records, run_killed_at, TINY
from univseg.config import validate_config
from univseg.methods.adversarial import AdversarialSemiSupervised, Discriminator, masked_bce, semi_loss
from univseg.engine.checkpoint import Checkpoint
from univseg.methods import METHODS, build_method
from univseg.engine.trainer import Trainer

IGN = 255


def bce1(x):  # BCE(sigmoid(x), 1) = -log sigmoid(x)
    return -math.log(1 / (1 + math.exp(-x)))


def bce0(x):  # BCE(sigmoid(x), 0) = -log(1 - sigmoid(x))
    return -math.log(1 - 1 / (1 + math.exp(-x)))


def p0(l0, l1):  # softmax probability of class 0 of two logits
    return 1 / (1 + math.exp(l1 - l0))


def adv_raw(tiny_raw, **adversarial):
    tiny_raw["method"] = {"name": "adversarial", "adversarial": {"ndf": 4, "semi_start": 3, **adversarial}}
    tiny_raw["train"]["eval_interval"] = 0
    return tiny_raw


def make_trainer(raw, work_dir, resume=False):
    return Trainer(validate_config(raw), work_dir, resume=resume, progress=False)


class FixedD(nn.Module):
    """A stand-in discriminator with hand-computable output: logit = 4 * p(class 0) - 2."""

    def forward(self, probs):
        return 4 * probs[:, :1].float() - 2


class FixedModel(nn.Module):
    """A stand-in model returning fixed (trainable) logits for domain 'a' (labeled first, then unlabeled)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, inputs, embed=False, heads=None):
        assert not embed and set(inputs) == {"a"} and heads == ["a"]
        x = inputs["a"]
        n = sum(t.shape[0] for t in x) if isinstance(x, list) else x.shape[0]  # [labeled, unlabeled] or one batch
        return {"a": {"a": self.logits[:n]}}


def two_class_method(**adversarial):
    from univseg.data.label_space import ClassInfo, LabelSpace

    cfg = validate_config({"domains": [{"name": "a", "dataset": {"type": "synthetic"}}], "method": {"name": "adversarial", "adversarial": adversarial}}).method
    ls = LabelSpace("two", (ClassInfo("x", (0, 0, 0)), ClassInfo("y", (1, 1, 1))), ignore_index=IGN)
    method = build_method(cfg, {"a": ls}, embed_dim=4)
    method.discriminators["a"] = FixedD()
    return method


def test_registered_with_paper_defaults():
    assert METHODS.get("adversarial") is AdversarialSemiSupervised
    a = validate_config({"domains": [{"name": "a", "dataset": {"type": "synthetic"}}]}).method.adversarial
    assert (a.lambda_adv, a.lambda_adv_unlabeled, a.lambda_semi, a.t_semi, a.semi_start) == (0.01, 0.001, 0.1, 0.2, 5000)
    assert (a.lr, tuple(a.betas), a.ndf) == (1e-4, (0.9, 0.99), 64)


@pytest.mark.parametrize("size", [(32, 48), (37, 50), (64, 64)])
def test_discriminator_output_is_one_channel_at_input_size(size):
    d = Discriminator(num_classes=5, ndf=4)
    out = d(torch.rand(2, 5, *size).softmax(1))
    assert out.shape == (2, 1, *size)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32, 1]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs)
    assert sum(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2 for m in d.modules()) == 4
    assert [c.out_channels for c in Discriminator(3).modules() if isinstance(c, nn.Conv2d)] == [64, 128, 256, 512, 1]


def test_masked_bce_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [-2.0, 3.0]]]])
    mask = torch.tensor([[[True, False], [True, True]]])
    assert masked_bce(x, 1.0, mask).item() == pytest.approx((bce1(0) + bce1(-2) + bce1(3)) / 3, rel=1e-6)
    assert masked_bce(x, 0.0).item() == pytest.approx((bce0(0) + bce0(1) + bce0(-2) + bce0(3)) / 4, rel=1e-6)
    none = masked_bce(x.requires_grad_(), 1.0, torch.zeros_like(mask))
    assert none.item() == 0.0 and none.requires_grad
    assert masked_bce(x.bfloat16(), 1.0).dtype == torch.float32


def test_semi_loss_only_confident_pixels_towards_argmax():
    # 1x2x2x2 logits; argmax: class 0, 1, 1, 0
    logits = torch.tensor([[[[2.0, 0.0], [0.5, 1.0]], [[0.0, 1.0], [3.0, -1.0]]]])
    # D confidences sigmoid(.): 0.5, 0.119, 0.269, 0.2 (exactly T: not > T) -> pixels 0 and 2 count
    d_logits = torch.tensor([[[[0.0, -2.0], [-1.0, math.log(0.25)]]]])
    loss, mask = semi_loss(logits, d_logits, t_semi=0.2, ignore_index=IGN)
    assert mask.tolist() == [[[True, False], [True, False]]]
    ce_pix0 = -math.log(p0(2.0, 0.0))  # target 0
    ce_pix2 = -math.log(1 - p0(0.5, 3.0))  # target 1
    assert loss.item() == pytest.approx((ce_pix0 + ce_pix2) / 2, rel=1e-6)
    none, mask = semi_loss(logits, torch.full_like(d_logits, -5.0), 0.2, IGN)
    assert not mask.any() and none.item() == 0.0


def test_losses_and_discriminator_loss_by_hand():
    method = two_class_method(semi_start=1)
    # labeled image (pixel (1,0) ignored) then unlabeled image; 2 classes, 2x2 pixels
    lab = [[[1.0, -1.0], [0.0, 2.0]], [[0.0, 0.0], [1.0, -1.0]]]
    unl = [[[0.0, 3.0], [-1.0, -1.5]], [[1.0, 0.0], [0.0, 1.0]]]  # pixel (1,1): sigmoid(D) = 0.15 < T_semi
    model = FixedModel(torch.tensor([lab, unl]))
    label = torch.tensor([[[0, 1], [IGN, 1]]])
    batches = {"a": {"image": torch.zeros(1, 3, 2, 2), "label": label, "unlabeled": torch.zeros(1, 3, 2, 2)}}

    def d_logit(img, i, j):  # the FixedD logit at pixel (i, j) of a logits image
        return 4 * p0(img[0][i][j], img[1][i][j]) - 2

    pix = [(0, 0), (0, 1), (1, 0), (1, 1)]
    valid = [(0, 0), (0, 1), (1, 1)]
    ce = (-math.log(p0(1, 0)) - math.log(1 - p0(-1, 0)) - math.log(1 - p0(2, -1))) / 3
    adv_lab = sum(bce1(d_logit(lab, i, j)) for i, j in valid) / 3
    adv_unl = sum(bce1(d_logit(unl, i, j)) for i, j in pix) / 4

    # before semi_start: no semi term
    method.before_step(0, None)
    terms = method.losses(model, batches)
    assert "semi" not in terms
    assert terms["ce_a"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["adv"].item() == pytest.approx(0.01 * adv_lab + 0.001 * adv_unl, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(ce + 0.01 * adv_lab + 0.001 * adv_unl, rel=1e-5)

    # discriminator loss: one-hot GT is real (ignore pixel excluded), predictions are fake
    real = (bce1(4 * 1 - 2) + bce1(4 * 0 - 2) + bce1(4 * 0 - 2)) / 3
    fake = (sum(bce0(d_logit(lab, i, j)) for i, j in valid) + sum(bce0(d_logit(unl, i, j)) for i, j in pix)) / 7
    stash = method._stash["a"]
    d_loss = method.discriminator_loss("a", stash["probs"], stash["label"])
    assert d_loss.item() == pytest.approx(real + fake, rel=1e-5)

    # from semi_start on: CE towards the argmax on unlabeled pixels with sigmoid(D) > 0.2
    method.before_step(1, None)
    terms = method.losses(model, batches)
    conf = [(i, j) for i, j in pix if 1 / (1 + math.exp(-d_logit(unl, i, j))) > 0.2]
    assert conf == [(0, 0), (0, 1), (1, 0)]
    semi = sum(-math.log(max(p0(unl[0][i][j], unl[1][i][j]), 1 - p0(unl[0][i][j], unl[1][i][j]))) for i, j in conf) / len(conf)
    assert terms["semi"].item() == pytest.approx(0.1 * semi, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(terms["sup"].item() + terms["adv"].item() + terms["semi"].item(), rel=1e-6)


def test_adversarial_gradient_reaches_the_model_but_not_the_discriminator(tiny_raw, tmp_path):
    t = make_trainer(adv_raw(tiny_raw, lambda_adv=1.0, lambda_adv_unlabeled=1.0), tmp_path)
    batches = t._next_batches(t._loaders())
    plain = build_method(t.cfg.method.model_copy(update={"adversarial": t.cfg.method.adversarial.model_copy(
        update={"lambda_adv": 0.0, "lambda_adv_unlabeled": 0.0})}), t.heads, 8)
    plain.load_state_dict(t.method.state_dict())

    def grads(method):
        t.model.zero_grad(set_to_none=True)
        method.before_step(0, None)
        method.losses(t.model, batches)["loss"].backward()
        return {n: p.grad.clone() for n, p in t.model.named_parameters() if p.grad is not None}

    with_adv, without = grads(t.method), grads(plain)
    assert all(p.grad is None for p in t.method.discriminators.parameters())
    head = "heads.city.weight"
    assert not torch.allclose(with_adv[head], without[head])
    assert any(not torch.allclose(with_adv[n], without[n]) for n in with_adv if n.startswith("encoder."))
    # the discriminator's own loss, minimised by the trainer's optimizer for it, changes it
    before = {k: v.clone() for k, v in t.method.discriminators.state_dict().items()}
    aux = t.method.auxiliary_losses(0)
    assert set(aux) == {"discriminators"} == set(t.optimizers) - {"model"}
    assert torch.isfinite(aux["discriminators"]["d_loss"]) and aux["discriminators"]["d_loss"] > 0
    t._step_auxiliary("discriminators", aux["discriminators"]["loss"])
    assert all(not torch.equal(before[k], v) for k, v in t.method.discriminators.state_dict().items())
    t.method.losses(t.model, batches)  # the next step's model loss leaves the discriminators frozen again
    assert not any(p.requires_grad for p in t.method.discriminators.parameters())


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """One uninterrupted 6-iteration run of the tiny config (shared by the two tests below):
    (work dir, the trainer, the discriminators' initial weights)."""
    work_dir = tmp_path_factory.mktemp("adv_full")
    t = make_trainer(adv_raw(copy.deepcopy(TINY)), work_dir)
    assert t.method.needs_unlabeled
    before = {k: v.clone() for k, v in t.method.discriminators.state_dict().items()}
    t.run()
    return work_dir, t, before


def test_training_logs_terms_updates_discriminators_and_decays_its_lr(full_run):
    work_dir, t, before = full_run
    logs = [r for r in records(work_dir) if "loss" in r]
    assert [r["iter"] for r in logs] == [1, 2, 3, 4, 5, 6]
    for r in logs:
        assert {"ce_city", "ce_rural", "sup", "adv", "d_loss", "loss"} <= set(r)
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float))
        assert r["adv"] > 0 and r["d_loss"] > 0
    assert [r["iter"] for r in logs if "semi" in r] == [4, 5, 6]  # semi_start = 3 iterations
    for r in logs[3:]:  # self-training diagnostics: the confident share and the loss ratio of the interval
        assert 0.0 <= r["confident_city"] <= 1.0 and 0.0 <= r["confident_rural"] <= 1.0
        assert r["unsup_to_sup"] == pytest.approx(r["semi"] / r["sup"])
    assert "confident_city" not in logs[0] and "unsup_to_sup" not in logs[0]
    for r in logs:
        assert r["loss"] == pytest.approx(r["sup"] + r["adv"] + r.get("semi", 0.0), rel=1e-5)
    after = Checkpoint.load(work_dir / "latest.pt").method
    for k, v in before.items():
        assert not torch.equal(v, after[f"discriminators.{k}"]), k
    assert {k.split(".")[0] for k in before} == {"city", "rural"}
    assert t.optimizers["discriminators"].param_groups[0]["lr"] == pytest.approx(1e-4 * (1 - 5 / 6) ** 0.9)


def test_resume_after_kill_equals_uninterrupted_run_including_discriminators(full_run, tiny_raw, tmp_path):
    """Die after iteration 4 (checkpoint at 3), resume: same model, discriminators and D optimizer."""
    raw = adv_raw(tiny_raw)
    full, part = full_run[0], tmp_path / "part"

    run_killed_at(make_trainer(raw, part), 4)
    assert Checkpoint.load(part / "latest.pt").iteration == 3
    make_trainer(raw, part, resume=True).run()

    a = Checkpoint.load(full / "latest.pt")
    assert a.iteration == 6
    assert any(k.startswith("discriminators.rural.") for k in a.method)
    assert_same_training_state(full, part, optimizers=("discriminators",))


class RecordsAutocast(AdversarialSemiSupervised):
    """'adversarial', recording whether its auxiliary losses are computed under CPU autocast, and its dtype."""

    seen: list = []

    def auxiliary_losses(self, iteration):
        RecordsAutocast.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return super().auxiliary_losses(iteration)


@pytest.mark.parametrize("amp, expected", [("bf16", (True, torch.bfloat16)), ("none", (False, None))])
def test_auxiliary_losses_run_under_the_models_bf16_autocast(amp, expected, tiny_raw, tmp_path):
    raw = adv_raw(tiny_raw)
    raw["method"]["name"] = "records-autocast"
    raw["train"].update({"iters": 1, "eval_interval": 0, "amp": amp})
    RecordsAutocast.seen = []
    with METHODS.temporary("records-autocast", RecordsAutocast):
        Trainer(validate_config(raw), tmp_path / "w", progress=False).run()
    enabled, dtype = RecordsAutocast.seen[0]
    assert enabled == expected[0]
    if enabled:
        assert dtype == expected[1]
