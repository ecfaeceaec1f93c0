"""'cycada' (Hoffman et al., ICML 2018): CycleGAN pieces, semantic consistency by hand, label mapping,
config validation, both training stages, exact resume, translation grids and the experiment row."""
import copy
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from conftest import assert_same_training_state, records, run_killed_at, TINY
from univseg.config import validate_config
from univseg.engine.checkpoint import Checkpoint
from univseg.engine.experiment import method_overrides, plan_runs, run_experiment
from univseg.engine.trainer import Trainer
from univseg.errors import ConfigError
from univseg.methods import METHODS, RunContext, build_method
from univseg.methods.cycada import Cycada, PatchDiscriminator, ResnetGenerator, semantic_consistency

SMALL = {"ngf": 4, "res_blocks": 1, "ndf": 4, "d_layers": 2, "feat_ndf": 4, "samples": 2}


@pytest.fixture(scope="module")
def source_ckpt(tmp_path_factory) -> Path:
    """latest.pt of a 1-iteration single-city run: the frozen source segmenter f_A."""
    raw = copy.deepcopy(TINY)
    raw["method"] = {"name": "single", "domains": ["city"]}
    raw["train"].update({"iters": 1, "eval_interval": 0})
    work = tmp_path_factory.mktemp("single_city")
    Trainer(validate_config(raw), work, progress=False).run()
    return work / "latest.pt"


def cycada_raw(raw: dict, ckpt: Path, **cycada) -> dict:
    raw["method"] = {"name": "cycada", "domains": ["rural"],
                     "cycada": {"source": "city", "target": "rural", "pixel_iters": 2, **SMALL, **cycada}}
    raw["model"]["init_from"] = str(ckpt)
    raw["train"].update({"iters": 4, "eval_interval": 0, "checkpoint_interval": 1})
    return raw


def attached(raw: dict, ckpt: Path, tmp_path: Path) -> Cycada:
    """A cycada method of the tiny config attached to a run (real mapping and f_A), without a trainer."""
    from univseg.data.synthetic import LABEL_SPACES
    from univseg.data.mapping import ClassMapping
    from univseg.engine.predictor import Predictor

    cfg = validate_config(cycada_raw(raw, ckpt))
    method = build_method(cfg.method, {"rural": LABEL_SPACES["coarse"]}, cfg.model.embed_dim)
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", amp="none")
    mapping = ClassMapping.builtin(LABEL_SPACES["fine"], LABEL_SPACES["coarse"])
    method.attach(RunContext(tmp_path, 4, lambda s, d: mapping, lambda: (predictor.model.requires_grad_(False), predictor.label_spaces)))
    return method


def test_registered_with_the_papers_defaults():
    assert METHODS.get("cycada") is Cycada
    c = validate_config({"domains": [{"name": "a", "dataset": {"type": "synthetic"}}]}).method.cycada
    assert (c.lambda_cycle, c.lambda_identity, c.lambda_sem, c.lr, tuple(c.betas)) == (10.0, 0.5, 1.0, 2e-4, (0.5, 0.999))
    assert (c.lambda_adv, c.feat_lr, c.d_layers) == (0.1, 1e-4, 3)


@pytest.mark.parametrize("change, key", [
    ({"cycada": {"source": None}}, "method.cycada.source: needed"),
    ({"cycada": {"source": "town"}}, "method.cycada.source: no domain 'town'"),
    ({"cycada": {"source": "rural"}}, "method.cycada.source: the source must differ"),
    ({"domains": ["city", "rural"]}, r"method.domains: cycada trains one head, the target's: set method.domains=\[rural\]"),
    ({"cycada": {"pixel_iters": 4}}, "method.cycada.pixel_iters: 4 leaves none of train.iters=4"),
    ({"init_from": None}, "model.init_from: cycada needs the checkpoint"),
])
def test_config_errors_name_the_key(tiny_raw, change, key):
    raw = cycada_raw(tiny_raw, Path("single.pt"))
    if "init_from" in change:
        raw["model"]["init_from"] = None
    if "domains" in change:
        raw["method"]["domains"] = change["domains"]
    if "cycada" in change:
        raw["method"]["cycada"].update(change["cycada"])
    with pytest.raises(ConfigError, match=key):
        validate_config(raw)


