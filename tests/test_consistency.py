"""Weak-to-strong consistency methods (fixmatch, unimatch, univ-match): CutMix, masked pseudo-label
loss, threshold, feature perturbation, training end to end, exact resume, experiment rows."""
import copy
import math

import pytest
import torch

from conftest import assert_same_training_state, records, run_killed_at
from univseg.config import validate_config
from univseg.data.label_space import LabelSpace
from univseg.engine.experiment import default_methods, run_experiment
from univseg.engine.trainer import Trainer
from univseg.methods import METHODS, build_method
from univseg.errors import ConfigError
from univseg.losses import nearest_centroid
from univseg.methods.consistency import WeakToStrong, agreeing_pseudo_labels, cutmix, masked_pseudo_label_ce
from univseg.models.universal import UniversalModel

NEW = ["fixmatch", "unimatch", "univ-match"]


def ce(logits, k):  # -log softmax(logits)[k]
    return -(logits[k] - math.log(sum(math.exp(v) for v in logits)))


def test_cutmix_pastes_the_next_images_box_into_values_and_labels():
    values = torch.arange(3 * 2 * 2).view(3, 2, 2)  # image i holds 4i..4i+3
    boxes = torch.zeros(3, 2, 2, dtype=torch.bool)
    boxes[0, 0, 1] = True
    boxes[2, 1, :] = True
    out = cutmix(values, boxes)
    assert out.tolist() == [[[0, 5], [2, 3]], [[4, 5], [6, 7]], [[8, 9], [2, 3]]]
    images = values.unsqueeze(1).repeat(1, 3, 1, 1).float()  # [B, C, H, W]: every channel alike
    mixed = cutmix(images, boxes)
    assert all(torch.equal(mixed[:, c], out.float()) for c in range(3))


def test_masked_pseudo_label_ce_counts_confident_pixels_over_valid_ones():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, -1.0]]).T.reshape(1, 2, 2, 2)
    pseudo = torch.tensor([[[0, 1], [1, 0]]])
    confident = torch.tensor([[[True, False], [True, True]]])
    valid = torch.tensor([[[True, True], [True, False]]])
    got = masked_pseudo_label_ce(logits, pseudo, confident, valid)
    # kept: pixels 0 and 2 (pixel 1 not confident, pixel 3 padding); divided by the 3 valid pixels
    want = (ce([2.0, 0.0], 0) + ce([1.0, 1.0], 1)) / 3
    assert got.item() == pytest.approx(want, rel=1e-6)
    assert masked_pseudo_label_ce(logits, pseudo, confident, torch.zeros_like(valid)).item() == 0.0


class FixedModel(torch.nn.Module):
    """Returns fixed logits for domain 'a': rows = labeled, weak, strong view(s); 'fp' = weak rows."""

    def __init__(self, logits, fp=None):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())
        self.fp = None if fp is None else torch.nn.Parameter(fp.clone())

    def forward(self, inputs, embed=False, feature_dropout=0.0, all_heads=False):
        out = {"a": self.logits}
        if feature_dropout > 0:
            out["fp"] = self.fp
        return {"a": out}


def method_cfg(name, threshold, **consistency):
    raw = {"name": "tiny", "domains": [{"name": "a", "dataset": {"type": "synthetic"}}],
           "method": {"name": name, "consistency": {"threshold": threshold, **consistency}}}
    return validate_config(raw).method


def one_pixel_batch(strong_views):
    """One labeled and one unlabeled 1x2 image of domain 'a' (no CutMix box)."""
    return {"a": {
        "image": torch.zeros(1, 3, 1, 2), "label": torch.tensor([[[0, 1]]]),
        "unlabeled": torch.zeros(1, 3, 1, 2), "unlabeled_valid": torch.ones(1, 1, 2, dtype=torch.bool),
        "strong": torch.zeros(1, strong_views, 3, 1, 2), "cutmix": torch.zeros(1, strong_views, 1, 2, dtype=torch.bool),
    }}


