"""Where the pixel embeddings of each domain's classes lie: a seeded sample of every domain's val
pixels per ground-truth class, projected to 2-D (t-SNE or UMAP) and plotted, with cosine distances
that make the picture checkable.

    univseg tsne runs/joint/best.pt runs/univ-full/best.pt --data demo --per-class 200

Sampling: every labeled val pixel of a domain gets a random key (a generator seeded by the seed
and the domain's position); the ``per_class`` pixels of each class with the smallest keys are kept
(all of them when the class has fewer), i.e. a uniform sample without replacement. The pixels do
not depend on the model, so every checkpoint is shown on the same pixels. Embeddings are those of
the model's embedding head bilinearly upsampled to the label size (the model's ``upsample``),
evaluated at the sampled pixels only: no [B, D, H, W] tensor at input resolution.

Colour = class name, from the palette of the first domain (config order) that has the class, so
classes of different label spaces with the same name share a colour (and a legend line); marker
= domain. Each checkpoint is projected on its own, one panel each.

Distances (printed, and in ``<method>_summary.json``): for each pair of domains (a domain with
itself included), the mean cosine distance of the embeddings (before projection) over pixel pairs
whose classes have the same name or are mapped onto each other by a class mapping (``eval.mappings``
of the config or a built-in one, either direction) and over all other pairs; a pixel is never
paired with itself.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import load_config, resolve_config_path
from ..data.domain import Domain, SampleView, build_domains, eval_loader, iter_images
from ..data.label_space import LabelSpace
from ..data.mapping import ClassMapping
from ..errors import CheckpointError, DataError, UnivsegError
from ..losses.bilinear import bilinear_taps
from ..models.universal import UniversalModel
from ..utils.files import atomic_write, atomic_write_json, atomic_write_text
from ..utils.table import markdown_table
from ..viz.scatter import LEGEND_GREY, LegendEntry, ScatterPanel, scatter_plot
from .evaluator import choose_head
from .predictor import Predictor

Projection = Callable[[np.ndarray, int], np.ndarray]
MIN_POINTS = 4


# ----------------------------------------------------------------------------- sampling

@dataclass(frozen=True)
class PixelSample:
    """Sampled pixels of one domain: class ``classes``, where (``images`` = index in the val view,
    ``ys``, ``xs``; all long [M]), sampling ``keys`` (float64 [M]) and ``embeddings`` (float32 [M, D])."""

    classes: torch.Tensor
    images: torch.Tensor
    ys: torch.Tensor
    xs: torch.Tensor
    keys: torch.Tensor
    embeddings: torch.Tensor

    def __len__(self) -> int:
        return len(self.classes)

    def take(self, index: torch.Tensor) -> "PixelSample":
        """The pixels at ``index``, in that order."""
        return PixelSample(*(t[index] for t in self._fields()))

    def cat(self, other: "PixelSample") -> "PixelSample":
        """These pixels followed by ``other``'s."""
        return PixelSample(*(torch.cat([a, b]) for a, b in zip(self._fields(), other._fields())))

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return self.classes, self.images, self.ys, self.xs, self.keys, self.embeddings


def smallest_per_class(keys: torch.Tensor, classes: torch.Tensor, per_class: int) -> torch.Tensor:
    """Indices of the ``per_class`` smallest ``keys`` of each class (all of a class with fewer),
    ordered by class, then key (ties by position)."""
    order = torch.argsort(keys, stable=True)
    order = order[torch.argsort(classes[order], stable=True)]
    grouped = classes[order]
    counts = torch.bincount(grouped)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order)) - starts[grouped]
    return order[rank < per_class]


