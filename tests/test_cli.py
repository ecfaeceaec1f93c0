"""Smoke tests of every CLI verb, end to end on the tiny synthetic config."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from univseg.cli import build_parser, main


def test_python_m_univseg_is_the_same_program():
    out = subprocess.run([sys.executable, "-m", "univseg", "--help"], capture_output=True, text=True, check=True).stdout
    for verb in ("demo", "train", "eval", "predict", "experiment"):
        assert verb in out
    version = subprocess.run([sys.executable, "-m", "univseg", "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("univseg ")


def test_every_verb_has_help(capsys):
    verbs = [[v] for v in build_parser()._subparsers._group_actions[0].choices if v not in ("data", "weights")]
    verbs += [["data", "check"], ["data", "download"], ["weights", "list"], ["weights", "fetch"], ["weights", "verify"]]
    assert len(verbs) == 15
    for verb in verbs:
        with pytest.raises(SystemExit) as e:
            main([*verb, "--help"])
        assert e.value.code == 0
        assert "--no-progress" in capsys.readouterr().out, verb
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    assert "check" in capsys.readouterr().out


def test_no_verb_prints_usage_and_fails(capsys):
    assert main([]) == 2
    assert "VERB" in capsys.readouterr().out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run through the CLI shared by the eval / predict tests."""
    from conftest import train_tiny_with_cli

    return train_tiny_with_cli(tmp_path_factory.mktemp("cli"), "train.iters=4")


def test_train_writes_checkpoints_and_resume_is_a_no_op_when_finished(trained, capsys):
    cfg, work = trained
    for name in ("latest.pt", "best.pt", "config.yaml", "metrics.jsonl", "eval_results.json"):
        assert (work / name).is_file()
    before = (work / "metrics.jsonl").read_text()
    assert main(["train", str(cfg), "--work-dir", str(work), "--set", "train.iters=4", "--resume", "--no-progress"]) == 0
    assert (work / "metrics.jsonl").read_text() == before