def test_pseudo_labels_below_the_threshold_are_ignored():
    """Weak pixel 0 is confident (p=0.982 > 0.95) for class 0, pixel 1 is not (p=0.731): only pixel 0
    supervises the strong view, and the sum is divided by both (valid) pixels."""
    space = {"a": LabelSpace.from_names("a", ["x", "y"])}
    method = build_method(method_cfg("fixmatch", 0.95), space, 8)
    labeled = [[1.0, 0.0], [0.0, 1.0]]
    weak = [[4.0, 0.0], [1.0, 0.0]]
    strong = [[0.5, 0.2], [3.0, -3.0]]
    rows = torch.tensor([labeled, weak, strong]).permute(0, 2, 1).unsqueeze(2)  # [3 rows, 2 classes, 1, 2]
    terms = method.losses(FixedModel(rows), one_pixel_batch(1))
    want_strong = ce(strong[0], 0) / 2
    want_sup = (ce(labeled[0], 0) + ce(labeled[1], 1)) / 2
    assert terms["strong_a"].item() == pytest.approx(want_strong, rel=1e-5)
    assert terms["unsup"].item() == pytest.approx(want_strong, rel=1e-5)
    assert terms["confident_a"].item() == pytest.approx(0.5)
    assert terms["loss"].item() == pytest.approx(want_sup + want_strong, rel=1e-5)
    # threshold 0: both pixels count
    method0 = build_method(method_cfg("fixmatch", 0.0), space, 8)
    both = method0.losses(FixedModel(rows), one_pixel_batch(1))["strong_a"].item()
    assert both == pytest.approx((ce(strong[0], 0) + ce(strong[1], 0)) / 2, rel=1e-5)


