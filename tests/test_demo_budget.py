"""``univseg demo --iters N``: the warm-ups scale with the budget, and the demo says when the alignment terms start."""
from __future__ import annotations

from univseg.config import load_config, resolve_config_path
from univseg.demo import budget_overrides


def test_a_short_demo_scales_the_warm_ups_and_says_when_alignment_starts(capsys):
    demo = load_config(resolve_config_path("demo"))
    assert demo.train.iters == 300 and demo.method.warmup_iters == 100  # the numbers the message below is about
    overrides = budget_overrides(30)
    assert overrides == ["train.iters=30", "method.warmup_iters=10", "train.schedule.warmup_iters=2"]
    printed = capsys.readouterr().out
    assert "method.warmup_iters 100 -> 10" in printed
    assert "univ-full's alignment terms start after 10 supervised iterations, at iteration 11 of 30" in printed
    cfg = load_config(resolve_config_path("demo"), overrides)
    assert (cfg.train.iters, cfg.method.warmup_iters, cfg.train.schedule.warmup_iters) == (30, 10, 2)


def test_the_configs_own_budget_changes_nothing(capsys):
    assert budget_overrides(None) == []
    assert budget_overrides(300) == ["train.iters=300"]
    assert capsys.readouterr().out == ""
