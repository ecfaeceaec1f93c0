"""Label-space alignment: how the classes of each label space of a model relate to those of the others.

    univseg align work_dirs/demo/best.pt --data demo --out demo_align/

For every ordered pair of heads A -> B (each head predicts in its own label space), two affinities
between the classes a of A (rows) and b of B (columns):

* **centroids**: the cosine similarity of the class centroids of a and b in the shared embedding
  space. They come from the checkpoint's centroid bank (methods with entropy alignment:
  ``univ-cross``, ``univ-full``, ``univ-match``); a checkpoint without one (e.g. ``joint``) gets
  them from the val images of ``--data``'s domains: the mean embedding of each ground-truth class.
* **co-prediction** (needs ``--data``): over every pixel of every domain's val images, the fraction
  of the pixels predicted as a by head A that head B predicts as b (the co-occurrence matrix of
  the two arg-max maps, each row divided by its sum). Predictions follow the config's ``eval``
  inference keys.

**Suggested mapping** A -> B: each class a goes to its class b of highest co-prediction when
that is decisive (head A predicted a on at least ``--min-pixels`` val pixels, and the best b took
at least ``--min-fraction`` of them: by default a majority), else to its class b of highest
centroid cosine when that reaches ``--min-cosine``, else to ``ignore`` (the table still names the
best class and its affinity). Co-prediction comes first: it is direct evidence of what the two
heads call the same pixels; the centroids settle the classes it leaves split. The mapping is
written in the format of ``eval.mappings`` (:func:`univseg.data.mapping.read_mapping_file`).

Outputs (``--out``): ``<A>-to-<B>_centroids.png`` and ``<A>-to-<B>_coprediction.png`` (heatmaps
per ordered pair), ``mapping_<A>-to-<B>.yaml``, ``alignment.md`` and ``alignment.json`` (every
matrix, the pixel counts and the suggestions).
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from ..config import load_config, resolve_config_path
from ..data.domain import Domain, build_domains, eval_loader
from ..data.label_space import LabelSpace
from ..errors import CheckpointError, ConfigError
from ..losses.centroids import class_sums
from ..utils.files import atomic_write, atomic_write_json, atomic_write_text, check_writable_folder
from ..utils.table import markdown_table
from ..viz.heatmap import heatmap
from .checkpoint import Checkpoint
from .evaluator import size_groups
from .inference import InferenceSettings, infer_logits
from .precision import autocast
from .predictor import Predictor

Centroids = tuple[torch.Tensor, torch.Tensor]  # centroids [K, D], valid [K] (bool)
Pair = tuple[str, str]  # (head A, head B)

COPREDICTION, CENTROIDS = "co-prediction", "centroids"
_BANK_KEY = re.compile(r"^(?P<prefix>(?:.*\.)?)domains\.(?P<head>[^.]+)\.centroids$")


# ----------------------------------------------------------------------------- affinities

def centroid_affinity(a: Centroids, b: Centroids) -> np.ndarray:
    """[Ka, Kb] cosine similarity of every centroid of ``a`` with every centroid of ``b``; NaN where
    either class has no valid centroid (never seen, or a zero vector)."""
    ca, va = (t.detach().double().cpu().numpy() for t in a)
    cb, vb = (t.detach().double().cpu().numpy() for t in b)
    na, nb = np.linalg.norm(ca, axis=1), np.linalg.norm(cb, axis=1)
    ok_a, ok_b = va.astype(bool) & (na > 0), vb.astype(bool) & (nb > 0)
    cos = (ca / np.where(ok_a, na, 1)[:, None]) @ (cb / np.where(ok_b, nb, 1)[:, None]).T
    return np.where(ok_a[:, None] & ok_b[None, :], cos, np.nan)


def cooccurrence(pred_a: np.ndarray, pred_b: np.ndarray, ka: int, kb: int) -> np.ndarray:
    """[ka, kb] int64 pixel counts: entry (i, j) = pixels with class i in ``pred_a`` and j in ``pred_b``
    (two arg-max maps of the same pixels, any equal shapes)."""
    a, b = np.asarray(pred_a, dtype=np.int64).ravel(), np.asarray(pred_b, dtype=np.int64).ravel()
    return np.bincount(a * kb + b, minlength=ka * kb).reshape(ka, kb)


def accumulate_cooccurrence(
    counts: dict[Pair, np.ndarray], preds: Mapping[str, np.ndarray], num_classes: Mapping[str, int]
) -> None:
    """Add the co-occurrences of one batch's arg-max maps ``{head: ids}`` to ``counts`` for every
    ordered pair of heads (missing pairs start at zero)."""
    for a in preds:
        for b in preds:
            if a != b:
                c = cooccurrence(preds[a], preds[b], num_classes[a], num_classes[b])
                counts[(a, b)] = counts[(a, b)] + c if (a, b) in counts else c


def row_normalise(counts: np.ndarray) -> np.ndarray:
    """Each row of ``counts`` divided by its sum (the co-prediction affinity); NaN rows where the sum is 0."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, total, out=np.full_like(counts, np.nan), where=total > 0)