def test_eval_prints_table_and_writes_json(trained, tmp_path, capsys):
    cfg, work = trained
    out = tmp_path / "eval.json"
    assert main(["eval", str(cfg), str(work / "latest.pt"), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| domain" in printed and "city per-class IoU" in printed
    res = json.loads(out.read_text())
    assert set(res["domains"]) == {"city", "rural"}
    stored = json.loads((work / "eval_results.json").read_text())
    assert res["domains"]["city"]["mIoU"] == pytest.approx(stored["domains"]["city"]["mIoU"])


def test_predict_writes_ids_and_overlays_in_all_label_spaces(trained, tmp_path):
    _, work = trained
    images = tmp_path / "in"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(images / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(images / "sub" / "b.png")
    out = tmp_path / "out"
    assert main(["predict", str(work / "latest.pt"), str(images), "--out", str(out), "--label-space", "all", "--no-progress"]) == 0
    ids = np.asarray(Image.open(out / "a_city.png"))
    assert ids.shape == (30, 40) and ids.max() < 9
    assert np.asarray(Image.open(out / "b_rural.png")).max() < 8
    overlay = np.asarray(Image.open(out / "b_rural_overlay.png"))  # the image's 20x24 pixels, the legend under them
    assert overlay.shape[0] > 20 and overlay.shape[1] >= 24 and overlay.shape[2] == 3
    assert len(list(out.iterdir())) == 8


def test_predict_by_label_space_name_and_unknown_name(trained, tmp_path, capsys):
    _, work = trained
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(img)
    assert main(["predict", str(work / "latest.pt"), str(img), "--out", str(tmp_path / "o"), "--label-space", "synthetic-coarse", "--no-progress"]) == 0
    assert (tmp_path / "o" / "x_rural.png").is_file()
    assert main(["predict", str(work / "latest.pt"), str(img), "--out", str(tmp_path / "o"), "--label-space", "cityscapes"]) == 2
    assert "no label space 'cityscapes'" in capsys.readouterr().err


def test_python_api_in_three_lines(trained):
    _, work = trained
    from univseg import Predictor

    predictor = Predictor.from_checkpoint(work / "best.pt", device="cpu")
    mask = predictor.predict(np.full((24, 32, 3), 120, dtype=np.uint8), label_space="city")
    assert mask.shape == (24, 32) and mask.dtype == np.uint8
    both = predictor.predict_all(np.full((24, 32, 3), 120, dtype=np.uint8))
    assert np.array_equal(both["city"], mask)


def test_user_errors_exit_2_with_a_message(trained, tmp_path, capsys):
    cfg, work = trained
    assert main(["train", str(cfg), "--set", "train.itres=3"]) == 2
    assert "train.itres: unknown key. Did you mean 'iters'?" in capsys.readouterr().err
    assert main(["eval", str(cfg), str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["eval", str(cfg), str(garbage)]) == 2
    assert "cannot load checkpoint" in capsys.readouterr().err
    assert main(["predict", str(work / "latest.pt"), str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    assert "input not found" in capsys.readouterr().err


def test_experiment_help_names_every_registered_method(capsys):
    from univseg.engine.experiment_options import KEYED_METHODS, PLAIN_METHODS
    from univseg.methods import METHODS

    assert set(METHODS.names()) == set(PLAIN_METHODS) | set(KEYED_METHODS)
    with pytest.raises(SystemExit):
        main(["experiment", "--help"])
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps lines after hyphens
    for key in (*PLAIN_METHODS, "single-<domain>", "finetune-<A>-to-<B>", "cycada-<A>-to-<B>", "oracle"):
        assert key in text, key


def test_experiment_writes_table_and_skips_finished_runs(tiny_yaml, tmp_path, capsys):
    out = tmp_path / "exp"
    args = ["experiment", str(tiny_yaml), "--out", str(out), "--methods", "single-city", "finetune-city-to-rural", "joint",
            "--set", "train.iters=2", "--set", "train.eval_interval=0", "--no-progress"]
    assert main(args) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in rows] == ["single-city", "finetune-city-to-rural", "joint"]
    assert all(set(r) >= {"method", "city", "rural", "average"} for r in rows)
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0] == "method,city,rural,average,minutes" and len(csv_lines) == 4
    assert all(r["minutes"] is not None and 0 <= r["minutes"] < 5 for r in rows)  # the logged step times of each run
    assert (out / "results.md").read_text().count("|") > 10
    assert Image.open(out / "results.png").size[0] > 100
    capsys.readouterr()
    mtime = (out / "runs" / "joint" / "latest.pt").stat().st_mtime
    assert main(args) == 0
    assert capsys.readouterr().out.count("finished earlier") == 3
    assert (out / "runs" / "joint" / "latest.pt").stat().st_mtime == mtime
    assert json.loads((out / "results.json").read_text()) == rows
    # a setting that changes what is learned is refused before anything trains; a neutral one is not
    assert main(args + ["--set", "method.lambda_cross=0.25", "--set", "train.num_workers=1"]) == 2
    err = capsys.readouterr().err
    assert "method.lambda_cross: 0.5 -> 0.25" in err and "num_workers" not in err and "another --out" in err
    assert (out / "runs" / "joint" / "latest.pt").stat().st_mtime == mtime
    assert main(args + ["--set", "train.num_workers=1"]) == 0
    assert capsys.readouterr().out.count("finished earlier") == 3


def test_data_check_split_and_download_verbs(tiny_yaml, tmp_path, capsys):
    assert main(["data", "check", str(tiny_yaml), "--json", str(tmp_path / "report.json"), "--no-progress"]) == 0
    assert "OK: 2 domain(s), 0 error(s)" in capsys.readouterr().out
    assert json.loads((tmp_path / "report.json").read_text())["ok"] is True

    assert main(["split", str(tiny_yaml), "--out", str(tmp_path / "splits"), "--count", "3", "--seed", "5"]) == 0
    labeled = (tmp_path / "splits" / "city" / "labeled.txt").read_text().splitlines()
    unlabeled = (tmp_path / "splits" / "city" / "unlabeled.txt").read_text().splitlines()
    assert len(labeled) == 3 and len(unlabeled) == 9 and not set(labeled) & set(unlabeled)
    assert len((tmp_path / "splits" / "rural" / "val.txt").read_text().splitlines()) == 4

    assert main(["data", "download", "--list"]) == 0
    assert "camvid" in capsys.readouterr().out
    assert main(["data", "download", "cityscapes", "--root", str(tmp_path)]) == 2
    assert "gtFine_trainvaltest.zip" in capsys.readouterr().err
    assert main(["data", "download", "camvid"]) == 2
    assert "--root is required" in capsys.readouterr().err


def test_data_check_fails_on_a_missing_root(tiny_raw, tmp_path, capsys):
    import yaml

    tiny_raw["domains"][0]["dataset"] = {"type": "camvid", "root": str(tmp_path / "nope")}
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw))
    assert main(["data", "check", str(cfg), "--no-progress"]) == 1
    assert "nope" in capsys.readouterr().out
