"""univseg tsne: seeded per-class pixel sampling, exact upsampled embeddings, distances, projection, plot."""
from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import TINY
from PIL import Image

from univseg.config import validate_config
from univseg.data.domain import build_domains
from univseg.data.label_space import LabelSpace
from univseg.data.synthetic import COARSE_TO_FINE, FINE_TO_COARSE, LABEL_SPACES
from univseg.engine.predictor import Predictor
from univseg.engine.trainer import Trainer
from univseg.engine.tsne import (
    PixelSample, class_matches, pair_distances, project, projector, run_tsne, sample_pixels,
)
from univseg.engine.tsne_options import add_tsne_arguments
from univseg.errors import DataError, UnivsegError

SPACE = LabelSpace.from_names("four", ["a", "b", "c", "d"])
FINE, COARSE = LABEL_SPACES["fine"], LABEL_SPACES["coarse"]


def toy_labels(h: int, w: int, seed: int) -> torch.Tensor:
    """Random classes a-c, an ignore band and 3 pixels of the rare class d."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (h, w), generator=g)
    labels[: h // 4] = SPACE.ignore_index
    labels[-1, :3] = 3
    return labels


def toy_batches(per_batch: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Five images (three 20x28, two 24x32), ``per_batch`` equal-size images per batch."""
    sizes = [(20, 28)] * 3 + [(24, 32)] * 2
    images = [torch.rand(3, h, w, generator=torch.Generator().manual_seed(10 + i)) * 255 for i, (h, w) in enumerate(sizes)]
    labels = [toy_labels(h, w, i) for i, (h, w) in enumerate(sizes)]
    batches, i = [], 0
    while i < len(sizes):
        j = i + 1
        while j < len(sizes) and j - i < per_batch and sizes[j] == sizes[i]:
            j += 1
        batches.append((torch.arange(i, j), torch.stack(images[i:j]), torch.stack(labels[i:j])))
        i = j
    return batches


def toy_embed(images: torch.Tensor) -> torch.Tensor:
    """A fixed embedding at 1/4 resolution (D = 6)."""
    weight = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    return F.avg_pool2d(F.conv2d(images / 255, weight, padding=1), 4, ceil_mode=True)


def sample(per_batch: int = 2, per_class: int = 30, seed: int = 0) -> PixelSample:
    return sample_pixels(toy_batches(per_batch), toy_embed, SPACE, per_class, np.random.default_rng([seed, 0]))


def test_sampling_takes_n_per_class_never_ignore_and_is_seeded():
    batches = toy_batches(2)
    s = sample()
    all_labels = torch.cat([lab.flatten() for _, _, lab in batches])
    for k in range(SPACE.num_classes):
        available = int((all_labels == k).sum())
        assert int((s.classes == k).sum()) == min(30, available), k
    assert int((s.classes == 3).sum()) == 15  # the rare class: all of its 5 x 3 pixels
    labels = {int(i): lab for idx, _, labs in batches for i, lab in zip(idx, labs)}
    at = torch.stack([labels[int(i)][y, x] for i, y, x in zip(s.images, s.ys, s.xs)])
    assert torch.equal(at, s.classes) and not (at == SPACE.ignore_index).any()
    assert len({(int(i), int(y), int(x)) for i, y, x in zip(s.images, s.ys, s.xs)}) == len(s)  # no pixel twice
    again, other, one_by_one = sample(), sample(seed=1), sample(per_batch=1)
    for a, b in zip(s._fields(), again._fields()):
        assert torch.equal(a, b)
    assert not torch.equal(s.ys, other.ys)
    assert torch.equal(s.images, one_by_one.images) and torch.equal(s.ys, one_by_one.ys)  # batching changes nothing


def test_sampled_embedding_equals_the_upsampled_embedding_at_the_pixels():
    images = {int(i): img for idx, imgs, _ in toy_batches(2) for i, img in zip(idx, imgs)}
    s = sample()
    for n, (i, y, x) in enumerate(zip(s.images.tolist(), s.ys.tolist(), s.xs.tolist())):
        img = images[i].unsqueeze(0)
        full = F.interpolate(toy_embed(img), size=img.shape[-2:], mode="bilinear", align_corners=False)
        assert torch.allclose(s.embeddings[n], full[0, :, y, x], atol=1e-5), (i, y, x)


