"""GPU readiness without a GPU: every registered method's forward, losses and backward (and its
auxiliary networks' losses) with the model, the method's state and the batches on a device that
is not the CPU, so a tensor created on the CPU beside the model's is an error here, as on a GPU.

True ``meta`` tensors have no data, and every method branches on data (``bool(mask.any())``,
``.item()``, confident-pixel counts), so the device is emulated: :mod:`fake_device`'s tensors
report device ``meta`` and compute on the CPU, raising where CUDA would raise (a CPU tensor with
more than one element meeting a device tensor in one operation)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY
from fake_device import DEVICE, DeviceMismatch, OnDevice, OnDeviceMode, on_device, to_device
from univseg.config import validate_config
from univseg.data.mapping import ClassMapping
from univseg.data.synthetic import LABEL_SPACES
from univseg.losses.supervised import supervised_ce
from univseg.methods import METHODS, Method, RunContext, build_method
from univseg.models.universal import UniversalModel, build_model

SPACES = {"city": LABEL_SPACES["fine"], "rural": LABEL_SPACES["coarse"]}
CYCADA = {"source": "city", "target": "rural", "pixel_iters": 2, "ngf": 4, "res_blocks": 1, "ndf": 4, "d_layers": 2,
          "feat_ndf": 4, "samples": 2}


#: Options that switch on further code paths of a method (run as extra cases).
OPTIONS = {"univ-match+options": ("univ-match", {"consistency": {"teacher": "ema", "diagnostics": True, "cross_domain": True}})}
CASES = [*METHODS.names(), *OPTIONS]


def method_raw(case: str) -> dict:
    """The tiny two-domain config of ``case``: a method name (cycada: city -> rural, single: city) or an
    :data:`OPTIONS` key."""
    name, options = OPTIONS.get(case, (case, {}))
    raw = copy.deepcopy(TINY)
    raw["method"]["name"] = name
    raw["method"].update(options)
    if name == "single":
        raw["method"]["domains"] = ["city"]
    if name == "cycada":
        raw["method"] = {"name": "cycada", "domains": ["rural"], "cycada": CYCADA}
        raw["model"]["init_from"] = "source.pt"  # the model comes from the RunContext below, not from this file
    return raw


def setup(name: str, tmp_path: Path) -> tuple[UniversalModel, Method, dict]:
    """Model, attached method and one step's batches of method ``name``, all on the emulated device."""
    cfg = validate_config(method_raw(name))
    heads = {k: SPACES[k] for k in cfg.trained_domains}
    torch.manual_seed(0)
    model = on_device(build_model(cfg.model, {k: s.num_classes for k, s in heads.items()}).train())
    method = on_device(build_method(cfg.method, heads, cfg.model.embed_dim))
    source = on_device(build_model(cfg.model, {"city": SPACES["city"].num_classes}).eval().requires_grad_(False))
    method.attach(RunContext(tmp_path, 10, lambda s, d: ClassMapping.builtin(SPACES[s], SPACES[d]),
                             lambda: (source, {"city": SPACES["city"]}), model))
    batches = {}
    for domain in method.data_domains():
        k = SPACES[domain].num_classes
        batch = {"image": torch.rand(2, 3, 32, 48) * 255, "label": torch.randint(0, k, (2, 32, 48))}
        if method.needs_unlabeled:
            batch["unlabeled"] = torch.rand(2, 3, 32, 48) * 255
        if method.strong_views:
            views = method.strong_views
            batch |= {"strong": torch.rand(2, views, 3, 32, 48) * 255, "cutmix": torch.rand(2, views, 32, 48) > 0.7,
                      "unlabeled_valid": torch.ones(2, 32, 48, dtype=torch.bool)}
        if method.unlabeled_labels:
            batch["unlabeled_label"] = torch.randint(0, k, (2, 32, 48))
        batches[domain] = {key: to_device(t) for key, t in batch.items()}
    return model, method, batches


