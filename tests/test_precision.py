"""Precision settings: train.amp for the training step, eval.amp for the passes without gradients."""

import json

import pytest
import yaml
import torch
from torch import nn

from univseg.cli import _load, build_parser
from univseg.config import validate_config
from univseg.engine.precision import resolve_channels_last
from univseg.engine.trainer import Trainer
from univseg.errors import ConfigError
from univseg.models.universal import UniversalModel


@pytest.mark.parametrize(
    "train_amp, eval_amp, expected", [("bf16", "train", "bf16"), ("none", "train", "none"), ("none", "bf16", "bf16"), ("bf16", "none", "none")]
)
def test_eval_amp_follows_train_amp_unless_set(tiny_raw, train_amp, eval_amp, expected):
    tiny_raw["train"]["amp"] = train_amp
    tiny_raw["eval"]["amp"] = eval_amp
    assert validate_config(tiny_raw).inference_amp == expected


def test_centroid_pass_and_evaluation_use_eval_amp_and_the_step_train_amp(tiny_raw, tmp_path):
    """train.amp none + eval.amp bf16: every convolution of a training step is fp32 (in the model's
    NCHW layout), every one of the centroid pass and of the evaluations bf16 and channels-last (the
    fast layout of oneDNN's bf16 kernels); eval_results.json records both precisions."""
    tiny_raw["train"].update({"iters": 4, "eval_interval": 2, "amp": "none"})
    tiny_raw["eval"]["amp"] = "bf16"
    trainer = Trainer(validate_config(tiny_raw), tmp_path, progress=False)
    seen: dict[bool, set] = {True: set(), False: set()}  # model.training -> (conv output dtype, channels-last input)
    first_conv = next(m for m in trainer.model.modules() if isinstance(m, nn.Conv2d))
    first_conv.register_forward_hook(
        lambda mod, inp, out: seen[mod.training].add((out.dtype, inp[0].is_contiguous(memory_format=torch.channels_last)))
    )
    centroid_passes = []
    original = trainer.centroid_sums
    trainer.centroid_sums = lambda: centroid_passes.append(1) or original()
    trainer.run()
    assert centroid_passes, "univ-full never built its centroids: the test would not cover the centroid pass"
    assert seen[True] == {(torch.float32, False)}
    assert seen[False] == {(torch.bfloat16, True)}
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert (results["amp"], results["train_amp"]) == ("bf16", "none")


def test_eval_amp_fp16_on_cpu_names_the_key(tiny_raw, tmp_path):
    tiny_raw["eval"]["amp"] = "fp16"
    with pytest.raises(ConfigError, match=r"eval\.amp=fp16 needs a CUDA device"):
        Trainer(validate_config(tiny_raw), tmp_path, progress=False)


@pytest.mark.parametrize("verb, key", [("eval", "eval"), ("train", "train")])
def test_amp_flag_sets_the_verbs_own_precision(tiny_yaml, verb, key):
    """`univseg eval --amp` sets eval.amp (not train.amp); `univseg train --amp` sets train.amp."""
    argv = [verb, str(tiny_yaml), *(["model.pt"] if verb == "eval" else []), "--amp", "bf16"]
    cfg = _load(build_parser().parse_args(argv))
    other = "train" if key == "eval" else "eval"
    assert getattr(cfg, key).amp == "bf16"
    assert getattr(cfg, other).amp == {"train": "none", "eval": "train"}[other]


def test_bf16_inference_in_channels_last_gives_the_logits_of_the_nchw_pass():
    torch.manual_seed(0)
    model = UniversalModel("erfnet", {"a": 5}, embed_dim=4, backbone_args={"width": 0.25}).eval()
    x = torch.rand(2, 3, 40, 56) * 255
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nchw = model(x)["a"]  # gradients on: the model's own (NCHW) layout
        with torch.inference_mode():
            nhwc = model(x)["a"]
    assert nhwc.dtype == torch.bfloat16
    torch.testing.assert_close(nhwc.float(), nchw.detach().float(), rtol=0.02, atol=0.05)
    assert (nhwc.argmax(1) == nchw.argmax(1)).float().mean() > 0.99