def test_class_matches_use_names_and_mappings_both_ways():
    match = class_matches(FINE, COARSE, {})
    pairs = {(FINE.names[i], COARSE.names[j]) for i, j in zip(*np.nonzero(match))}
    assert {("road", "ground"), ("sidewalk", "ground"), ("truck", "vehicle"), ("sky", "sky")} <= pairs
    assert not match[:, COARSE.index("animal")].any()
    assert class_matches(FINE, FINE, {}).tolist() == np.eye(FINE.num_classes, dtype=bool).tolist()


def brute_force_distances(vectors: dict[str, np.ndarray], classes: dict[str, list[str]], spaces: dict[str, str]) -> dict:
    """Mean cosine distance over all pixel pairs of matching / different classes, from the full matrix."""
    tables = {("fine", "coarse"): FINE_TO_COARSE, ("coarse", "fine"): COARSE_TO_FINE}

    def matches(ca: str, sa: str, cb: str, sb: str) -> bool:
        return ca == cb or tables.get((sa, sb), {}).get(ca) == cb or tables.get((sb, sa), {}).get(cb) == ca

    out = {}
    names = list(vectors)
    for i, a in enumerate(names):
        for b in names[i:]:
            ua = vectors[a] / np.linalg.norm(vectors[a], axis=1, keepdims=True)
            ub = vectors[b] / np.linalg.norm(vectors[b], axis=1, keepdims=True)
            dist = 1 - ua @ ub.T
            same = np.array([[matches(ca, spaces[a], cb, spaces[b]) for cb in classes[b]] for ca in classes[a]])
            keep = ~np.eye(len(ua), dtype=bool) if a == b else np.ones_like(same)
            out[(a, b)] = (dist[same & keep].mean(), dist[~same & keep].mean())
    return out


def test_pair_distances_match_brute_force():
    g = torch.Generator().manual_seed(3)
    samples, classes = {}, {}
    for name, space, m in (("city", FINE, 60), ("rural", COARSE, 50)):
        cls = torch.randint(0, space.num_classes, (m,), generator=g)
        zeros = torch.zeros(m, dtype=torch.long)
        samples[name] = PixelSample(cls, zeros, zeros, zeros, torch.rand(m, dtype=torch.float64), torch.randn(m, 5, generator=g))
        classes[name] = [space.names[k] for k in cls.tolist()]
    got = pair_distances(samples, {"city": FINE, "rural": COARSE}, {})
    want = brute_force_distances({n: s.embeddings.numpy().astype(np.float64) for n, s in samples.items()}, classes,
                                 {"city": "fine", "rural": "coarse"})
    assert [(d.a, d.b) for d in got] == [("city", "city"), ("city", "rural"), ("rural", "rural")]
    for d in got:
        assert d.matched == pytest.approx(want[(d.a, d.b)][0], abs=1e-9)
        assert d.different == pytest.approx(want[(d.a, d.b)][1], abs=1e-9)
        assert d.gap == pytest.approx(d.different - d.matched)


def test_projection_is_finite_2d_and_seeded():
    points = np.random.default_rng(0).normal(size=(60, 8))
    tsne = projector("tsne")
    xy = project(points, tsne, seed=0)
    assert xy.shape == (60, 2) and np.isfinite(xy).all()
    assert np.array_equal(xy, project(points, tsne, seed=0))
    with pytest.raises(DataError, match="at least 4"):
        project(points[:3], tsne, seed=0)


