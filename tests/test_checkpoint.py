"""The checkpoint record: round trip, format-1 files written by the previous code, refusals."""
import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY

from univseg.config import validate_config
from univseg.engine.checkpoint import FORMAT_VERSION, Checkpoint
from univseg.engine.predictor import Predictor
from univseg.engine.trainer import Trainer
from univseg.errors import CheckpointError

V1 = Path(__file__).parent / "fixtures" / "checkpoint_v1"


def v1_raw(method: str, **method_keys) -> dict:
    """The config the format-1 fixtures were trained with (see fixtures/checkpoint_v1/make_v1.py)."""
    raw = copy.deepcopy(TINY)
    raw["model"] = {"backbone": "erfnet", "backbone_args": {"width": 0.125}, "embed_dim": 4}
    raw["method"] = {"name": method, "warmup_iters": 1, **method_keys}
    raw["train"].update(iters=4, eval_interval=0, checkpoint_interval=2, optimizer={"type": "sgd", "lr": 0.01, "momentum": 0.0})
    return raw


def seeded_image():
    g = torch.Generator().manual_seed(0)
    return (torch.rand(32, 48, 3, generator=g) * 255).to(torch.uint8).numpy()


@pytest.mark.parametrize("name, aux", [("univ_full", set()), ("adversarial", {"discriminators"})])
def test_format_1_checkpoints_load_and_predict_as_the_previous_code_did(name, aux):
    ckpt = Checkpoint.load(V1 / f"{name}.pt")
    assert ckpt.format_version == 1 and ckpt.iteration == 3
    assert set(ckpt.optimizers) == {"model"} | aux
    assert set(ckpt.label_spaces) == {"city", "rural"}
    expected = json.loads((V1 / "expected.json").read_text())[name.replace("_", "-")]
    predictor = Predictor.from_checkpoint(V1 / f"{name}.pt", device="cpu", amp="none")
    assert predictor.model.norm == "shared" and "norm" not in ckpt.config["model"]  # keys added later take their defaults
    image = seeded_image()
    for head, values in expected.items():
        got = predictor.logits(image, head).flatten()[:8]
        assert torch.allclose(got, torch.tensor(values), rtol=1e-5, atol=1e-6), head


@pytest.mark.parametrize("name, method_keys", [("univ_full", {}), ("adversarial", {"adversarial": {"ndf": 2, "semi_start": 1}})])
def test_training_resumes_from_a_format_1_checkpoint(name, method_keys, tmp_path):
    raw_old = torch.load(V1 / f"{name}.pt", weights_only=True)
    shutil.copy(V1 / f"{name}.pt", tmp_path / "latest.pt")
    # the fixture stopped at iteration 3 of 3, before train.channels_last existed: going on to 4 is a change on purpose
    t = Trainer(validate_config(v1_raw(name.replace("_", "-"), **method_keys)), tmp_path, resume=True, progress=False,
                allow_changes=("train.iters", "train.channels_last"))
    assert t.start_iter == 3 and t.config_changes == ["train.iters: 3 -> 4", "train.channels_last: 'auto' -> False"]
    for k, v in raw_old["model"].items():
        assert torch.equal(t.model.state_dict()[k], v), k
    old_method = raw_old["method"]
    if "centroids" in old_method:
        assert t.method.bank.ready == old_method["centroids"]["ready"]
        for d, c in old_method["centroids"]["centroids"].items():
            assert torch.equal(t.method.bank.get(d)[0], c) and torch.equal(t.method.bank.get(d)[1], old_method["centroids"]["valid"][d])
    else:
        for d, state in old_method["discriminators"].items():
            for k, v in state.items():
                assert torch.equal(t.method.discriminators[d].state_dict()[k], v), (d, k)
        assert t.optimizers["discriminators"].state_dict()["state"].keys() == old_method["d_optimizer"]["state"].keys()
    t.run()
    resumed = Checkpoint.load(tmp_path / "latest.pt")
    assert resumed.format_version == FORMAT_VERSION and resumed.iteration == 4


def test_record_round_trips_every_field(tmp_path):
    from univseg.data.synthetic import LABEL_SPACES

    record = Checkpoint(
        config={"model": {"backbone": "erfnet"}},
        label_spaces={"city": LABEL_SPACES["fine"]},
        model={"w": torch.arange(3.0)},
        method={"bank.initialised": torch.tensor(True)},
        optimizers={"model": {"state": {}, "param_groups": []}},
        iteration=7,
        best={"mean_mIoU": 0.5, "iteration": 5},
        rng={"torch": torch.get_rng_state()},
        data={"seed": 3, "world_size": 2},
    )
    record.save(tmp_path / "c.pt")
    back = Checkpoint.load(tmp_path / "c.pt")
    assert back.format_version == FORMAT_VERSION and back.iteration == 7 and back.data == {"seed": 3, "world_size": 2}
    assert back.label_spaces["city"].names == LABEL_SPACES["fine"].names
    assert torch.equal(back.model["w"], torch.arange(3.0)) and bool(back.method["bank.initialised"])
    assert back.best == {"mean_mIoU": 0.5, "iteration": 5} and back.optimizers == record.optimizers
    assert not list(tmp_path.glob(".*tmp"))  # written through a temporary file, renamed


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a checkpoint", "cannot load checkpoint"),
        ({"weights": torch.zeros(1)}, "not a univseg checkpoint"),
        ({"format": "univseg-checkpoint", "format_version": 99}, "format 99"),
        ({"format": "univseg-checkpoint", "format_version": 2, "config": {}}, "incomplete"),
    ],
)
def test_bad_files_raise_checkpoint_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message) as e:
        Checkpoint.load(path)
    assert e.value.path == str(path)


def test_resume_with_another_method_names_the_missing_optimizer(tmp_path):
    shutil.copy(V1 / "univ_full.pt", tmp_path / "latest.pt")
    cfg = validate_config(v1_raw("adversarial", adversarial={"ndf": 2}))
    with pytest.raises(CheckpointError, match=r"optimizer\(s\) \['discriminators'\]"):
        Trainer(cfg, tmp_path, resume=True, progress=False)