@pytest.mark.parametrize(
    "setting, device, amp, depthwise, expected",
    [
        ("auto", "cpu", "none", False, True),
        ("auto", "cpu", "none", True, True),
        ("auto", "cpu", "bf16", False, True),
        ("auto", "cpu", "bf16", True, False),  # depthwise encoders: bf16 NHWC no faster on CPU
        ("auto", "cuda", "none", False, False),
        ("auto", "cuda", "bf16", True, True),
        ("auto", "cuda", "fp16", False, True),
        ("auto", "mps", "none", False, False),
        (True, "cuda", "none", True, True),
        (False, "cpu", "none", False, False),
    ],
)
def test_channels_last_auto_resolution(setting, device, amp, depthwise, expected):
    assert resolve_channels_last(setting, torch.device(device), amp, depthwise) is expected


@pytest.mark.parametrize("backbone, amp, expected", [("erfnet", "none", True), ("mobilenet_v2", "bf16", False), ("mobilenet_v2", "none", True)])
def test_channels_last_auto_is_the_default_and_is_recorded(tiny_raw, tmp_path, backbone, amp, expected):
    """The default layout on CPU is channels-last, except bf16 training of a depthwise encoder;
    the weights are stored in it, and eval_results.json records the layout the run trained in."""
    del tiny_raw["train"]["channels_last"]
    tiny_raw["model"] = {"backbone": backbone, "embed_dim": 8, **({"backbone_args": {"width": 0.25}} if backbone == "erfnet" else {})}
    tiny_raw["train"].update({"amp": amp, "iters": 1, "eval_interval": 0})
    tiny_raw["eval"]["max_images"] = 1
    cfg = validate_config(tiny_raw)
    assert cfg.train.channels_last == "auto"
    trainer = Trainer(cfg, tmp_path, progress=False)
    conv = next(m for m in trainer.model.encoder.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is expected
    assert conv.weight.is_contiguous() is not expected
    trainer.run()
    assert json.loads((tmp_path / "eval_results.json").read_text())["train_channels_last"] is expected


def test_a_checkpoint_is_evaluated_in_the_layout_its_run_trained_in(tiny_raw, tmp_path):
    """`univseg eval` of a channels-last run's checkpoint gives exactly the run's own evaluation
    (the same kernels); a checkpoint from before train.channels_last existed loads NCHW."""
    from univseg.cli import main
    from univseg.engine.checkpoint import Checkpoint
    from univseg.engine.predictor import Predictor

    del tiny_raw["train"]["channels_last"]  # the default, auto: channels-last on CPU
    tiny_raw["train"].update({"iters": 2, "eval_interval": 0})
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_raw))
    assert main(["train", str(cfg), "--work-dir", str(tmp_path / "run"), "--no-progress"]) == 0
    stored = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert stored["train_channels_last"] is True
    out = tmp_path / "eval.json"
    assert main(["eval", str(cfg), str(tmp_path / "run" / "latest.pt"), "--out", str(out), "--no-progress"]) == 0
    evaluated = json.loads(out.read_text())
    for domain in ("city", "rural"):
        assert evaluated["domains"][domain]["confusion"] == stored["domains"][domain]["confusion"], domain
    predictor = Predictor.from_checkpoint(tmp_path / "run" / "latest.pt", device="cpu")
    conv = next(m for m in predictor.model.encoder.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    old = Checkpoint.load(tmp_path / "run" / "latest.pt")
    del old.config["train"]["channels_last"]
    old.save(tmp_path / "old.pt")
    conv = next(m for m in Predictor.from_checkpoint(tmp_path / "old.pt", device="cpu").model.encoder.modules()
                if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous()