def test_umap_without_umap_learn_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # as if umap-learn were not installed
    with pytest.raises(UnivsegError, match="pip install umap-learn"):
        projector("umap")


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Tiny joint and univ-full checkpoints plus the config file of their data."""
    root = tmp_path_factory.mktemp("tsne")
    out = {}
    for method in ("joint", "univ-full"):
        raw = copy.deepcopy(TINY)
        raw["method"]["name"] = method
        raw["train"].update(iters=3, eval_interval=0)
        Trainer(validate_config(raw), root / method, progress=False).run()
        out[method] = root / method / "latest.pt"
    out["data"] = root / "tiny.yaml"
    out["data"].write_text(yaml.safe_dump(TINY, sort_keys=False))
    return out


def tsne_args(*argv: str) -> argparse.Namespace:
    """The Namespace of ``univseg tsne ARGV --no-progress`` (``--no-progress`` is added by the command line's verb())."""
    parser = argparse.ArgumentParser()
    add_tsne_arguments(parser)
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args([*argv, "--no-progress"])


def read_points(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_tsne_with_one_checkpoint_writes_plot_points_and_exact_distances(trained, tmp_path, capsys):
    out = tmp_path / "one"
    args = tsne_args(str(trained["univ-full"]), "--data", str(trained["data"]), "--per-class", "20", "--out", str(out))
    assert run_tsne(args) == 0
    image = np.asarray(Image.open(out / "tsne.png").convert("RGB"))
    assert image.shape[0] >= 500 and image.shape[1] >= 700
    assert (image != 255).any(axis=2).mean() > 0.01  # not blank
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 12  # many class colours
    rows = read_points(out / "tsne_points.csv")
    assert {r["checkpoint"] for r in rows} == {"univ-full/latest.pt"}
    for domain in ("city", "rural"):
        per_class = np.unique([r["class"] for r in rows if r["domain"] == domain], return_counts=True)[1]
        assert per_class.max() == 20 and np.isfinite([float(r["proj_x"]) for r in rows]).all()
    summary = json.loads((out / "tsne_summary.json").read_text())[0]
    assert summary["per_class"] == 20 and sum(summary["pixels"]["city"].values()) == sum(r["domain"] == "city" for r in rows)

    # brute force: the full-resolution embedding of each val image, read at the CSV's pixels
    cfg = validate_config(copy.deepcopy(TINY))
    domains = {d.name: d for d in build_domains(cfg)}
    model = Predictor.from_checkpoint(trained["univ-full"], device="cpu", amp="none").model
    vectors, classes = {}, {}
    for name, d in domains.items():
        ids = {d.val.sample_id(i): i for i in range(len(d.val))}
        mine = [r for r in rows if r["domain"] == name]
        with torch.no_grad():
            full = {}
            for r in mine:
                i = ids[r["image"]]
                if i not in full:
                    img = d.val[i]["image"].unsqueeze(0)
                    emb = model(img, heads=[], embed=True)["embedding"]
                    full[i] = F.interpolate(emb, size=img.shape[-2:], mode="bilinear", align_corners=False)[0]
                    assert int(d.val[i]["label"][int(r["y"]), int(r["x"])]) == int(r["class_id"])
        vectors[name] = np.stack([full[ids[r["image"]]][:, int(r["y"]), int(r["x"])].double().numpy() for r in mine])
        classes[name] = [r["class"] for r in mine]
    want = brute_force_distances(vectors, classes, {"city": "fine", "rural": "coarse"})
    for d in summary["distances"]:
        assert d["matched"] == pytest.approx(want[(d["a"], d["b"])][0], abs=1e-5)
        assert d["different"] == pytest.approx(want[(d["a"], d["b"])][1], abs=1e-5)
    printed = capsys.readouterr().out
    assert "city / rural" in printed and "same or mapped class" in printed and str(out / "tsne.png") in printed


def test_run_tsne_with_two_checkpoints_draws_two_panels_on_the_same_pixels(trained, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    data = ["--data", str(trained["data"]), "--per-class", "10"]
    assert run_tsne(tsne_args(str(trained["joint"]), *data, "--out", str(one))) == 0
    assert run_tsne(tsne_args(str(trained["joint"]), str(trained["univ-full"]), *data, "--out", str(two))) == 0
    single, double = Image.open(one / "tsne.png"), Image.open(two / "tsne.png")
    assert double.height == single.height and double.width > single.width + 400
    rows = read_points(two / "tsne_points.csv")
    by_ckpt = {c: [(r["domain"], r["image"], r["y"], r["x"]) for r in rows if r["checkpoint"] == c]
               for c in ("joint/latest.pt", "univ-full/latest.pt")}
    assert by_ckpt["joint/latest.pt"] == by_ckpt["univ-full/latest.pt"]  # the sample does not depend on the model
    assert len(json.loads((two / "tsne_summary.json").read_text())) == 2
    right = np.asarray(double.convert("RGB"))[:, single.width - 200:double.width - 200]
    assert (right != 255).any(axis=2).mean() > 0.01  # the second panel is drawn
