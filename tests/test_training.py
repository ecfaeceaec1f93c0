"""End-to-end training behaviour: loss goes down, exact resume, checkpoints, methods."""

import pytest
import torch
from conftest import assert_same_training_state, records, run_killed_at

from univseg.config import validate_config
from univseg.engine.checkpoint import Checkpoint
from univseg.errors import CheckpointError
from univseg.engine.trainer import Trainer, poly_lr


def train(raw, work_dir, resume=False):
    return Trainer(validate_config(raw), work_dir, resume=resume, progress=False).run()


def test_poly_lr_with_warmup(tiny_raw):
    cfg = validate_config(tiny_raw).train
    assert poly_lr(cfg, 0, 10) == pytest.approx(0.003)
    assert poly_lr(cfg, 5, 10) == pytest.approx(0.003 * 0.5**0.9)
    assert poly_lr(cfg, 10, 10) == 0.0
    cfg.schedule.warmup_iters = 4
    assert poly_lr(cfg, 0, 10) == pytest.approx(0.003 * 0.1)
    assert poly_lr(cfg, 2, 10) == pytest.approx(0.003 * 0.8**0.9 * 0.55)


def test_short_run_lowers_the_loss_and_writes_everything(tiny_raw, tmp_path):
    tiny_raw["train"]["iters"] = 30
    tiny_raw["train"]["eval_interval"] = 15
    tiny_raw["train"]["checkpoint_interval"] = 15
    tiny_raw["method"]["name"] = "joint"
    results = train(tiny_raw, tmp_path)
    logs = [r for r in records(tmp_path) if "sup" in r]
    first, last = sum(r["sup"] for r in logs[:5]) / 5, sum(r["sup"] for r in logs[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    for name in ("latest.pt", "best.pt", "config.yaml", "eval_results.json", "metrics.jsonl"):
        assert (tmp_path / name).is_file(), name
    evals = [r for r in records(tmp_path) if "eval" in r]
    assert [r["iter"] for r in evals] == [15, 30]
    assert set(results["domains"]) == {"city", "rural"}
    assert 0 < results["mean_mIoU"] <= 1
    ckpt = Checkpoint.load(tmp_path / "latest.pt")
    assert ckpt.iteration == 30 and set(ckpt.label_spaces) == {"city", "rural"}
    assert ckpt.data == {"seed": 0, "world_size": 1} and set(ckpt.optimizers) == {"model"}
    best = Checkpoint.load(tmp_path / "best.pt")
    assert best.best["mean_mIoU"] == max(r["mean_mIoU"] for r in evals)


def test_resume_after_kill_equals_uninterrupted_run(tiny_raw, tmp_path):
    """Train 6 iterations; separately, die after iteration 4 (checkpoint at 3), resume: same weights."""
    full = tmp_path / "full"
    train(tiny_raw, full)

    part = tmp_path / "part"
    run_killed_at(Trainer(validate_config(tiny_raw), part, progress=False), 4)
    assert Checkpoint.load(part / "latest.pt").iteration == 3
    train(tiny_raw, part, resume=True)

    a = Checkpoint.load(full / "latest.pt")
    assert a.iteration == 6
    assert {"bank.domains.city.centroids", "bank.domains.rural.centroids"} <= set(a.method)
    assert_same_training_state(full, part)  # the metrics log also holds each iteration once, as if never interrupted


def test_resume_refuses_incompatible_checkpoint(tiny_raw, tmp_path):
    tiny_raw["train"]["iters"] = 3
    train(tiny_raw, tmp_path)
    tiny_raw["model"]["embed_dim"] = 16
    tiny_raw["domains"][1]["dataset"]["taxonomy"] = "fine"
    with pytest.raises(CheckpointError) as e:
        Trainer(validate_config(tiny_raw), tmp_path, resume=True, progress=False)
    assert "model.embed_dim: checkpoint 8, config 16" in str(e.value)
    assert "head 'rural' classes" in str(e.value)


def test_resume_without_checkpoint_says_what_to_do(tiny_raw, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at .*latest.pt"):
        Trainer(validate_config(tiny_raw), tmp_path, resume=True, progress=False)


@pytest.mark.parametrize(
    "method, similarity, mode",
    [("univ-full", "dot", "frozen"), ("univ-full", "cosine", "ema"), ("univ-cross", "cosine", "frozen"), ("joint", "cosine", "ema")],
)
def test_methods_produce_finite_moving_losses(tiny_raw, tmp_path, method, similarity, mode):
    tiny_raw["method"].update({"name": method, "similarity": similarity, "centroids": {"mode": mode}})
    tiny_raw["train"]["eval_interval"] = 0
    train(tiny_raw, tmp_path)
    logs = [r for r in records(tmp_path) if "loss" in r]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in logs)
    assert len({r["loss"] for r in logs}) == len(logs)  # the loss moves every iteration
    aligned = [r for r in logs if "ent_cross" in r]
    if method == "joint":
        assert not aligned
        return
    assert [r["iter"] for r in aligned] == [3, 4, 5, 6]  # entropy terms start after warm-up (2 iterations)
    assert all(r["ent_cross"] > 0 for r in aligned)
    assert ("ent_within" in aligned[0]) == (method == "univ-full")
    state = Checkpoint.load(tmp_path / "latest.pt").method
    assert bool(state["bank.initialised"])
    assert state["bank.domains.city.valid"].any() and torch.isfinite(state["bank.domains.city.centroids"]).all()


def test_single_method_trains_one_head_and_is_scored_everywhere_via_mapping(tiny_raw, tmp_path):
    tiny_raw["method"].update({"name": "single", "domains": ["city"]})
    results = train(tiny_raw, tmp_path)
    assert list(Checkpoint.load(tmp_path / "latest.pt").label_spaces) == ["city"]
    assert results["domains"]["city"]["head"] == "city"
    assert results["domains"]["rural"]["head"] == "city via synthetic-fine->synthetic-coarse"
    assert results["domains"]["rural"]["mIoU"] is not None


def test_single_with_two_domains_is_a_config_error(tiny_raw, tmp_path):
    from univseg.config import ConfigError

    tiny_raw["method"]["name"] = "single"
    with pytest.raises(ConfigError, match="method.domains"):
        Trainer(validate_config(tiny_raw), tmp_path, progress=False)


@pytest.mark.parametrize("mode", ["together", "separate"])
def test_unlabeled_images_share_or_get_their_own_encoder_pass(mode):
    from univseg.data.label_space import ClassInfo, LabelSpace
    from univseg.methods import build_method

    cfg = validate_config({"domains": [{"name": "a", "dataset": {"type": "synthetic"}}], "method": {"unlabeled_forward": mode}})
    ls = LabelSpace("two", (ClassInfo("x", (0, 0, 0)), ClassInfo("y", (1, 1, 1))), ignore_index=255)
    method = build_method(cfg.method, {"a": ls}, embed_dim=4)
    labeled, unlabeled = torch.rand(2, 3, 4, 4), torch.rand(3, 3, 4, 4)
    calls = []

    def model(inputs, embed, heads):
        calls.append((inputs["a"], embed, heads))
        return {"a": {}}

    _, n = method.run_model(model, {"a": {"image": labeled, "label": torch.zeros(2, 4, 4), "unlabeled": unlabeled}}, True, True)
    assert n == {"a": 2} and len(calls) == 1 and calls[0][1:] == (True, ["a"])
    sent = calls[0][0]
    if mode == "separate":
        assert isinstance(sent, list) and sent[0] is labeled and sent[1] is unlabeled
    else:
        assert torch.equal(sent, torch.cat([labeled, unlabeled]))
    method.run_model(model, {"a": {"image": labeled, "label": torch.zeros(2, 4, 4), "unlabeled": unlabeled}}, False, False)
    assert calls[1][0] is labeled  # before warm-up ends the unlabeled images are not forwarded at all
    _, n = method.run_model(model, {"a": {"unlabeled": unlabeled}}, True, True)  # train.backward: pass
    assert n == {"a": 0} and calls[2][0] is unlabeled and calls[2][1:] == (True, [])  # the embedding alone, no logits
    outputs, n = method.run_model(model, {"a": {"unlabeled": unlabeled}}, False, False)
    assert outputs == {} and n == {} and len(calls) == 3  # nothing to run: no model call


def test_hooks_see_every_step_and_evaluation_in_order(tiny_raw, tmp_path):
    from univseg.engine.trainer import TrainerHook

    class Recorder(TrainerHook):
        def __init__(self):
            self.calls = []

        def before_step(self, trainer, iteration):
            self.calls.append(("before", iteration))

        def after_step(self, trainer, iteration, terms):
            assert terms["lr"] == trainer.optimizers["model"].param_groups[0]["lr"]
            self.calls.append(("after", iteration, round(terms["loss"], 6)))

        def after_eval(self, trainer, iteration, results):
            self.calls.append(("eval", iteration, results["mean_mIoU"]))

    tiny_raw["method"]["name"] = "joint"
    rec = Recorder()
    results = Trainer(validate_config(tiny_raw), tmp_path, progress=False, hooks=[rec]).run()
    kinds = [(c[0], c[1]) for c in rec.calls]
    steps = [x for t in range(6) for x in (("before", t), ("after", t))]
    assert kinds == steps[:6] + [("eval", 3)] + steps[6:] + [("eval", 6)]
    assert rec.calls[-1][2] == results["mean_mIoU"]
    logged = [r["loss"] for r in records(tmp_path) if "loss" in r]
    assert [c[2] for c in rec.calls if c[0] == "after"] == [round(v, 6) for v in logged]


@pytest.mark.parametrize("name", __import__("univseg.methods", fromlist=["METHODS"]).METHODS.names())
def test_every_registered_method_trains_saves_and_restores_its_state(name, tiny_raw, tmp_path):
    """Registry-driven: each method trains with finite terms; its module state and every optimizer
    it needs are in the checkpoint and come back on resume."""
    tiny_raw["method"].update({"name": name, "warmup_iters": 1})
    if name == "single":
        tiny_raw["method"]["domains"] = ["city"]
    if name == "adversarial":
        tiny_raw["method"]["adversarial"] = {"ndf": 2, "semi_start": 1}
    if name == "cycada":  # its frozen source segmenter: a 1-iteration single-city run
        train({**tiny_raw, "method": {"name": "single", "domains": ["city"]}, "train": {**tiny_raw["train"], "iters": 1}}, tmp_path / "src")
        tiny_raw["model"]["init_from"] = str(tmp_path / "src" / "latest.pt")
        tiny_raw["method"].update({"domains": ["rural"], "cycada": {
            "source": "city", "target": "rural", "pixel_iters": 1, "ngf": 2, "res_blocks": 1, "ndf": 2, "d_layers": 2, "feat_ndf": 2}})
    tiny_raw["train"].update({"iters": 3, "eval_interval": 0})
    trainer = Trainer(validate_config(tiny_raw), tmp_path, progress=False)
    trainer.run()
    logs = [r for r in records(tmp_path) if "loss" in r]
    assert len(logs) == 3 and all(torch.isfinite(torch.tensor(v)) for r in logs for v in r.values())
    saved = Checkpoint.load(tmp_path / "latest.pt")
    assert set(saved.optimizers) == set(trainer.optimizers) and set(saved.method) == set(trainer.method.state_dict())
    resumed = Trainer(validate_config(tiny_raw), tmp_path, resume=True, progress=False)
    for k, v in trainer.method.state_dict().items():
        assert torch.equal(resumed.method.state_dict()[k], v), k
    for opt_name, opt in trainer.optimizers.items():
        assert resumed.optimizers[opt_name].state_dict()["param_groups"] == opt.state_dict()["param_groups"]