def upsampled_at(embedding: torch.Tensor, size: tuple[int, int], b: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``upsample(embedding, size)[b, :, y, x]`` [M, D] (bilinear, align_corners=False, float32) from
    the [B, D, h, w] embedding, evaluated at the M given pixels only."""
    h, w = embedding.shape[-2:]
    device = embedding.device
    ty, tx = bilinear_taps(h, size[0], device), bilinear_taps(w, size[1], device)
    b, y, x = b.to(device), y.to(device), x.to(device)
    e = F.pad(embedding.float(), (0, 1, 0, 1), mode="replicate")  # i0 + 1 one past the end has weight 0
    i0, j0 = ty.index[y], tx.index[x]
    out = torch.zeros(len(b), e.shape[1], device=device)
    for di, a in ((0, ty.w0[y]), (1, ty.w1[y])):
        for dj, c in ((0, tx.w0[x]), (1, tx.w1[x])):
            out += (a * c).unsqueeze(1) * e[b, :, i0 + di, j0 + dj]
    return out


def sample_pixels(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    embed: Callable[[torch.Tensor], torch.Tensor],
    space: LabelSpace,
    per_class: int,
    rng: np.random.Generator,
) -> PixelSample | None:
    """Sample ``per_class`` pixels of each class of ``space`` from ``(indices [B], images [B, 3, H, W],
    labels [B, H, W])`` batches (ignore pixels never), with the embeddings ``embed(images)`` [B, D, h, w]
    upsampled to the label size at those pixels. Each image's keys come from ``rng`` in batch order.
    None when there are no batches."""
    sample: PixelSample | None = None
    for indices, images, labels in batches:
        keys = torch.from_numpy(np.stack([rng.random(tuple(labels.shape[-2:])) for _ in range(len(labels))]))
        valid = (labels != space.ignore_index) & (labels >= 0) & (labels < space.num_classes)
        b, y, x = valid.nonzero(as_tuple=True)
        classes = labels[b, y, x].long()
        pick = smallest_per_class(keys[b, y, x], classes, per_class)
        b, y, x = b[pick], y[pick], x[pick]
        vectors = upsampled_at(embed(images), tuple(labels.shape[-2:]), b, y, x).cpu()
        found = PixelSample(classes[pick], indices[b].long(), y, x, keys[b, y, x], vectors)
        sample = found if sample is None else sample.cat(found)
        sample = sample.take(smallest_per_class(sample.keys, sample.classes, per_class))
    return sample


def val_batches(
    view: SampleView, batch_size: int, desc: str, progress: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(indices, images, labels)`` of ``view`` in order; a batch of mixed sizes one image at a time."""
    for batch in tqdm(eval_loader(view, batch_size), desc=desc, leave=False, disable=not progress):
        start = 0
        for images, labels in iter_images(batch):
            yield batch["index"][start:start + len(images)], images, labels
            start += len(images)


def norm_domain(
    model: UniversalModel, heads: Mapping[str, LabelSpace], domain: Domain, mapping_files: Mapping[str, Path]
) -> str | None:
    """The domain whose BatchNorm embeds ``domain``'s images under per-domain norm: its own, else that
    of the head evaluation would score it with (None under shared norm)."""
    if model.norm != "domain":
        return None
    if domain.name in heads:
        return domain.name
    choice = choose_head(heads, domain.name, domain.label_space, mapping_files)
    if choice is None:
        raise CheckpointError(
            f"the model has per-domain BatchNorm but no head for domain '{domain.name}' nor a class mapping into its "
            f"label space '{domain.label_space.name}'; add eval.mappings['HEAD_SPACE->{domain.label_space.name}'] to --data"
        )
    return choice.head


@torch.inference_mode()
def sample_domains(
    predictor: Predictor, domains: Sequence[Domain], per_class: int, seed: int, batch_size: int,
    mapping_files: Mapping[str, Path], progress: bool = True,
) -> dict[str, PixelSample]:
    """Each domain's pixel sample (see :func:`sample_pixels`) from its val split, embedded by the
    predictor's model in eval mode; the keys of domain i come from ``default_rng([seed, i])``."""
    model, device = predictor.model.eval(), predictor.device
    out = {}
    for i, domain in enumerate(domains):
        norm = norm_domain(model, predictor.label_spaces, domain, mapping_files)

        def embed(images: torch.Tensor) -> torch.Tensor:
            return model(images.to(device), heads=[], embed=True, domain=norm)["embedding"]

        batches = val_batches(domain.val, batch_size, f"embed {domain.name}", progress)
        sample = sample_pixels(batches, embed, domain.label_space, per_class, np.random.default_rng([seed, i]))
        if sample is None or len(sample) == 0:
            raise DataError(f"domain '{domain.name}': its val split has no labeled pixel to sample", key=f"domains.{domain.name}")
        out[domain.name] = sample
    return out


# ----------------------------------------------------------------------------- distances

def class_matches(a: LabelSpace, b: LabelSpace, mapping_files: Mapping[str, Path]) -> np.ndarray:
    """bool [Ka, Kb]: class i of ``a`` and class j of ``b`` have the same name or a class mapping
    (``mapping_files`` keyed 'SRC->DST', else the built-in one) maps one onto the other."""
    match = np.array([[x == y for y in b.names] for x in a.names])
    for src, dst, flip in ((a, b, False), (b, a, True)):
        path = mapping_files.get(f"{src.name}->{dst.name}")
        mapping = ClassMapping.from_yaml(path, src, dst) if path is not None else ClassMapping.builtin(src, dst)
        for k, target in enumerate(mapping.lut if mapping is not None else ()):
            if target >= 0:
                match[(target, k) if flip else (k, target)] = True
    return match


@dataclass(frozen=True)
class PairDistance:
    """Mean cosine distance between the pixel embeddings of domains ``a`` and ``b`` over pixel pairs of
    matching classes (same name or mapped) and of different classes (None: no such pair), and how many pairs."""

    a: str
    b: str
    matched: float | None
    different: float | None
    matched_pairs: int
    different_pairs: int

    @property
    def gap(self) -> float | None:
        """``different - matched``: how much closer matching classes are than the rest."""
        return None if self.matched is None or self.different is None else self.different - self.matched


def _mean_distance(similarity: torch.Tensor, pairs: torch.Tensor, mask: torch.Tensor) -> tuple[float | None, int]:
    """1 - (summed cosine similarity / pair count) over the class pairs in ``mask``, and the pair count."""
    count = int(round(float(pairs[mask].sum())))
    return (None if count == 0 else 1.0 - float(similarity[mask].sum()) / count), count


def pair_distances(
    samples: Mapping[str, PixelSample], spaces: Mapping[str, LabelSpace], mapping_files: Mapping[str, Path]
) -> list[PairDistance]:
    """:class:`PairDistance` of every pair of domains (a before b in ``samples`` order, a = b included).

    Per class, the sum of unit embeddings S and the count n: the summed similarity of classes i, j is
    S_i . S_j over n_i n_j pairs (within a domain, minus each pixel's pair with itself); float64.
    """
    unit = {n: F.normalize(s.embeddings.double(), dim=1) for n, s in samples.items()}
    sums, counts, selves = {}, {}, {}
    for n, s in samples.items():
        k = spaces[n].num_classes
        sums[n] = torch.zeros(k, unit[n].shape[1], dtype=torch.float64).index_add_(0, s.classes, unit[n])
        counts[n] = torch.bincount(s.classes, minlength=k).double()
        selves[n] = torch.zeros(k, dtype=torch.float64).index_add_(0, s.classes, (unit[n] * unit[n]).sum(1))
    names = list(samples)
    out = []
    for i, a in enumerate(names):
        for b in names[i:]:
            similarity = sums[a] @ sums[b].T
            pairs = torch.outer(counts[a], counts[b])
            if a == b:
                similarity -= torch.diag(selves[a])
                pairs -= torch.diag(counts[a])
            match = torch.from_numpy(class_matches(spaces[a], spaces[b], mapping_files))
            matched, n_matched = _mean_distance(similarity, pairs, match)
            different, n_different = _mean_distance(similarity, pairs, ~match)
            out.append(PairDistance(a, b, matched, different, n_matched, n_different))
    return out


def distance_table(distances: Sequence[PairDistance]) -> str:
    """The distances as a Markdown table (3 decimals)."""
    rows = [(f"{d.a} / {d.b}", d.matched, d.different, d.gap) for d in distances]
    return markdown_table(["domains", "same or mapped class", "different class", "gap"], rows, digits=3)


# ----------------------------------------------------------------------------- projection

def _require(module: str, install: str, method: str) -> Any:
    """Import ``module``; UnivsegError saying what to install when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UnivsegError(
            f"--method {method} needs '{module.split('.')[0]}', which is not installed: pip install {install}",
            key="--method", hint=f"pip install {install}",
        ) from None


def projector(method: str) -> Projection:
    """The projection ``(points [M, D], seed) -> [M, 2]`` of ``method`` (tsne or umap), cosine metric.

    Raises UnivsegError naming the package to install (scikit-learn: the ``analysis`` extra; umap-learn).
    """
    if method == "umap":
        umap = _require("umap", "umap-learn", method)
        return lambda points, seed: umap.UMAP(
            n_components=2, n_neighbors=min(15, len(points) - 1), metric="cosine", random_state=seed
        ).fit_transform(points)
    manifold = _require("sklearn.manifold", '"univseg[analysis]"', method)
    return lambda points, seed: manifold.TSNE(
        n_components=2, perplexity=min(30.0, (len(points) - 1) / 3), metric="cosine", init="pca", random_state=seed
    ).fit_transform(points)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the enclosed code with ``n`` torch intra-op threads (restored after). Idle torch OpenMP
    workers compete with scikit-learn's own OpenMP runtime: t-SNE ran about 20x slower next to them."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def project(points: np.ndarray, projection: Projection, seed: int) -> np.ndarray:
    """[M, D] embeddings -> [M, 2] float64 coordinates; DataError when there are fewer than 4 points."""
    if len(points) < MIN_POINTS:
        raise DataError(f"only {len(points)} pixels were sampled; a 2-D projection needs at least {MIN_POINTS}: raise --per-class")
    with torch_threads(1):
        return np.asarray(projection(np.asarray(points, dtype=np.float32), seed), dtype=np.float64)


# ----------------------------------------------------------------------------- plot and files

def class_colors(spaces: Iterable[LabelSpace]) -> dict[str, tuple[int, int, int]]:
    """One colour per class name: that of the first label space having the class."""
    colors: dict[str, tuple[int, int, int]] = {}
    for space in spaces:
        for c in space.classes:
            colors.setdefault(c.name, tuple(int(v) for v in c.color))
    return colors


@dataclass(frozen=True)
class Embedded:
    """One checkpoint's result: its ``label``, samples per domain, the 2-D points ``xy`` [M, 2] of the
    samples concatenated in domain order, and the distances."""

    label: str
    samples: dict[str, PixelSample]
    xy: np.ndarray
    distances: list[PairDistance]


def panel(result: Embedded, spaces: Mapping[str, LabelSpace], colors: Mapping[str, tuple[int, int, int]]) -> ScatterPanel:
    """The scatter panel of one checkpoint: colour = class name, marker = domain (config order)."""
    rgb, markers = [], []
    for m, (name, s) in enumerate(result.samples.items()):
        rgb += [colors[spaces[name].names[k]] for k in s.classes.tolist()]
        markers += [m] * len(s)
    return ScatterPanel(result.label, result.xy, np.array(rgb, dtype=np.uint8).reshape(-1, 3), np.array(markers))


def legend(spaces: Mapping[str, LabelSpace], colors: Mapping[str, tuple[int, int, int]]) -> list[LegendEntry]:
    """Domains (marker shapes, grey), then class names (colours)."""
    domains = [LegendEntry(f"domain {name}", LEGEND_GREY, m) for m, name in enumerate(spaces)]
    return domains + [LegendEntry(name, color) for name, color in colors.items()]


def points_csv(results: Sequence[Embedded], domains: Mapping[str, Domain]) -> str:
    """One row per sampled pixel and checkpoint: where it is, its class and its 2-D coordinates."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["checkpoint", "domain", "class_id", "class", "image", "y", "x", "proj_x", "proj_y"])
    for r in results:
        row = 0
        for name, s in r.samples.items():
            view, names = domains[name].val, domains[name].label_space.names
            for k, i, y, x in zip(s.classes.tolist(), s.images.tolist(), s.ys.tolist(), s.xs.tolist()):
                px, py = r.xy[row]
                writer.writerow([r.label, name, k, names[k], view.sample_id(i), y, x, f"{px:.6g}", f"{py:.6g}"])
                row += 1
    return buf.getvalue()


def summary(r: Embedded, spaces: Mapping[str, LabelSpace], args: argparse.Namespace) -> dict[str, Any]:
    """The JSON record of one checkpoint: settings, pixels per class and the distances."""
    counts = {
        name: {spaces[name].names[k]: int(n) for k, n in enumerate(torch.bincount(s.classes, minlength=spaces[name].num_classes)) if n}
        for name, s in r.samples.items()
    }
    distances = [{**asdict(d), "gap": d.gap} for d in r.distances]
    return {"checkpoint": r.label, "method": args.method, "per_class": args.per_class, "seed": args.seed,
            "pixels": counts, "distances": distances}


def checkpoint_label(path: str | Path) -> str:
    """Panel title of a checkpoint: its folder and file name (e.g. ``univ-full/best.pt``)."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def run_tsne(args: argparse.Namespace) -> int:
    """``univseg tsne``: sample, embed and project each checkpoint's pixels; write ``<method>.png``
    (one panel per checkpoint), ``<method>_points.csv`` and ``<method>_summary.json`` and print the distances."""
    projection = projector(args.method)
    cfg = load_config(resolve_config_path(args.data), list(args.set or []))
    domains = {d.name: d for d in build_domains(cfg)}
    spaces = {name: d.label_space for name, d in domains.items()}
    progress = not getattr(args, "no_progress", False)
    results = []
    for path in args.checkpoints:
        predictor = Predictor.from_checkpoint(path, device=args.device, amp="none")
        samples = sample_domains(predictor, list(domains.values()), args.per_class, args.seed, cfg.eval.batch_size,
                                 cfg.eval.mappings, progress)
        xy = project(torch.cat([s.embeddings for s in samples.values()]).numpy(), projection, args.seed)
        results.append(Embedded(checkpoint_label(path), samples, xy, pair_distances(samples, spaces, cfg.eval.mappings)))
    out = Path(args.out) if args.out else Path(args.checkpoints[0]).parent / "tsne"
    out.mkdir(parents=True, exist_ok=True)
    colors = class_colors(spaces.values())
    image = scatter_plot([panel(r, spaces, colors) for r in results], legend(spaces, colors))
    atomic_write(out / f"{args.method}.png", lambda tmp: image.save(tmp, format="PNG"), what="plot")
    atomic_write_text(out / f"{args.method}_points.csv", points_csv(results, domains))
    atomic_write_json(out / f"{args.method}_summary.json", [summary(r, spaces, args) for r in results])
    for r in results:
        pixels = ", ".join(f"{name} {len(s)}" for name, s in r.samples.items())
        print(f"{r.label}: {pixels} pixels; mean cosine distance of the embeddings:\n{distance_table(r.distances)}\n")
    print(f"wrote {out / f'{args.method}.png'}, {args.method}_points.csv and {args.method}_summary.json in {out}")
    return 0
