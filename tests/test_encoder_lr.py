"""train.optimizer.encoder_lr_factor: the encoder at a share of the scheduled learning rate."""
from __future__ import annotations

import pytest
import torch

from univseg.config import validate_config
from univseg.engine.trainer import MODEL_OPTIMIZER, Trainer


def one_step(tiny_raw, tmp_path, factor):
    """The model's weights before and after one plain-SGD step (no momentum, no weight decay)."""
    tiny_raw["method"] = {"name": "joint"}
    tiny_raw["train"].update({"iters": 1, "eval_interval": 0,
                              "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0,
                                            "encoder_lr_factor": factor}})
    trainer = Trainer(validate_config(tiny_raw), tmp_path / str(factor), progress=False)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.run()
    return trainer, before, dict(trainer.model.named_parameters())


def test_encoder_moves_by_the_factor_and_the_rest_by_the_full_rate(tiny_raw, tmp_path):
    import copy

    _, b1, a1 = one_step(copy.deepcopy(tiny_raw), tmp_path, 1.0)
    trainer, b2, a2 = one_step(tiny_raw, tmp_path, 0.1)
    groups = trainer.optimizers[MODEL_OPTIMIZER].param_groups
    assert [g.get("lr_factor", 1.0) for g in groups] == [0.1, 1.0]
    assert sum(len(g["params"]) for g in groups) == len(list(trainer.model.parameters()))
    moved = {"encoder": 0, "rest": 0}
    for k in a1:
        assert torch.equal(b1[k], b2[k]), k  # same initial weights
        d1, d2 = a1[k].detach() - b1[k], a2[k].detach() - b2[k]
        if d1.abs().max() == 0:
            continue
        part = "encoder" if k.startswith("encoder.") else "rest"
        torch.testing.assert_close(d2, d1 * (0.1 if part == "encoder" else 1.0), rtol=1e-4, atol=1e-7, msg=k)
        moved[part] += 1
    assert moved["encoder"] > 5 and moved["rest"] > 2


def test_factor_must_be_positive(tiny_raw):
    from univseg.errors import ConfigError

    tiny_raw["train"]["optimizer"]["encoder_lr_factor"] = 0
    with pytest.raises(ConfigError, match="encoder_lr_factor"):
        validate_config(tiny_raw)
