"""Pseudo-label levers and diagnostics of the weak-to-strong methods: precision / coverage counts
against brute force, the diagnostics log, the EMA teacher (formula, exact resume, torchrun, per-domain
BatchNorm) and the geometric-only weak view."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from conftest import assert_same_training_state, free_port, records, run_killed_at
from test_consistency import consistency_raw
from test_distributed import _train_rank
from univseg.config import validate_config
from univseg.data.label_space import LabelSpace
from univseg.engine.hooks import TrainerHook
from univseg.engine.trainer import Trainer
from univseg.methods.pseudo_labels import count_terms, diagnostic_record, pseudo_label_counts


def test_counts_equal_a_brute_force_count_over_pixels():
    g = torch.Generator().manual_seed(1)
    k, shape = 4, (3, 5, 6)
    pseudo = torch.randint(0, k, shape, generator=g)
    label = torch.randint(0, k, shape, generator=g)
    label[torch.rand(shape, generator=g) < 0.2] = 255
    keep = torch.rand(shape, generator=g) < 0.6
    valid = torch.rand(shape, generator=g) < 0.8
    got = pseudo_label_counts(pseudo, keep, valid, label, k, 255)
    want = {name: [0] * k for name in ("kept", "hits", "covered", "true")}
    for p, y, c, v in zip(pseudo.flatten().tolist(), label.flatten().tolist(), keep.flatten().tolist(), valid.flatten().tolist()):
        if not v or y == 255:
            continue
        want["true"][y] += 1
        if c:
            want["kept"][p] += 1
            want["covered"][y] += 1
            want["hits"][p] += p == y
    assert {name: t.long().tolist() for name, t in got.items()} == want
    assert sum(want["kept"]) > 0 and sum(want["hits"]) > 0


def test_diagnostic_record_is_the_ratio_of_the_interval_sums():
    space = LabelSpace.from_names("s", ["road", "car"])
    counts = {"kept": torch.tensor([4.0, 0.0]), "hits": torch.tensor([3.0, 0.0]),
              "covered": torch.tensor([3.0, 1.0]), "true": torch.tensor([6.0, 2.0])}
    means = {"loss": 1.5, **{k: float(v) for k, v in count_terms("a", space, counts).items()}}
    rec = diagnostic_record(means, {"a": space, "b": LabelSpace.from_names("b", ["x"])})
    assert rec["loss"] == 1.5 and not any(k.startswith(("pl_kept", "pl_hits", "pl_covered", "pl_true")) for k in rec)
    assert rec["pl_precision_a_road"] == 0.75 and rec["pl_precision_a_car"] is None  # nothing kept as car
    assert rec["pl_coverage_a_road"] == 0.5 and rec["pl_coverage_a_car"] == 0.5
    assert rec["pl_recall_a_road"] == 0.5 and rec["pl_recall_a_car"] == 0.0
    assert rec["pl_precision_a"] == 0.75 and rec["pl_coverage_a"] == 0.5 and rec["pl_recall_a"] == 3 / 8
    assert not any("_b" in k for k in rec)  # no counts of domain b: nothing derived


def diag_raw(tiny_raw, **consistency):
    raw = consistency_raw(tiny_raw, "unimatch")
    raw["method"]["consistency"].update(consistency)
    raw["train"].update({"iters": 4, "checkpoint_interval": 2})
    return raw


def test_diagnostics_log_precision_and_coverage_and_never_change_training(tiny_raw, tmp_path):
    """Threshold 0 keeps every pixel, so coverage is 1 and precision is the weak view's pixel accuracy;
    the run with diagnostics trains exactly like the run without them (labels are only read)."""
    raw = diag_raw(tiny_raw, diagnostics=True)
    raw["train"]["iters"] = 3
    Trainer(validate_config(raw), tmp_path / "diag", progress=False).run()
    plain = copy.deepcopy(raw)
    plain["method"]["consistency"]["diagnostics"] = False
    Trainer(validate_config(plain), tmp_path / "plain", progress=False).run()
    logs = [r for r in records(tmp_path / "diag") if "loss" in r]
    assert len(logs) == 3
    for r in logs:
        for d in ("city", "rural"):
            assert r[f"pl_coverage_{d}"] == pytest.approx(1.0)
            assert 0.0 <= r[f"pl_precision_{d}"] <= 1.0
            assert r[f"pl_recall_{d}"] == pytest.approx(r[f"pl_precision_{d}"])  # every pixel kept: recall = precision
            assert r[f"confident_{d}"] == pytest.approx(1.0)
        assert r["unsup_to_sup"] == pytest.approx(r["unsup"] / r["sup"])
        assert any(k.startswith("pl_precision_city_") for k in r) and not any(k.startswith("pl_kept_") for k in r)
    plain_logs = [r for r in records(tmp_path / "plain") if "loss" in r]
    assert not any(k.startswith("pl_") for r in plain_logs for k in r)
    assert [r["loss"] for r in plain_logs] == [r["loss"] for r in logs]
    assert_same_training_state(tmp_path / "diag", tmp_path / "plain")


class StudentSnapshots(TrainerHook):
    """Keeps the model's state before every step."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def before_step(self, trainer, iteration: int) -> None:
        self.states.append({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})


