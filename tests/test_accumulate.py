"""Gradient accumulation (train.accumulate): a step over k micro-batches sees the images of one
batch k times as large and averages the micro-batches' gradients (weight 1/k each)."""
import pytest
import torch

from univseg.config import validate_config
from univseg.engine.trainer import Trainer
from univseg.errors import ConfigError
from univseg.methods import METHODS
from univseg.methods.base import Method


def make(tiny_raw, tmp_path, name, batch, accumulate, method=None):
    tiny_raw["train"].update({"accumulate": accumulate, "eval_interval": 0, "optimizer": {"type": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}})
    for d in tiny_raw["domains"]:
        d.update({"batch_size": batch, "unlabeled_batch_size": batch, "labeled": {"count": 8}})
    if method:
        tiny_raw["method"] = {"name": method}
    return Trainer(validate_config(tiny_raw), tmp_path / name, progress=False)


def test_micro_batches_of_a_step_are_the_images_of_the_large_batch(tiny_raw, tmp_path):
    import copy

    big = make(copy.deepcopy(tiny_raw), tmp_path, "big", batch=4, accumulate=1)
    acc = make(tiny_raw, tmp_path, "acc", batch=2, accumulate=2)
    big_loader, micro_loaders = big._loaders(), [acc._loaders(m) for m in range(2)]
    for _ in range(3):  # iterations 0..2
        whole = big._next_batches(big_loader)
        parts = [acc._next_batches(m) for m in micro_loaders]
        for d in whole:
            for key in ("image", "label", "unlabeled"):
                assert torch.equal(torch.cat([p[d][key] for p in parts]), whole[d][key]), (d, key)


class MeanOfImages(Method):
    """A loss that is the mean over labeled images of a per-image value, so 2 x 2 images
    accumulated with weight 1/2 each equal 4 images at once exactly."""

    def losses(self, model, batches):
        per_image = [model(b["image"], embed=False)[d].float().mean(dim=(1, 2, 3)) for d, b in batches.items()]
        loss = torch.cat(per_image).square().mean()
        return {"loss": loss, "sup": loss.detach()}


def test_an_accumulated_step_equals_one_step_on_the_whole_batch(tiny_raw, tmp_path):
    import copy

    with METHODS.temporary("mean-of-images", MeanOfImages):
        big = make(copy.deepcopy(tiny_raw), tmp_path, "big", batch=4, accumulate=1, method="mean-of-images")
        acc = make(tiny_raw, tmp_path, "acc", batch=2, accumulate=2, method="mean-of-images")
        for t in (big, acc):
            t.model.eval()  # BatchNorm with fixed statistics: the batch split cannot change the forward pass
        initial = {k: v.clone() for k, v in big.model.state_dict().items()}
        whole = big._next_batches(big._loaders())
        loaders = [acc._loaders(m) for m in range(2)]
        parts = [acc._next_batches(m) for m in loaders]
        a = big.step(0, whole)
        b = acc.step(0, parts)
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)  # logged terms: mean over micro-batches
    wa, wb = big.model.state_dict(), acc.model.state_dict()
    assert any(not torch.equal(wa[k], initial[k]) for k in wa)  # the step did move the weights
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_accumulate_is_refused_for_methods_that_train_auxiliary_networks(tiny_raw, tmp_path):
    tiny_raw["method"] = {"name": "adversarial", "adversarial": {"ndf": 4}}
    with pytest.raises(ConfigError, match="train.accumulate.*adversarial.*discriminators"):
        make(tiny_raw, tmp_path, "w", batch=2, accumulate=2)