def bank_centroids(method_state: Mapping[str, torch.Tensor], spaces: Mapping[str, LabelSpace], path: str | Path
                   ) -> dict[str, Centroids] | None:
    """``{head: (centroids, valid)}`` of the filled centroid bank in a checkpoint's method state
    (keys ``<prefix>domains.<head>.centroids`` / ``.valid``, ``<prefix>initialised``), or None when
    it holds none for every head, or the bank was never filled (training stopped in the warm-up).
    CheckpointError (naming ``path`` and the key) when a head's centroids do not fit its classes."""
    found: dict[str, Centroids] = {}
    for key, value in method_state.items():
        m = _BANK_KEY.match(key)
        if m is None or m["head"] not in spaces:
            continue
        prefix, head = m["prefix"], m["head"]
        ready = method_state.get(f"{prefix}initialised")
        if ready is not None and not bool(ready):
            return None
        if value.ndim != 2 or value.shape[0] != spaces[head].num_classes:
            raise CheckpointError(
                f"{path}: method state '{key}' holds centroids of shape {tuple(value.shape)}, but head '{head}' has "
                f"{spaces[head].num_classes} classes; the file was edited or damaged: use it as 'univseg train' wrote it",
                path=path, key=key,
            )
        valid = method_state.get(f"{prefix}domains.{head}.valid", torch.ones(value.shape[0], dtype=torch.bool))
        found[head] = (value.float().cpu(), valid.bool().cpu())
    return found if set(found) == set(spaces) else None


# ----------------------------------------------------------------------------- from a model and data

def head_for_domain(spaces: Mapping[str, LabelSpace], domain: Domain) -> str | None:
    """The head that predicts in ``domain``'s label space (same class names; the domain's own head
    first), or None."""
    names = domain.label_space.names
    candidates = [domain.name] if domain.name in spaces else []
    candidates += [h for h in spaces if h != domain.name]
    return next((h for h in candidates if spaces[h].names == names), None)