def test_ema_teacher_follows_the_formula(tiny_raw, tmp_path):
    """Three steps with momentum 0.6: teacher = s0, then 0.5 t + 0.5 s1, then min(2/3, 0.6) = 0.6:
    0.6 t + 0.4 s2 (s_t: the student before step t), for weights and BatchNorm statistics alike."""
    raw = diag_raw(tiny_raw, teacher="ema", teacher_momentum=0.6)
    raw["train"]["iters"] = 3
    snaps = StudentSnapshots()
    trainer = Trainer(validate_config(raw), tmp_path / "run", progress=False, hooks=[snaps])
    assert trainer.method.teacher.rate(0) == 0.0 and trainer.method.teacher.rate(5) == 0.6
    trainer.run()
    s0, s1, s2 = snaps.states
    teacher = trainer.method.teacher.model.state_dict()
    checked = 0
    for k, v in teacher.items():
        if not v.is_floating_point():
            assert torch.equal(v, s2[k]), k  # counters are copied
            continue
        want = 0.6 * (0.5 * s0[k] + 0.5 * s1[k]) + 0.4 * s2[k]
        torch.testing.assert_close(v, want, rtol=1e-6, atol=1e-6, msg=k)
        checked += 1
    assert checked > 10 and not trainer.method.teacher.model.training
    assert any(not torch.equal(s0[k], s2[k]) for k in teacher if teacher[k].is_floating_point())  # the student moved


def test_ema_teacher_is_saved_and_resumed_exactly_with_per_domain_batchnorm(tiny_raw, tmp_path):
    raw = diag_raw(tiny_raw, teacher="ema", teacher_momentum=0.9, weak_view="geometric")
    raw["model"]["norm"] = "domain"
    raw["train"].update({"iters": 3, "checkpoint_interval": 1})
    full, part = tmp_path / "full", tmp_path / "part"
    trainer = Trainer(validate_config(raw), full, progress=False)
    trainer.run()
    keys = trainer.method.state_dict().keys()
    assert any(k.startswith("teacher.model.") for k in keys)
    assert any("city" in k for k in keys if k.startswith("teacher.model.")) and any("rural" in k for k in keys)
    assert all(math.isfinite(r["loss"]) for r in records(full) if "loss" in r)
    run_killed_at(Trainer(validate_config(raw), part, progress=False), 2)
    Trainer(validate_config(raw), part, resume=True, progress=False).run()
    assert_same_training_state(full, part)


def test_ema_teacher_pseudo_labels_differ_from_the_students(tiny_raw, tmp_path):
    """With the teacher, the strong-view loss reads other pseudo-labels than the training pass's own."""
    logs = {}
    for teacher in ("student", "ema"):
        raw = diag_raw(copy.deepcopy(tiny_raw), teacher=teacher, threshold=0.0)
        raw["train"]["iters"] = 2
        Trainer(validate_config(raw), tmp_path / teacher, progress=False).run()
        logs[teacher] = [r["strong_city"] for r in records(tmp_path / teacher) if "loss" in r]
    assert logs["student"] != logs["ema"]


def test_ema_teacher_is_identical_on_two_torchrun_ranks(tiny_raw, tmp_path):
    """Two gloo processes see different images and keep rank-local BatchNorm statistics; the teacher,
    whose statistics are averaged over ranks, is the same on both."""
    raw = diag_raw(tiny_raw, teacher="ema", teacher_momentum=0.9)
    raw["train"].update({"iters": 3, "checkpoint_interval": 3})
    torch.multiprocessing.spawn(_train_rank, args=(2, free_port(), raw, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    teacher = [k for k in r0["method"] if k.startswith("teacher.model.")]
    assert any(k.endswith("running_mean") for k in teacher)
    for k in teacher:
        assert torch.equal(r0["method"][k], r1["method"][k]), k
    stats = [k for k in r0["model"] if k.endswith("running_mean")]
    assert any(not torch.equal(r0["model"][k], r1["model"][k]) for k in stats)  # the students' own statistics differ
