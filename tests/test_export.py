"""Export to ONNX and TorchScript: outputs match PyTorch at other sizes, per-domain BatchNorm
follows the label space, metadata, the exported-model predictors, errors and the CLI glue."""
import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from univseg.config import validate_config
from univseg.data.synthetic import LABEL_SPACES
from univseg.engine.checkpoint import Checkpoint
from univseg.engine.export import (
    EXTRA_FILE, METADATA_KEY, Comparison, ExportCheck, OnnxPredictor, TorchScriptPredictor, export_model, load_exported,
    open_predictor, run_export, verify_export,
)
from univseg.engine.export_options import add_export_arguments
from univseg.engine.inference import InferenceSettings
from univseg.engine.predictor import Predictor
from univseg.errors import CheckpointError, ConfigError, UnknownNameError
from univseg.models.domain_norm import domain_norm_layers
from univseg.models.universal import UniversalModel

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

SIZES = [(32, 48), (40, 56)]
HEADS = ["city", "rural"]


def save_tiny_checkpoint(path: Path, norm: str) -> Path:
    """A tiny city + rural model after one training pass, saved as a checkpoint. Under per-domain
    norm, rural's BatchNorm statistics are moved far from city's so the two domains differ clearly."""
    from conftest import TINY

    raw = copy.deepcopy(TINY)
    raw["model"]["norm"] = norm
    torch.manual_seed(0)
    m = UniversalModel("erfnet", {"city": 9, "rural": 8}, embed_dim=8, backbone_args={"width": 0.25}, norm=norm).train()
    m({"city": torch.rand(2, 3, 32, 48) * 255, "rural": torch.rand(2, 3, 32, 48) * 100})
    with torch.no_grad():
        for layer in domain_norm_layers(m):
            layer.norms["rural"].running_mean += 0.5
            layer.norms["rural"].running_var *= 3.0
    spaces = {"city": LABEL_SPACES["fine"], "rural": LABEL_SPACES["coarse"]}
    Checkpoint(validate_config(raw).to_dict(), spaces, m.state_dict()).save(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    return {norm: save_tiny_checkpoint(root / f"{norm}.pt", norm) for norm in ("shared", "domain")}


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    """``exported(norm, fmt)``: the checkpoint's every head exported as ``fmt`` (made once per module)."""
    root, made = tmp_path_factory.mktemp("exported"), {}

    def get(norm: str, fmt: str) -> Path:
        if (norm, fmt) not in made:
            made[norm, fmt] = export_model(checkpoints[norm], fmt, "all", root / f"{norm}_{fmt}.bin")
        return made[norm, fmt]

    return get


def image(h: int = 36, w: int = 52, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def reference(checkpoint: Path) -> Predictor:
    return Predictor.from_checkpoint(checkpoint, device="cpu", amp="none")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("norm", ["shared", "domain"])
def test_export_matches_pytorch_in_every_label_space_at_two_sizes(checkpoints, exported, norm, fmt):
    path = exported(norm, fmt)
    check = verify_export(reference(checkpoints[norm]), path, images=[], sizes=SIZES)
    assert check.ok, check.format()
    assert sorted({c.head for c in check.comparisons}) == HEADS  # 'all' exports every head
    assert {c.inputs for c in check.comparisons} == {"random 2x32x48", "random 2x40x56"}
    for c in check.comparisons:
        assert c.max_abs_diff < 1e-4 and c.agreement == 1.0, c
    assert list(load_exported(path, device="cpu").label_spaces) == HEADS


def logits_of(model, x: torch.Tensor, head: str, domain: str | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(x, heads=[head], domain=domain)[head]


def test_per_domain_export_of_a_label_space_uses_that_domains_batchnorm(checkpoints, tmp_path):
    out = tmp_path / "city.onnx"
    out.write_bytes(b"an older export")
    assert export_model(checkpoints["domain"], "onnx", "synthetic-fine", out, overwrite=True) == out  # label-space name -> head
    ref, exp = reference(checkpoints["domain"]), OnnxPredictor.from_file(out, device="cpu")
    assert list(exp.label_spaces) == ["city"]
    x = torch.randint(0, 256, (2, 3, 40, 56), generator=torch.Generator().manual_seed(1)).float()
    got = exp.model(x, heads=["city"])["city"]
    assert torch.allclose(got, logits_of(ref.model, x, "city"), atol=1e-4)
    assert (got - logits_of(ref.model, x, "city", domain="rural")).abs().max() > 1e-2  # not rural's BatchNorm


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_metadata_holds_label_spaces_and_class_names(checkpoints, exported):
    proto = onnx.load(str(exported("shared", "onnx")))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    assert meta["heads"] == HEADS
    assert [o.name for o in proto.graph.output] == HEADS
    assert meta["label_spaces"]["city"]["name"] == "synthetic-fine"
    assert [c["name"] for c in meta["label_spaces"]["rural"]["classes"]] == LABEL_SPACES["coarse"].names
    extra = {EXTRA_FILE: ""}
    torch.jit.load(str(exported("shared", "torchscript")), _extra_files=extra)
    assert json.loads(extra[EXTRA_FILE])["label_spaces"] == meta["label_spaces"]
    ts = TorchScriptPredictor.from_file(exported("shared", "torchscript"), device="cpu")
    assert ts.label_spaces == {"city": LABEL_SPACES["fine"], "rural": LABEL_SPACES["coarse"]}


@pytest.mark.parametrize("norm", ["shared", "domain"])
def test_onnx_predictor_predicts_like_the_checkpoint(checkpoints, exported, norm):
    ref, exp = reference(checkpoints[norm]), OnnxPredictor.from_file(exported(norm, "onnx"), device="cpu")
    img = image()
    for head in HEADS:
        assert np.array_equal(exp.predict(img, head), ref.predict(img, head))
        assert exp.logits(img, head).shape == (ref.label_spaces[head].num_classes, 36, 52)
    assert np.array_equal(exp.predict(img, "synthetic-coarse"), ref.predict(img, "rural"))  # a label-space name
    assert all(np.array_equal(m, ref.predict(img, h)) for h, m in exp.predict_all(img).items())
    with pytest.raises(UnknownNameError, match="available: city \\(synthetic-fine\\), rural \\(synthetic-coarse\\)"):
        exp.predict(img, "nope")
    tta = InferenceSettings("slide", crop=(24, 32), stride=(16, 16), flip=True)  # runs through infer_logits too
    ref.inference = exp.inference = tta
    assert torch.allclose(exp.logits(img, "rural"), ref.logits(img, "rural"), atol=1e-4)


def test_export_errors_name_the_problem(checkpoints, tmp_path):
    with pytest.raises(UnknownNameError, match="no label space 'nope'; available: city \\(synthetic-fine\\), rural \\(synthetic-coarse\\)"):
        export_model(checkpoints["shared"], "onnx", "nope", tmp_path / "x.onnx")
    with pytest.raises(ConfigError, match="unsupported export format 'tflite'; use one of onnx, torchscript"):
        export_model(checkpoints["shared"], "tflite", "all", tmp_path / "x.tflite")
    taken = tmp_path / "taken.onnx"
    taken.write_bytes(b"x")
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        export_model(checkpoints["shared"], "onnx", "all", taken)
    assert taken.read_bytes() == b"x"
    with pytest.raises(ConfigError, match="is a folder"):
        export_model(checkpoints["shared"], "onnx", "all", tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        export_model(tmp_path / "missing.pt", "onnx")
    with pytest.raises(CheckpointError, match="not a univseg checkpoint"):
        export_model(taken, "onnx")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.onnx.export(dynamo=False) of the foreign file
def test_exported_file_errors_name_the_file(checkpoints, tmp_path):
    with pytest.raises(CheckpointError, match="is not an ONNX model .*--runtime torch"):
        OnnxPredictor.from_file(checkpoints["shared"])
    with pytest.raises(CheckpointError, match="not found"):
        open_predictor(tmp_path / "missing.onnx", runtime="onnxruntime")
    with pytest.raises(ConfigError, match="unknown runtime 'tensorrt'"):
        open_predictor(checkpoints["shared"], runtime="tensorrt")
    plain = tmp_path / "plain.onnx"  # an ONNX model, but not one univseg wrote
    torch.onnx.export(torch.nn.Identity(), (torch.zeros(1),), str(plain), dynamo=False, input_names=["image"])
    with pytest.raises(CheckpointError, match="not a univseg export"):
        OnnxPredictor.from_file(plain)


def test_check_fails_beyond_the_limits():
    good, off = Comparison("random", "city", 1e-6, 1.0), Comparison("x.png", "city", 0.5, 0.99)
    assert ExportCheck([good]).ok and "OK" in ExportCheck([good]).format()
    failed = ExportCheck([good, off])
    assert not failed.ok
    assert "FAILED" in failed.format() and "<= 0.001" in failed.format() and "99.9%" in failed.format()
    broken = ExportCheck([good, Comparison("random 2x200x296", "city", float("inf"), 0.0, "RuntimeError: bad shape")])
    assert not broken.ok and "random 2x200x296: RuntimeError: bad shape" in broken.format()
    assert not ExportCheck([good], min_agreement=1.01).ok and ExportCheck([off], atol=1.0, min_agreement=0.98).ok


def test_run_export_writes_verifies_on_real_images_and_prints_the_table(checkpoints, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(image(37, 53, seed=2)).save(folder / "street.png")
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    out = tmp_path / "rural.onnx"
    args = parser.parse_args([str(checkpoints["domain"]), "--format", "onnx", "--label-space", "rural", "--out", str(out),
                              "--images", str(folder), "--sizes", "32x48", "40x56"])
    assert run_export(args) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "--runtime onnxruntime" in printed
    assert "random 2x40x56" in printed and "street.png" in printed and "OK: the exported model matches PyTorch" in printed
    x = torch.from_numpy(image(37, 53, seed=2)).permute(2, 0, 1).float()[None]
    ref, got = reference(checkpoints["domain"]), OnnxPredictor.from_file(out).model(x)["rural"]
    assert torch.allclose(got, logits_of(ref.model, x, "rural"), atol=1e-4)  # rural's BatchNorm
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        run_export(parser.parse_args([str(checkpoints["domain"]), "--out", str(out)]))
    with pytest.raises(SystemExit):
        parser.parse_args([str(checkpoints["domain"]), "--sizes", "32by48"])


def test_python_m_univseg_export_and_predict_with_onnxruntime(checkpoints, tmp_path):
    out = tmp_path / "model.onnx"
    cmd = [sys.executable, "-m", "univseg", "export", str(checkpoints["shared"]), "--out", str(out), "--sizes", "32x48"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "OK: the exported model matches PyTorch" in done.stdout
    Image.fromarray(image()).save(tmp_path / "street.png")
    cmd = [sys.executable, "-m", "univseg", "predict", str(out), str(tmp_path / "street.png"), "--out", str(tmp_path / "pred"),
           "--label-space", "all", "--runtime", "onnxruntime", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ids = np.array(Image.open(tmp_path / "pred" / "street_city.png"))
    assert np.array_equal(ids, reference(checkpoints["shared"]).predict(image(), "city"))