def _val_batches(domain: Domain, batch_size: int, max_images: int | None, progress: bool, what: str
                 ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, labels)`` groups of equal size over the first ``max_images`` (all: None) val images."""
    n = len(domain.val) if max_images is None else min(max_images, len(domain.val))
    loader = eval_loader(domain.val, batch_size, indices=range(n))
    for batch in tqdm(loader, desc=f"{what} {domain.name}", leave=False, disable=not progress):
        yield from size_groups(batch)


@torch.inference_mode()
def val_centroids(predictor: Predictor, domains: Sequence[Domain], batch_size: int, max_images: int | None = None,
                  progress: bool = False) -> dict[str, Centroids]:
    """``{head: (centroids, valid)}``: the mean embedding (upsampled to the label size) of each
    ground-truth class over the val images of the domains labeled in that head's label space;
    classes without a pixel (and heads without such a domain) are invalid."""
    model, device = predictor.model, predictor.device
    dim = model.embedding.out_channels
    sums = {h: torch.zeros(ls.num_classes, dim, device=device) for h, ls in predictor.label_spaces.items()}
    counts = {h: torch.zeros(ls.num_classes, device=device) for h, ls in predictor.label_spaces.items()}
    for domain in domains:
        head = head_for_domain(predictor.label_spaces, domain)
        if head is None:
            continue
        space = predictor.label_spaces[head]
        for images, labels in _val_batches(domain, batch_size, max_images, progress, "centroids"):
            with autocast(device, predictor.amp):
                emb = model(images.to(device), heads=[], embed=True, domain=head)["embedding"]
            s, c = class_sums(emb, labels.to(device), space.num_classes, space.ignore_index)
            sums[head] += s
            counts[head] += c
    return {h: ((sums[h] / counts[h].clamp(min=1).unsqueeze(1)).cpu(), (counts[h] > 0).cpu()) for h in sums}


@torch.inference_mode()
def predict_heads(predictor: Predictor, images: torch.Tensor) -> dict[str, np.ndarray]:
    """``{head: [B, H, W] class ids}`` of a [B, 3, H, W] float (0..255) batch in every label space:
    ``Predictor.predict_all`` for a batch (same inference settings and precision)."""
    with autocast(predictor.device, predictor.amp):
        logits = infer_logits(predictor.model, images.to(predictor.device), list(predictor.label_spaces), predictor.inference)
    return {h: t.argmax(1).cpu().numpy() for h, t in logits.items()}


def coprediction_counts(predictor: Predictor, domains: Sequence[Domain], batch_size: int,
                        max_images: int | None = None, progress: bool = False) -> dict[Pair, np.ndarray]:
    """Co-occurrence counts of every ordered pair of heads over every pixel of every domain's val images."""
    num_classes = {h: ls.num_classes for h, ls in predictor.label_spaces.items()}
    counts: dict[Pair, np.ndarray] = {
        (a, b): np.zeros((num_classes[a], num_classes[b]), dtype=np.int64) for a in num_classes for b in num_classes if a != b
    }
    for domain in domains:
        for images, _ in _val_batches(domain, batch_size, max_images, progress, "co-prediction"):
            accumulate_cooccurrence(counts, predict_heads(predictor, images), num_classes)
    return counts


# ----------------------------------------------------------------------------- suggested mapping

@dataclass(frozen=True)
class MatchRule:
    """How a class of A is matched to a class of B (see the module docstring)."""

    min_fraction: float
    min_cosine: float
    min_pixels: int

    def __post_init__(self) -> None:
        checks = [("--min-fraction", self.min_fraction, 0.0, 1.0), ("--min-cosine", self.min_cosine, -1.0, 1.0),
                  ("--min-pixels", self.min_pixels, 0, float("inf"))]
        for flag, value, lo, hi in checks:
            if not lo <= value <= hi:
                raise ConfigError(f"{flag} must be within [{lo:g}, {hi:g}], got {value:g}", key=flag)

    def describe(self) -> str:
        return (f"the best class by co-prediction when the class was predicted on >= {self.min_pixels} val pixels "
                f"and the best class took >= {self.min_fraction:g} of them, else the best class by centroid cosine when "
                f"it is >= {self.min_cosine:g}, else 'ignore'")


@dataclass(frozen=True)
class Match:
    """The suggestion for one class of A: ``target`` (a class of B, None = ignore), the best class
    of B and its ``affinity`` (None: undefined), which ``source`` decided, and the class's predicted ``pixels``."""

    target: str | None
    best: str | None
    affinity: float | None
    source: str | None
    pixels: int | None


def suggest_mapping(
    src_names: Sequence[str],
    dst_names: Sequence[str],
    rule: MatchRule,
    coprediction: np.ndarray | None = None,
    pixels: np.ndarray | None = None,
    centroids: np.ndarray | None = None,
) -> dict[str, Match]:
    """``{class of A: Match}`` from the [Ka, Kb] affinities as ``rule`` says: the best class of the
    row of ``coprediction`` when ``pixels`` (per class of A) reaches ``rule.min_pixels`` and its value
    ``rule.min_fraction``, else that of the row of ``centroids`` when it reaches ``rule.min_cosine``,
    else ignore (None) with the best class of the first defined row."""
    out = {}
    for i, name in enumerate(src_names):
        count = None if pixels is None else int(pixels[i])
        rows = []
        if coprediction is not None and count is not None and count >= max(rule.min_pixels, 1):
            rows.append((coprediction[i], COPREDICTION, rule.min_fraction))
        if centroids is not None and not np.all(np.isnan(centroids[i])):
            rows.append((centroids[i], CENTROIDS, rule.min_cosine))
        bests = [(dst_names[int(np.nanargmax(row))], float(np.nanmax(row)), source, threshold) for row, source, threshold in rows]
        passing = [b for b in bests if b[1] >= b[3]]
        if passing:
            best, value, source, _ = passing[0]
            out[name] = Match(best, best, value, source, count)
        elif bests:
            best, value, source, _ = bests[0]
            out[name] = Match(None, best, value, source, count)
        else:
            out[name] = Match(None, None, None, None, count)
    return out