def centroid_sums(method: Method, dim: int) -> dict:
    """What the trainer's centroid pass returns, made on the model's device as the trainer makes it."""
    return {k: (torch.randn(s.num_classes, dim, device=DEVICE), torch.ones(s.num_classes, device=DEVICE))
            for k, s in method.label_spaces.items()}


def run_steps(model: UniversalModel, method: Method, batches: dict, iterations=(0, 5)) -> list[dict]:
    """``before_step``, ``losses``, backward and the auxiliary losses' backward at each iteration
    (0: warm-up / first stage; 5: after the tiny config's warm-up, the alignment terms on)."""
    steps = []
    with OnDeviceMode():
        for it in iterations:
            model.zero_grad(set_to_none=True)
            method.before_step(it, lambda: centroid_sums(method, method.embed_dim))
            terms = method.losses(model, batches)
            if terms["loss"].requires_grad:
                terms["loss"].backward()
            auxiliary = method.auxiliary_losses(it)
            for aux in auxiliary.values():
                aux["loss"].backward()
            steps.append({"terms": terms, "auxiliary": auxiliary})
    return steps


@pytest.mark.parametrize("name", CASES)
def test_every_method_keeps_its_tensors_on_the_models_device(name, tmp_path):
    model, method, batches = setup(name, tmp_path)
    steps = run_steps(model, method, batches)
    for step in steps:
        for key, value in [*step["terms"].items(), *((k, v) for aux in step["auxiliary"].values() for k, v in aux.items())]:
            assert isinstance(value, OnDevice) and value.device == DEVICE, (key, type(value))
    assert any(step["terms"]["loss"].requires_grad for step in steps)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(isinstance(g, OnDevice) for g in grads)
    assert all(isinstance(b, OnDevice) for b in [*model.buffers(), *method.buffers()])
    if name in ("univ-full", "univ-cross", "univ-match", "univ-match+options"):  # the alignment terms ran at iteration 5
        assert "ent_cross" in steps[1]["terms"]
    if name == "univ-match+options":  # the EMA teacher, the pseudo-label diagnostics and cross-domain labels ran
        assert hasattr(method, "teacher") and "cross_pl" in steps[1]["terms"]
        assert any(k.startswith("pl_hits_") for k in steps[1]["terms"])


def class_weighted_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """A deliberately wrong loss: class weights made on the CPU whatever the logits' device."""
    weight = torch.ones(logits.shape[1])
    return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index)


def test_a_loss_that_creates_a_tensor_on_the_cpu_fails(monkeypatch, tmp_path):
    """The check is not vacuous: the same wrong loss passes on the CPU and fails on the emulated device."""
    import univseg.methods.universal as universal

    logits, target = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 8, 8))
    torch.testing.assert_close(class_weighted_ce(logits, target), supervised_ce(logits, target))  # fine on the CPU
    monkeypatch.setattr(universal, "supervised_ce", class_weighted_ce)
    model, method, batches = setup("univ-full", tmp_path)
    with pytest.raises(DeviceMismatch, match=r"found at least two devices, meta and cpu.*nll_loss.*\(9,\)"):
        run_steps(model, method, batches, iterations=(0,))


def test_the_emulated_device_allows_what_cuda_allows():
    with OnDeviceMode():
        x = to_device(torch.arange(6.0))
        assert isinstance(x * torch.tensor(2.0), OnDevice)  # a 0-dim CPU tensor is a scalar
        assert x[torch.tensor([0, 2])].cpu().tolist() == [0.0, 2.0]  # CPU indices
        assert torch.equal(x.cpu(), torch.arange(6.0)) and type(x.cpu()) is torch.Tensor
        with pytest.raises(DeviceMismatch):
            x + torch.ones(6)


def test_true_meta_tensors_cannot_run_the_losses():
    """Why the device is emulated: the losses branch on data, which meta tensors do not have."""
    logits = torch.randn(2, 4, 8, 8, device="meta")
    with pytest.raises(RuntimeError, match="meta tensors"):
        supervised_ce(logits, torch.zeros(2, 8, 8, dtype=torch.long, device="meta"))