def test_a_missing_class_mapping_or_source_head_is_a_config_error(tiny_raw, source_ckpt, tmp_path):
    from univseg.data.synthetic import LABEL_SPACES

    cfg = validate_config(cycada_raw(tiny_raw, source_ckpt))
    method = build_method(cfg.method, {"rural": LABEL_SPACES["coarse"]}, 8)
    with pytest.raises(ConfigError, match=r"no class mapping from domain 'city' to domain 'rural'.*eval.mappings") as e:
        method.attach(RunContext(tmp_path, 6, lambda s, d: None, lambda: None))
    assert e.value.key == "eval.mappings"
    from univseg.data.mapping import ClassMapping

    coarse = ClassMapping.builtin(LABEL_SPACES["coarse"], LABEL_SPACES["coarse"])  # f_A has no head in this space
    with pytest.raises(ConfigError, match="model.init_from: the checkpoint's heads \\(city\\) have none") as e:
        method.attach(RunContext(tmp_path, 6, lambda s, d: coarse, lambda: (nn.Identity(), {"city": LABEL_SPACES["fine"]})))
    assert e.value.key == "model.init_from"


def test_networks_have_cyclegans_layout():
    g = ResnetGenerator(ngf=8, blocks=2)
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    y = g(x)
    assert y.shape == x.shape and y.abs().max() < 1
    convs = [m for m in g.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert [c.kernel_size[0] for c in convs] == [7, 3, 3, 3, 3, 3, 3, 3, 3, 7]
    assert [c.out_channels for c in convs] == [8, 16, 32, 32, 32, 32, 32, 16, 8, 3]
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in g.modules()) == 5 + 2 * 2
    d = PatchDiscriminator(ndf=8, layers=3)
    strides = [m.stride[0] for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert strides == [2, 2, 2, 1, 1] and d(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 6, 6)  # 70x70 PatchGAN at 64 px


def test_semantic_consistency_by_hand():
    # 2 classes, 1x3 pixels; reference (f_A on the originals) argmax: 0, 1, 1
    reference = torch.tensor([[[[2.0, 0.0, -1.0]], [[1.0, 0.5, 3.0]]]])
    logits = torch.tensor([[[[0.0, 1.0, 2.0]], [[1.0, -1.0, 0.0]]]], requires_grad=True)

    def ce(l0, l1, k):  # -log softmax([l0, l1])[k]
        return -math.log(math.exp((l0, l1)[k]) / (math.exp(l0) + math.exp(l1)))

    want = (ce(0.0, 1.0, 0) + ce(1.0, -1.0, 1) + ce(2.0, 0.0, 1)) / 3
    got = semantic_consistency(logits, reference)
    assert got.item() == pytest.approx(want, rel=1e-6)
    got.backward()
    assert logits.grad is not None and reference.grad is None


def test_identity_generators_have_zero_cycle_and_identity_loss(tiny_raw, source_ckpt, tmp_path):
    method = attached(tiny_raw, source_ckpt, tmp_path)
    method.generators = nn.ModuleDict({"ab": nn.Identity(), "ba": nn.Identity()})
    a, b = torch.rand(4, 3, 32, 48) * 255, torch.rand(4, 3, 32, 48) * 255  # the training batches' shapes
    g_terms, d_terms = method.pixel_losses(a, b)
    assert g_terms["cycle"].item() == 0.0 and g_terms["identity"].item() == 0.0
    # the semantic term is f_A's CE against its own arg-max on (nearly) the same images: finite and > 0
    assert 0 < g_terms["sem"].item() < 10 and math.isfinite(d_terms["loss"].item())
    want = g_terms["gan"] + 1.0 * g_terms["sem"]
    assert g_terms["loss"].item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("size", [(32, 48), (37, 50)])
def test_translations_keep_size_and_value_range(tiny_raw, source_ckpt, tmp_path, size):
    method = attached(tiny_raw, source_ckpt, tmp_path)
    x = torch.rand(4, 3, *size) * 255
    assert method.to_gan(x).shape[-2:] == tuple(max(4, 4 * round(s / 2 / 4)) for s in size)
    for direction in ("ab", "ba"):
        y = method.translate(x, direction)
        assert y.shape == x.shape and 0 <= y.min() and y.max() <= 255 and y.std() > 0


def test_source_labels_map_to_the_target_label_space(tiny_raw, source_ckpt, tmp_path):
    method = attached(tiny_raw, source_ckpt, tmp_path)
    # fine: sky building road sidewalk vegetation pole car truck person -> coarse: ground = 2, vehicle = 5
    label = torch.tensor([[[0, 1, 2, 3], [6, 7, 8, 255]]])
    assert method.map_labels(label).tolist() == [[[0, 1, 2, 2], [5, 5, 6, 255]]]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, source_ckpt):
    """An uninterrupted 4-iteration cycada run (2 pixel-stage iterations): (work dir, trainer, initial weights)."""
    work = tmp_path_factory.mktemp("cycada_full")
    t = Trainer(validate_config(cycada_raw(copy.deepcopy(TINY), source_ckpt)), work, progress=False)
    before = {"model": copy.deepcopy(t.model.state_dict()), "method": copy.deepcopy(t.method.state_dict())}
    t.run()
    return work, t, before