def mapping_yaml(src: LabelSpace, dst: LabelSpace, matches: Mapping[str, Match], note: str) -> str:
    """The text of a class-mapping file (``source``, ``target``, ``mapping``; 'ignore' for no match)
    as :func:`univseg.data.mapping.read_mapping_file` reads it, after a comment line ``note``."""
    table = {name: m.target if m.target is not None else "ignore" for name, m in matches.items()}
    body = yaml.safe_dump({"source": src.name, "target": dst.name, "mapping": table}, sort_keys=False)
    return "".join(f"# {line}\n" for line in note.splitlines()) + body


# ----------------------------------------------------------------------------- the result and its files

@dataclass
class Alignment:
    """The affinities between the classes of every ordered pair of heads.

    ``centroids`` holds cosine matrices (rows: classes of A), ``centroids_from`` says where the
    centroids come from; ``counts`` the co-occurrence pixel counts (None without --data).
    """

    label_spaces: dict[str, LabelSpace]
    centroids: dict[Pair, np.ndarray]
    centroids_from: str
    counts: dict[Pair, np.ndarray] | None = None

    @property
    def pairs(self) -> list[Pair]:
        return [(a, b) for a in self.label_spaces for b in self.label_spaces if a != b]

    def coprediction(self, pair: Pair) -> np.ndarray | None:
        return None if self.counts is None else row_normalise(self.counts[pair])

    def pixels(self, pair: Pair) -> np.ndarray | None:
        """Val pixels predicted as each class of A (rows of the counts), or None without counts."""
        return None if self.counts is None else self.counts[pair].sum(axis=1)

    def suggest(self, pair: Pair, rule: MatchRule) -> dict[str, Match]:
        a, b = pair
        return suggest_mapping(self.label_spaces[a].names, self.label_spaces[b].names, rule,
                               self.coprediction(pair), self.pixels(pair), self.centroids[pair])


def _title(head: str, space: LabelSpace) -> str:
    return f"{head} ({space.name})"


def write_heatmaps(alignment: Alignment, out: Path) -> list[Path]:
    """One PNG per ordered pair and affinity: ``<A>-to-<B>_centroids.png`` (cosine, -1..1) and, with
    counts, ``<A>-to-<B>_coprediction.png`` (fraction, 0..1)."""
    written = []
    for a, b in alignment.pairs:
        sa, sb = alignment.label_spaces[a], alignment.label_spaces[b]
        subtitle = f"rows: {_title(a, sa)}   columns: {_title(b, sb)}"
        kinds = [("centroids", alignment.centroids[(a, b)], "centroid cosine similarity", -1.0)]
        copred = alignment.coprediction((a, b))
        if copred is not None:
            kinds.append(("coprediction", copred, f"co-prediction: fraction of {a}'s pixels per {b} class", 0.0))
        for suffix, values, title, vmin in kinds:
            image = heatmap(values, sa.names, sb.names, title=title, subtitle=subtitle, vmin=vmin, vmax=1.0)
            path = out / f"{a}-to-{b}_{suffix}.png"
            atomic_write(path, lambda p, im=image: im.save(p, format="PNG"), "heatmap")
            written.append(path)
    return written


def _cells(m: np.ndarray | None) -> list[list[float | None]] | None:
    """A matrix as nested lists for JSON, NaN as None."""
    return None if m is None else [[None if np.isnan(v) else float(v) for v in row] for row in np.asarray(m, float)]