def test_unimatch_weights_the_perturbed_view_half_and_each_strong_view_a_quarter():
    space = {"a": LabelSpace.from_names("a", ["x", "y"])}
    method = build_method(method_cfg("unimatch", 0.0), space, 8)
    assert isinstance(method, WeakToStrong) and method.strong_views == 2
    weak = [[2.0, 0.0], [0.0, 2.0]]  # pseudo-labels 0, 1
    s1, s2 = [[1.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [0.0, 3.0]]
    fp = [[0.0, 1.0], [0.0, 1.0]]
    rows = torch.tensor([[[0.0, 0.0]] * 2, weak, s1, s2]).permute(0, 2, 1).unsqueeze(2)
    fp_rows = torch.tensor([[[0.0, 0.0]] * 2, fp]).permute(0, 2, 1).unsqueeze(2)
    terms = method.losses(FixedModel(rows, fp_rows), one_pixel_batch(2))
    l1 = (ce(s1[0], 0) + ce(s1[1], 1)) / 2
    l2 = (ce(s2[0], 0) + ce(s2[1], 1)) / 2
    lfp = (ce(fp[0], 0) + ce(fp[1], 1)) / 2
    assert terms["fp_a"].item() == pytest.approx(lfp, rel=1e-5)
    assert terms["unsup"].item() == pytest.approx(0.5 * lfp + 0.25 * l1 + 0.25 * l2, rel=1e-5)


def test_feature_perturbation_returns_fp_logits_of_the_first_batch_only():
    torch.manual_seed(0)
    for norm in ("shared", "domain"):
        model = UniversalModel("erfnet", {"a": 3, "b": 4}, embed_dim=8, backbone_args={"width": 0.25}, decoder="lraspp", norm=norm)
        x = {"a": [torch.rand(2, 3, 32, 48) * 255, torch.rand(3, 3, 32, 48) * 255], "b": torch.rand(1, 3, 32, 48) * 255}
        out = model(x, embed=True, feature_dropout=0.5)
        assert out["a"]["a"].shape == (5, 3, 32, 48) and out["a"]["fp"].shape == (2, 3, 32, 48)
        assert out["b"]["fp"].shape == (1, 4, 32, 48)
        assert not torch.allclose(out["a"]["fp"], out["a"]["a"][:2])
        plain = model(x, embed=True)
        assert "fp" not in plain["a"] and "fp" not in plain["b"]
        with pytest.raises(ValueError, match="feature_dropout"):
            model(x["b"], feature_dropout=0.5)


def consistency_raw(tiny_raw, name):
    tiny_raw["method"] = {**tiny_raw["method"], "name": name, "consistency": {"threshold": 0.0}}
    tiny_raw["train"]["eval_interval"] = 0
    for d in tiny_raw["domains"]:
        d["train_transforms"] = [{"type": "random_crop", "size": [32, 40]}, {"type": "hflip"}]
    return tiny_raw


@pytest.mark.parametrize("name", NEW)
def test_new_methods_train_with_finite_moving_terms_and_resume_exactly(name, tiny_raw, tmp_path):
    raw = consistency_raw(tiny_raw, name)
    full, part = tmp_path / "full", tmp_path / "part"
    Trainer(validate_config(raw), full, progress=False).run()
    logs = [r for r in records(full) if "loss" in r]
    assert len(logs) == 6
    for key in ("loss", "sup", "unsup", "strong_city", "strong_rural"):
        values = [r[key] for r in logs]
        assert all(math.isfinite(v) for v in values) and len(set(values)) > 1, (key, values)
    assert all(r["unsup"] > 0 for r in logs)
    assert ("fp_city" in logs[0]) == (name != "fixmatch")
    assert ("ent_cross" in logs[-1]) == (name == "univ-match")  # alignment after warmup_iters=2

    run_killed_at(Trainer(validate_config(raw), part, progress=False), 4)
    Trainer(validate_config(raw), part, resume=True, progress=False).run()
    assert_same_training_state(full, part)


def test_new_methods_are_experiment_rows(tiny_raw, tmp_path):
    cfg = validate_config(tiny_raw)
    assert all(m in default_methods(cfg) for m in NEW)
    raw = consistency_raw(tiny_raw, "joint")
    raw["train"]["iters"] = 2
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    rows = run_experiment(path, tmp_path / "exp", methods=["joint", *NEW], progress=False)
    assert [r["method"] for r in rows] == ["joint", *NEW]
    assert all(r["city"] is not None and r["rural"] is not None for r in rows)
    assert (tmp_path / "exp" / "results.md").read_text().count("univ-match") == 1


def test_methods_are_registered():
    assert set(NEW) <= set(METHODS.names())


# ----------------------------------------------------------------------------- cross-domain pseudo-labels

def test_nearest_centroid_equals_the_argmax_over_valid_centroids_of_the_upsampled_embedding():
    torch.manual_seed(0)
    emb = torch.randn(2, 3, 2, 3)
    centroids = torch.randn(4, 3)
    valid = torch.tensor([True, False, True, True])
    up = torch.nn.functional.interpolate(emb, size=(5, 7), mode="bilinear", align_corners=False)
    for mode in ("dot", "cosine"):
        e = up if mode == "dot" else torch.nn.functional.normalize(up, dim=1)
        c = torch.nn.functional.normalize(centroids, dim=1)
        scores = torch.einsum("bdhw,kd->bkhw", e, c)
        scores[:, ~valid] = -float("inf")
        got = nearest_centroid(emb, centroids, valid, (5, 7), mode, "exact")
        assert torch.equal(got, scores.argmax(1)), mode
    none = nearest_centroid(emb, centroids, torch.zeros(4, dtype=torch.bool), (5, 7))
    assert none.shape == (2, 5, 7) and bool((none == -1).all())


def test_cross_domain_pseudo_labels_need_confidence_and_the_nearest_centroids_class():
    # three pixels, two classes: softmax([2, 0])[0] = 0.881, softmax([0, 0.5])[1] = 0.622
    logits = torch.tensor([[2.0, 2.0, 0.0], [0.0, 0.0, 0.5]]).view(1, 2, 1, 3)
    nearest = torch.tensor([[[0, 1, 1]]])
    pseudo, keep = agreeing_pseudo_labels(logits, nearest, threshold=0.8)
    assert pseudo.tolist() == [[[0, 0, 1]]]
    assert keep.tolist() == [[[True, False, False]]]  # agrees and 0.881 >= 0.8 | disagrees | 0.622 < 0.8
    _, keep = agreeing_pseudo_labels(logits, nearest, threshold=0.6)
    assert keep.tolist() == [[[True, False, True]]]


def test_cross_domain_pseudo_labels_train_after_warmup_and_only_for_univ_match(tiny_raw, tmp_path):
    plain = consistency_raw(copy.deepcopy(tiny_raw), "univ-match")
    cross = copy.deepcopy(plain)
    cross["method"]["consistency"]["cross_domain"] = True
    Trainer(validate_config(plain), tmp_path / "plain", progress=False).run()
    Trainer(validate_config(cross), tmp_path / "cross", progress=False).run()
    a = [r for r in records(tmp_path / "plain") if "loss" in r]
    b = [r for r in records(tmp_path / "cross") if "loss" in r]
    assert [r["loss"] for r in a[:2]] == [r["loss"] for r in b[:2]]  # warmup_iters=2: no centroids, no cross term
    after = b[2:]
    assert all("cross_pl" in r and math.isfinite(r["cross_pl"]) for r in after)
    kept = [r[k] for r in after for k in ("cross_kept_city_rural", "cross_kept_rural_city")]
    assert all(0 <= v <= 1 for v in kept) and sum(kept) > 0
    assert any(r["cross_pl"] > 0 for r in after)
    assert [r["loss"] for r in a[2:]] != [r["loss"] for r in after]
    wrong = consistency_raw(copy.deepcopy(tiny_raw), "unimatch")
    wrong["method"]["consistency"]["cross_domain"] = True
    with pytest.raises(ConfigError, match="method.consistency.cross_domain"):
        Trainer(validate_config(wrong), tmp_path / "wrong", progress=False)


class RecordingModel(FixedModel):
    """FixedModel that also keeps the inputs of its last call."""

    def forward(self, inputs, **kwargs):
        self.inputs = inputs
        return super().forward(inputs, **kwargs)


def reference_unimatch_loss(pred_x, mask_x, pred_u_w, pred_u_w_fp, pred_u_s1, pred_u_s2, ignore_mask, box1, box2, thresh):
    """UniMatch's loss (Yang et al., CVPR 2023, Eq. 3-5 and the reference unimatch.py), transcribed
    independently of univseg: the mixing partner of image i is image i + 1 (univseg's CutMix
    partner); ``ignore_mask`` is 255 at padding. Returns (loss_x, loss_u_s1, loss_u_s2, loss_u_w_fp)."""
    criterion_l = torch.nn.CrossEntropyLoss(ignore_index=255)
    criterion_u = torch.nn.CrossEntropyLoss(reduction="none")
    conf_u_w = pred_u_w.softmax(dim=1).max(dim=1)[0]
    mask_u_w = pred_u_w.argmax(dim=1)
    partner = [(i + 1) % pred_u_w.shape[0] for i in range(pred_u_w.shape[0])]
    mask_u_w_mix, conf_u_w_mix, ignore_mask_mix = mask_u_w[partner], conf_u_w[partner], ignore_mask[partner]

    def mixed(box):
        mask, conf, ignore = mask_u_w.clone(), conf_u_w.clone(), ignore_mask.clone()
        mask[box == 1] = mask_u_w_mix[box == 1]
        conf[box == 1] = conf_u_w_mix[box == 1]
        ignore[box == 1] = ignore_mask_mix[box == 1]
        return mask, conf, ignore

    def masked(pred, mask, conf, ignore):
        loss = criterion_u(pred, mask) * ((conf >= thresh) & (ignore != 255))
        return loss.sum() / (ignore != 255).sum().item()

    loss_x = criterion_l(pred_x, mask_x)
    loss_u_s1 = masked(pred_u_s1, *mixed(box1))
    loss_u_s2 = masked(pred_u_s2, *mixed(box2))
    loss_u_w_fp = masked(pred_u_w_fp, mask_u_w, conf_u_w, ignore_mask)
    return loss_x, loss_u_s1, loss_u_s2, loss_u_w_fp


def test_unimatch_matches_the_reference_loss_with_batch_four_two_views_cutmix_and_padding():
    """Batch of 4 labeled + 4 unlabeled 6x7 images, 5 classes, two strong views with CutMix boxes,
    padded pixels in two unlabeled images, threshold 0.95 (about a third of the pixels pass): every term
    and the total equal the transcription of the reference loss to 1e-6, and the strong images the
    model sees are the reference's CutMixed ones."""
    g = torch.Generator().manual_seed(0)
    b, k, h, w = 4, 5, 6, 7
    space = {"a": LabelSpace.from_names("a", [f"c{i}" for i in range(k)])}
    method = build_method(method_cfg("unimatch", 0.95), space, 8)
    logits = torch.randn(4 * b, k, h, w, generator=g, dtype=torch.float64).float() * 4  # labeled | weak | s1 | s2
    fp_logits = torch.randn(2 * b, k, h, w, generator=g).float() * 4
    label = torch.randint(0, k, (b, h, w), generator=g)
    label[0, :2] = 255  # void pixels in a labeled image
    valid = torch.ones(b, h, w, dtype=torch.bool)
    valid[1, :, 5:] = False  # padding of the weak view's crop
    valid[3, 4:, :] = False
    boxes = torch.zeros(b, 2, h, w, dtype=torch.bool)
    boxes[0, 0, 1:4, 2:6] = True  # view 1 of image 0 takes a box of image 1 (which has padding there)
    boxes[2, 0, 3:6, 0:3] = True  # view 1 of image 2 takes a box of image 3 (padding rows 4-5)
    boxes[3, 1, 0:2, 1:5] = True  # view 2 of image 3 takes a box of image 0
    strong = torch.randn(b, 2, 3, h, w, generator=g)
    batch = {"a": {
        "image": torch.randn(b, 3, h, w, generator=g), "label": label,
        "unlabeled": torch.randn(b, 3, h, w, generator=g), "unlabeled_valid": valid, "strong": strong, "cutmix": boxes,
    }}
    model = RecordingModel(logits, fp_logits)
    terms = method.losses(model, batch)

    ignore_mask = torch.where(valid, 0, 255)
    pred_x, pred_u_w, pred_u_s1, pred_u_s2 = logits.split(b)
    loss_x, l_s1, l_s2, l_fp = reference_unimatch_loss(
        pred_x, label, pred_u_w, fp_logits[b:], pred_u_s1, pred_u_s2, ignore_mask, boxes[:, 0].long(), boxes[:, 1].long(), 0.95
    )
    conf = pred_u_w.softmax(1).max(1)[0]
    assert 0.2 < (conf >= 0.95).float().mean() < 0.8  # the threshold matters in this case
    reference_u = 0.5 * l_fp + 0.25 * l_s1 + 0.25 * l_s2
    assert terms["fp_a"].item() == pytest.approx(l_fp.item(), abs=1e-6)
    assert terms["strong_a"].item() == pytest.approx(((l_s1 + l_s2) / 2).item(), abs=1e-6)
    assert terms["unsup"].item() == pytest.approx(reference_u.item(), abs=1e-6)
    # UniMatch halves (loss_x + L_u); univseg does not (the same with AdamW, see the module doc)
    assert terms["loss"].item() == pytest.approx((loss_x + reference_u).item(), abs=1e-6)
    # the strong images fed to the model: UniMatch's img_u_s[box == 1] = img_u_s_mix[box == 1]
    for s in range(2):
        want = strong[:, s].clone()
        mix = strong[[1, 2, 3, 0], s]
        box = boxes[:, s].unsqueeze(1).expand(want.shape)
        want[box] = mix[box]
        assert torch.equal(model.inputs["a"][1][s * b:(s + 1) * b], want)