def test_both_stages_train_with_finite_moving_terms(full_run):
    work, t, before = full_run
    assert set(t.optimizers) == {"model", "generators", "image_discriminators", "feature_discriminator"}
    logs = [r for r in records(work) if "loss" in r]
    assert [r["iter"] for r in logs] == [1, 2, 3, 4]
    pixel, seg = logs[:2], logs[2:]
    for rows, keys in ((pixel, ("g_loss", "gan", "cycle", "identity", "sem", "d_image")), (seg, ("ce_rural", "adv", "loss", "d_feat"))):
        for key in keys:
            values = [r[key] for r in rows]
            assert all(math.isfinite(v) and v > 0 for v in values) and len(set(values)) > 1, (key, values)
    assert all(r["loss"] == 0.0 and "ce_rural" not in r for r in pixel)
    assert all("g_loss" not in r for r in seg)
    for r in seg:
        assert r["loss"] == pytest.approx(r["ce_rural"] + r["adv"], rel=1e-5)
    # the pixel stage leaves the model alone; the segmentation stage leaves the CycleGAN alone
    at3, at4 = Checkpoint.load(work / "latest.pt.1"), Checkpoint.load(work / "latest.pt")
    assert (at3.iteration, at4.iteration) == (3, 4)
    for k, v in at4.method.items():
        assert not torch.equal(before["method"][k], v), k  # every auxiliary network trained
        cyclegan = k.startswith(("generators.", "image_discriminators."))
        assert torch.equal(at3.method[k], v) == cyclegan, k  # ... the CycleGAN only in iterations 1-2
    assert any(not torch.equal(before["model"][k], v) for k, v in at4.model.items())


def test_translation_grids_are_written(full_run):
    work = full_run[0]
    for name in ("end_of_pixel_stage", "end_of_training"):
        grid = Image.open(work / "translations" / f"{name}.png")
        assert grid.size == (2 * 48, 4 * 32)  # [image | translation], 2 city then 2 rural rows


def test_resume_after_kill_equals_uninterrupted_run(full_run, source_ckpt, tiny_raw, tmp_path):
    """Die in the pixel stage (checkpoint at 1), resume across the stage change: same model, CycleGAN,
    feature discriminator and every optimizer state."""
    work, _, before = full_run
    raw = cycada_raw(tiny_raw, source_ckpt)
    run_killed_at(Trainer(validate_config(raw), tmp_path, progress=False), 1)
    at1 = Checkpoint.load(tmp_path / "latest.pt")
    assert at1.iteration == 1 and all(torch.equal(before["model"][k], v) for k, v in at1.model.items())
    Trainer(validate_config(raw), tmp_path, resume=True, progress=False).run()
    assert_same_training_state(work, tmp_path, optimizers=("generators", "image_discriminators", "feature_discriminator"))


def test_cycada_is_an_experiment_row_after_its_source_run(tiny_raw, tmp_path):
    overrides, dep = method_overrides("cycada-city-to-rural", ["city", "rural"])
    assert dep == "single-city"
    assert overrides == ["method.name=cycada", "method.domains=[rural]", "method.cycada.source=city", "method.cycada.target=rural"]
    with pytest.raises(ConfigError, match="cycada-<A>-to-<B>"):
        method_overrides("cycada", ["city", "rural"])
    tiny_raw["train"].update({"iters": 2, "eval_interval": 0})
    tiny_raw["model"]["norm"] = "domain"  # f_A and the model each run with their own domain's BatchNorm
    tiny_raw["method"]["cycada"] = {"pixel_iters": 1, **SMALL}
    runs = plan_runs(validate_config(tiny_raw), tmp_path / "exp", methods=["cycada-city-to-rural"])
    assert [(r.key, r.depends_on) for r in runs] == [("single-city", None), ("cycada-city-to-rural", "single-city")]
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    rows = run_experiment(path, tmp_path / "exp", methods=["cycada-city-to-rural"], progress=False)
    assert [r["method"] for r in rows] == ["cycada-city-to-rural"]
    assert rows[0]["city"] is not None and rows[0]["rural"] is not None  # city scored through coarse -> fine
    saved = validate_config(yaml.safe_load((tmp_path / "exp" / "runs" / "cycada-city-to-rural" / "config.yaml").read_text()))
    assert saved.model.init_from == tmp_path / "exp" / "runs" / "single-city" / "latest.pt"