def alignment_json(alignment: Alignment, rule: MatchRule, checkpoint: str, data: str | None) -> dict:
    """Everything as plain data: label spaces, settings, and per ordered pair the matrices, the pixel
    counts and the suggested mapping."""
    pairs = []
    for a, b in alignment.pairs:
        pixels = alignment.pixels((a, b))
        pairs.append({
            "src": a, "dst": b,
            "src_space": alignment.label_spaces[a].name, "dst_space": alignment.label_spaces[b].name,
            "centroids": _cells(alignment.centroids[(a, b)]),
            "coprediction": _cells(alignment.coprediction((a, b))),
            "cooccurrence": None if alignment.counts is None else alignment.counts[(a, b)].tolist(),
            "pixels": None if pixels is None else pixels.tolist(),
            "mapping": {name: vars(m) for name, m in alignment.suggest((a, b), rule).items()},
            "mapping_file": f"mapping_{a}-to-{b}.yaml",
        })
    return {
        "checkpoint": checkpoint, "data": data, "centroids_from": alignment.centroids_from,
        "rule": {**vars(rule), "description": rule.describe()},
        "label_spaces": {h: {"name": ls.name, "classes": ls.names} for h, ls in alignment.label_spaces.items()},
        "pairs": pairs,
    }


def _matrix_table(m: np.ndarray, rows: Sequence[str], cols: Sequence[str], corner: str) -> str:
    return markdown_table([corner, *cols], [[r, *(None if np.isnan(v) else float(v) for v in row)] for r, row in zip(rows, m)])


def alignment_markdown(alignment: Alignment, rule: MatchRule, checkpoint: str, data: str | None) -> str:
    """A readable report: per ordered pair the suggested mapping, then the matrices."""
    parts = [
        f"# Label-space alignment of {checkpoint}", "",
        f"- centroids: {alignment.centroids_from}",
        f"- co-prediction: {'val images of ' + data if data else 'not computed (no --data)'}",
        f"- suggested mapping: {rule.describe()}",
    ]
    for a, b in alignment.pairs:
        sa, sb = alignment.label_spaces[a], alignment.label_spaces[b]
        matches = alignment.suggest((a, b), rule)
        rows = [[n, m.target or "ignore", m.best or "-", m.affinity, m.source or "-", "-" if m.pixels is None else m.pixels]
                for n, m in matches.items()]
        parts += [
            "", f"## {_title(a, sa)} -> {_title(b, sb)}", "",
            f"Mapping file `mapping_{a}-to-{b}.yaml`; use it with `eval.mappings: {{\"{sa.name}->{sb.name}\": "
            f"mapping_{a}-to-{b}.yaml}}`.", "",
            markdown_table([f"{a} class", "suggested", "best", "affinity", "from", "pixels"], rows),
        ]
        copred = alignment.coprediction((a, b))
        if copred is not None:
            parts += ["", f"Co-prediction (fraction of each {a} class's pixels predicted as each {b} class):", "",
                      _matrix_table(copred, sa.names, sb.names, f"{a} \\ {b}")]
        parts += ["", "Centroid cosine similarity:", "", _matrix_table(alignment.centroids[(a, b)], sa.names, sb.names, f"{a} \\ {b}")]
    return "\n".join(parts) + "\n"


def write_alignment(alignment: Alignment, out: Path, rule: MatchRule, checkpoint: str, data: str | None) -> list[Path]:
    """Write the heatmaps, one mapping YAML per ordered pair, ``alignment.md`` and ``alignment.json``
    to ``out``; returns the paths written."""
    written = write_heatmaps(alignment, out)
    for a, b in alignment.pairs:
        note = f"suggested by 'univseg align {checkpoint}': {rule.describe()}"
        text = mapping_yaml(alignment.label_spaces[a], alignment.label_spaces[b], alignment.suggest((a, b), rule), note)
        written.append(out / f"mapping_{a}-to-{b}.yaml")
        atomic_write_text(written[-1], text)
    written += [out / "alignment.md", out / "alignment.json"]
    atomic_write_text(written[-2], alignment_markdown(alignment, rule, checkpoint, data))
    atomic_write_json(written[-1], alignment_json(alignment, rule, checkpoint, data))
    return written


# ----------------------------------------------------------------------------- the verb

