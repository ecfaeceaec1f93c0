"""The 'oracle' experiment row and the "gap closed" column."""
from __future__ import annotations

import json

import pytest

from univseg.cli import main
from univseg.engine.experiment import add_gap_closed, method_overrides


def test_oracle_key_labels_every_training_image_of_every_domain():
    overrides, dep = method_overrides("oracle", ["city", "rural"])
    assert dep is None
    assert overrides == ["method.name=joint", "domains.city.labeled={fraction: 1.0}", "domains.rural.labeled={fraction: 1.0}"]


def test_gap_closed_is_the_formula_on_a_hand_made_table():
    rows = [
        {"method": "joint", "a": 50.0, "b": 60.0, "average": 55.0},
        {"method": "oracle", "a": 60.0, "b": 60.0, "average": 60.0},
        {"method": "unimatch", "a": 55.0, "b": 61.0, "average": 58.0},
        {"method": "univ-full", "a": 48.0, "b": None, "average": None},
    ]
    out = {r["method"]: r for r in add_gap_closed(rows, ["a", "b"])}
    # (55 - 50) / (60 - 50) = 50 %; b: the oracle does not lead joint -> undefined; average (58 - 55) / 5 = 60 %
    assert out["unimatch"]["gap_closed_a"] == 50.0
    assert out["unimatch"]["gap_closed_b"] is None
    assert out["unimatch"]["gap_closed_average"] == 60.0
    assert out["univ-full"]["gap_closed_a"] == -20.0 and out["univ-full"]["gap_closed_average"] is None
    assert "gap_closed_a" not in out["joint"] and "gap_closed_a" not in out["oracle"]


def test_no_gap_column_without_both_rows():
    rows = [{"method": "joint", "a": 50.0, "average": 50.0}, {"method": "unimatch", "a": 52.0, "average": 52.0}]
    assert add_gap_closed(rows, ["a"]) == rows and "gap_closed_a" not in rows[1]


def test_experiment_with_oracle_writes_the_gap_closed_column(tiny_yaml, tmp_path, capsys):
    out = tmp_path / "exp"
    args = ["experiment", str(tiny_yaml), "--out", str(out), "--methods", "joint", "oracle", "univ-full",
            "--set", "train.iters=2", "--set", "train.eval_interval=0", "--no-progress"]
    assert main(args) == 0
    config = (out / "runs" / "oracle" / "config.yaml").read_text()
    assert config.count("fraction: 1.0") == 2 and "name: joint" in config
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())}
    j, o, u = rows["joint"], rows["oracle"], rows["univ-full"]
    gap = o["average"] - j["average"]
    expected = None if gap <= 0 else round(100 * (u["average"] - j["average"]) / gap, 1)
    assert u["gap_closed_average"] == expected
    md = (out / "results.md").read_text()
    assert "gap closed (average)" in md and "Gap closed:" in md
    assert "gap_closed_average" in (out / "results.csv").read_text().splitlines()[0]


@pytest.mark.parametrize("key", ["oracle-city", "orcale"])
def test_misspelt_oracle_names_the_key_forms(key):
    from univseg.errors import ConfigError

    with pytest.raises(ConfigError, match="oracle"):
        method_overrides(key, ["city", "rural"])


def test_label_sweep_runs_each_count_shares_the_oracle_and_draws_the_curve(tiny_yaml, tmp_path, capsys):
    """Two counts of labeled images per domain: each count's comparison in labels-<N>/ with its own
    labeled subsets, one oracle run for both, label_efficiency.{md,csv,json,png} with a row per
    (method, count), and a report that shows the sweep."""
    from PIL import Image

    from univseg.engine.report import write_report
    from univseg.engine.report_run import ReportOptions

    out = tmp_path / "sweep"
    args = ["experiment", str(tiny_yaml), "--out", str(out), "--methods", "joint", "oracle", "--labels", "2", "6",
            "--set", "train.iters=2", "--set", "train.eval_interval=0", "--no-progress"]
    assert main(args) == 0
    for n in (2, 6):
        config = (out / f"labels-{n}" / "runs" / "joint" / "config.yaml").read_text()
        assert config.count(f"count: {n}") == 2
        assert not (out / f"labels-{n}" / "runs" / "oracle").exists()
    assert (out / "oracle" / "eval_results.json").is_file()
    rows = json.loads((out / "label_efficiency.json").read_text())
    assert [(r["method"], r["labels"]) for r in rows] == [("joint", 2), ("oracle", 2), ("joint", 6), ("oracle", 6)]
    oracle = [r["average"] for r in rows if r["method"] == "oracle"]
    assert oracle[0] == oracle[1]  # the same run
    per_count = {n: json.loads((out / f"labels-{n}" / "results.json").read_text()) for n in (2, 6)}
    assert rows[0]["average"] == per_count[2][0]["average"] and rows[2]["average"] == per_count[6][0]["average"]
    assert "| joint" in (out / "label_efficiency.md").read_text() and "2 labels" in (out / "label_efficiency.md").read_text()
    assert (out / "label_efficiency.csv").read_text().splitlines()[0].startswith("method,labels,city,rural,average")
    assert Image.open(out / "label_efficiency.png").size[0] > 300
    capsys.readouterr()
    assert main(args) == 0  # a rerun reuses every run, the oracle's included
    assert capsys.readouterr().out.count("finished earlier") == 4
    page = write_report(out, ReportOptions(samples=0, progress=False)).read_text()
    assert 'class="label-efficiency"' in page and page.count('class="comparison"') == 2


def test_label_counts_must_be_positive(tiny_yaml, tmp_path, capsys):
    assert main(["experiment", str(tiny_yaml), "--out", str(tmp_path / "x"), "--labels", "0", "--no-progress"]) == 2
    assert "--labels" in capsys.readouterr().err


def test_training_minutes_sum_the_logged_step_times(tmp_path):
    from univseg.engine.experiment import training_minutes

    records = [{"iter": 20, "loss": 1.0, "sec_per_iter": 3.0}, {"iter": 20, "eval": {"a": 0.5}},
               {"iter": 40, "loss": 0.5, "sec_per_iter": 6.0}, {"iter": 50, "loss": 0.4, "sec_per_iter": 12.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert training_minutes(tmp_path) == pytest.approx((20 * 3 + 20 * 6 + 10 * 12) / 60)
    assert training_minutes(tmp_path / "missing") is None
