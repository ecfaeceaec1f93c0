"""``univseg split``: write the labeled subset, unlabeled pool and val split of each domain as list files.

For every domain, :func:`write_split_files` writes ``<out>/<domain>/``:

* ``labeled.txt``   -- the labeled subset chosen by the config's rule (count / fraction + seed, or
  ``labeled.split_file``), one ``image label`` line per sample;
* ``unlabeled.txt`` -- the unlabeled pool (images only), one ``image`` line per sample;
* ``val.txt``       -- the val split, ``image label`` per line.

Paths are relative to the dataset's image root of the split (the UniMatch / mmseg convention, see
:func:`univseg.data.splits.split_lines`); unlabeled images that come from an extra split or an
extra folder are written with their full path so they cannot be mistaken for train images.

Round trip: setting ``labeled.split_file: <out>/<domain>/labeled.txt`` and
``unlabeled.split_file: <out>/<domain>/unlabeled.txt`` in the same config (keep ``extra_splits`` /
``extra_dirs``: they say where the pool's entries are looked up) selects exactly the same samples,
in the same order.

Overriding the rule from the command line: ``count`` / ``fraction`` / ``seed`` replace the
labeled rule of the selected domains (:func:`with_labeled_rule`); ``seed`` alone re-draws the
configured count / fraction with another seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, DataError
from .base import FileSegDataset, SegDataset
from .domain_config import LabeledConfig
from .recipe import select_domain
from .splits import split_lines

SPLIT_FILE_NAMES = ("labeled.txt", "unlabeled.txt", "val.txt")


@dataclass
class DomainSplit:
    """The selection of one domain: train split, labeled indices, unlabeled pool, val split."""

    domain: str
    train: SegDataset
    val: SegDataset
    labeled: list[int]  # sorted indices into ``train``
    pool: list[tuple[SegDataset, int]]  # the unlabeled pool, in training order

    def lines(self) -> dict[str, list[str]]:
        """The split-file lines, by file name (``labeled.txt``, ``unlabeled.txt``, ``val.txt``).

        Raises DataError when a path contains whitespace (it could not be read back).
        """
        out = {
            "labeled.txt": split_lines(self.train, self.labeled, with_labels=True),
            "unlabeled.txt": [self._pool_line(ds, i) for ds, i in self.pool],
            "val.txt": split_lines(self.val, range(len(self.val)), with_labels=True),
        }
        for fname, ds, lines in (("labeled.txt", self.train, out["labeled.txt"]), ("val.txt", self.val, out["val.txt"]),
                                 ("unlabeled.txt", None, out["unlabeled.txt"])):
            cols = 2 if fname != "unlabeled.txt" and isinstance(ds, FileSegDataset) and ds.labels is not None else 1
            bad = [line for line in lines if len(line.split()) != cols]
            if bad:
                raise DataError(
                    f"domain '{self.domain}': {fname}: paths containing whitespace cannot be written to a split file "
                    f"('image [label]' per line), first: {bad[0]!r}; rename the files",
                    values=bad, hint="rename the files",
                )
        return out

    def _pool_line(self, ds: SegDataset, i: int) -> str:
        if ds is self.train or not isinstance(ds, FileSegDataset):
            return split_lines(ds, [i], with_labels=False)[0]
        return str(ds.images[i])  # from an extra split / folder: the full path, unambiguous


def with_labeled_rule(cfg, *, count: int | None = None, fraction: float | None = None, seed: int | None = None,
                      domains: list[str] | None = None):
    """A copy of Config ``cfg`` whose domains (all, or those named) use another labeled rule.

    ``count`` or ``fraction`` replaces the rule (and any ``labeled.split_file``); ``seed`` sets the
    selection seed (alone it keeps the configured count / fraction). Returns ``cfg`` itself when
    nothing is given. Raises ConfigError (a ValueError) for both count and fraction, an unknown
    domain, or a seed alone for a domain whose labeled subset comes from a split file.
    """
    if count is not None and fraction is not None:
        raise ConfigError("give either count or fraction, not both")
    if count is None and fraction is None and seed is None:
        return cfg
    _check_domain_names(cfg, domains)
    new = cfg.model_copy(deep=True)
    for d in new.domains:
        if domains and d.name not in domains:
            continue
        old = d.labeled
        if count is None and fraction is None:
            if old.split_file is not None:
                raise ConfigError(
                    f"domain '{d.name}' takes its labeled subset from {old.split_file}; a seed has no effect "
                    "there: give a count or fraction as well"
                )
            d.labeled = LabeledConfig(count=old.count, fraction=old.fraction, seed=seed)
        else:
            d.labeled = LabeledConfig(count=count, fraction=fraction, seed=seed if seed is not None else old.seed)
    return new


def make_labeled_split(cfg, domain: str, count: int | None = None, fraction: float | None = None,
                       seed: int | None = None) -> DomainSplit:
    """The selection of domain ``domain`` of Config ``cfg``, by the recipe training uses.

    ``count`` / ``fraction`` / ``seed`` override the domain's labeled rule (see
    :func:`with_labeled_rule`). Raises the recipe's first problem (e.g. DataError naming the
    domain when the rule asks for more images than the train split has).
    """
    _check_domain_names(cfg, [domain])
    cfg = with_labeled_rule(cfg, count=count, fraction=fraction, seed=seed, domains=[domain])
    index = next(k for k, d in enumerate(cfg.domains) if d.name == domain)
    sel = select_domain(cfg.domains[index], index, cfg.seed)
    return DomainSplit(sel.name, sel.train, sel.val, sel.labeled, sel.pool)


def write_split_files(cfg, out_dir: Path, *, domains: list[str] | None = None, count: int | None = None,
                      fraction: float | None = None, seed: int | None = None) -> list[Path]:
    """Write ``labeled.txt``, ``unlabeled.txt`` and ``val.txt`` of each domain under ``out_dir/<domain>/``.

    Args:
        cfg: the experiment Config.
        out_dir: output folder (created).
        domains: only these domains (default: all).
        count, fraction, seed: override the labeled rule of the written domains (see :func:`with_labeled_rule`).

    Returns:
        The written files, three per domain, in config order.
    """
    _check_domain_names(cfg, domains)
    selected = [d.name for d in cfg.domains if not domains or d.name in domains]
    cfg = with_labeled_rule(cfg, count=count, fraction=fraction, seed=seed, domains=selected)
    # select every domain and make every line before writing anything: no half-written output
    outputs = []
    for n in selected:
        sel = make_labeled_split(cfg, n)
        outputs.append((sel.domain, sel.lines()))
    written: list[Path] = []
    for domain, files in outputs:
        folder = Path(out_dir) / domain
        folder.mkdir(parents=True, exist_ok=True)
        for fname, lines in files.items():
            path = folder / fname
            path.write_text("".join(line + "\n" for line in lines))
            written.append(path)
    return written


def _check_domain_names(cfg, domains: list[str] | None) -> None:
    """Raise ConfigError (a ValueError) naming the first of ``domains`` that ``cfg`` lacks."""
    names = [d.name for d in cfg.domains]
    for n in domains or []:
        if n not in names:
            raise ConfigError(f"no domain '{n}'; domains: {', '.join(names)}")