def compute_alignment(predictor: Predictor, method_state: Mapping[str, torch.Tensor], checkpoint: str | Path,
                      domains: Sequence[Domain] | None, data: str | None = None, batch_size: int = 4,
                      max_images: int | None = None, progress: bool = False) -> Alignment:
    """The alignment of ``predictor``'s heads: centroids from ``method_state``'s bank, else from the
    val images of ``domains``; co-prediction on ``domains`` (None: no data, no co-prediction)."""
    spaces = predictor.label_spaces
    bank = bank_centroids(method_state, spaces, checkpoint)
    source = "the checkpoint's centroid bank"
    if bank is None:
        if domains is None:
            raise CheckpointError(
                f"{checkpoint} holds no filled class-centroid bank (a method without entropy alignment, e.g. 'joint', or "
                "training stopped before method.warmup_iters): give --data CONFIG to compute the centroids from the val "
                "images of its domains (and the co-prediction affinity)", path=checkpoint,
            )
        bank = val_centroids(predictor, domains, batch_size, max_images, progress)
        source = f"mean embedding per ground-truth class on the val images of {data}"
        print(f"{checkpoint} holds no class-centroid bank: centroids computed from the val images of {data}")
        missing = [h for h, (_, valid) in bank.items() if not bool(valid.any())]
        if missing:
            print(f"no domain of {data} is labeled in the label space of head(s) {', '.join(missing)}: no centroids for them")
    centroids = {(a, b): centroid_affinity(bank[a], bank[b]) for a in spaces for b in spaces if a != b}
    counts = None if domains is None else coprediction_counts(predictor, domains, batch_size, max_images, progress)
    return Alignment(dict(spaces), centroids, source, counts)


def check_align_output(out: Path, overwrite: bool) -> None:
    """ConfigError when ``out`` holds the output of an earlier ``univseg align`` (unless ``overwrite``);
    WriteError when ``out`` cannot be written."""
    if (out / "alignment.json").is_file() and not overwrite:
        raise ConfigError(
            f"{out} holds the output of an earlier 'univseg align' (alignment.json, heatmaps, mappings); replace it "
            "with --overwrite, or choose another --out", key="--out", path=out,
        )
    check_writable_folder(out, "--out")


def run_align(args: argparse.Namespace) -> int:
    """``univseg align``: compute the affinities, write heatmaps, tables and suggested mappings."""
    rule = MatchRule(args.min_fraction, args.min_cosine, args.min_pixels)
    if args.set and not args.data:
        raise ConfigError("--set overrides keys of the --data config; give --data CONFIG", key="--set")
    path = Path(args.checkpoint)
    out = Path(args.out) if args.out else path.with_name(f"{path.stem}_align")
    predictor = Predictor.from_checkpoint(path, device=args.device)
    spaces = predictor.label_spaces
    if len(spaces) < 2:
        (head, space), = spaces.items()
        raise CheckpointError(
            f"{path} has one label space (head '{head}': {space.name}); nothing to align: give the checkpoint of a "
            "model with two or more heads (a universal model trained on several domains)", path=path,
        )
    check_align_output(out, args.overwrite)
    cfg = load_config(resolve_config_path(args.data), list(args.set)) if args.data else None
    if cfg is not None:
        predictor.inference = InferenceSettings.from_config(cfg.eval)
    progress = not getattr(args, "no_progress", False)
    alignment = compute_alignment(
        predictor, Checkpoint.load(path).method, path, build_domains(cfg) if cfg else None, args.data,
        cfg.eval.batch_size if cfg else 4, cfg.eval.max_images if cfg else None, progress,
    )
    write_alignment(alignment, out, rule, str(path), args.data)
    print(suggestions_text(alignment, rule))
    print(f"heatmaps, alignment.md, alignment.json and mapping_<A>-to-<B>.yaml files written to {out}")
    return 0


def suggestions_text(alignment: Alignment, rule: MatchRule) -> str:
    """The suggested mappings of every ordered pair, one line per pair, for the terminal."""
    lines = []
    for a, b in alignment.pairs:
        pairs = ", ".join(f"{n}->{m.target or 'ignore'}" for n, m in alignment.suggest((a, b), rule).items())
        lines.append(f"{a} -> {b}: {pairs}")
    return "\n".join(lines)
