"""Method comparisons: train a set of methods on the same data, splits, seed and budget, evaluate
every model on every domain, and write the paper-style table (rows = methods, columns = domains).

Method keys (the rows):
    single-<D>            supervised on domain D only (scored elsewhere through class mappings)
    finetune-<A>-to-<B>   single-<A>, then fine-tuned on B's labels with a new head
    joint                 Univ-basic: all domains, supervised only
    oracle                joint with every training image labeled: the ceiling of the semi-supervised rows
    univ-cross            + cross-domain entropy alignment
    univ-full             + within-domain entropy alignment
    adversarial           Hung et al. 2018, per domain, in one model
    souly                 Souly et al. 2017: a generator per domain, the model as (K+1)-way discriminator
    fixmatch              weak-to-strong pseudo-labels per domain (Sohn et al. 2020)
    unimatch              + a second strong view and feature perturbation (Yang et al. 2023)
    univ-match            unimatch + the entropy alignment (ours)
    cycada-<A>-to-<B>     single-<A>, then CyCADA (Hoffman et al. 2018): CycleGAN A->B, B's head on the translations

run_experiment(): plan_runs() -> refuse run folders made with other settings -> for each seed and
key: train (resume / skip when finished) ->
rows() -> results.md / .csv / .json / .png in the output folder. run_label_sweep() repeats the
comparison at several labeled-image counts per domain (``labels-<N>/`` each; the 'oracle' row, the
same run at every count, trains once in ``oracle/``) and writes label_efficiency.md / .csv / .json /
.png: mIoU against labels per domain, one line per method. With both a 'joint' and an 'oracle'
row, every other row gets the share of the gap between them it closes ("gap closed", the way
semi-supervised papers report it): (method - joint) / (oracle - joint).
"""
from __future__ import annotations

import csv
import io
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import Config, config_changes, load_config
from ..errors import ConfigError, TrainingStopped
from ..utils.files import atomic_write, atomic_write_json, atomic_write_text, check_writable_folder
from ..utils.table import markdown_table
from ..methods import METHODS
from .experiment_options import KEY_FORMS, KEYED_METHODS, ORACLE, PLAIN_METHODS
from .workdir import holds_run


@dataclass
class Run:
    """One training run of the comparison."""

    key: str
    seed: int
    overrides: list[str]
    depends_on: str | None = None  # key of a run whose checkpoint initialises this one
    work_dir: Path = field(default=Path())


def default_methods(cfg: Config) -> list[str]:
    """single-<D> for every domain, finetune from the first domain to each other, then the joint methods."""
    names = [d.name for d in cfg.domains]
    keys = [f"single-{d}" for d in names]
    keys += [f"finetune-{names[0]}-to-{b}" for b in names[1:]]
    return keys + [m for m in PLAIN_METHODS if m in METHODS]


def method_overrides(key: str, domain_names: list[str]) -> tuple[list[str], str | None]:
    """Config overrides for a method key and the key it depends on (fine-tuning, cycada)."""
    if key.startswith("single-"):
        d = key[len("single-"):]
        _check_domain(d, domain_names, key)
        return ["method.name=single", f"method.domains=[{d}]"], None
    m = re.fullmatch(r"(finetune|cycada)-(.+)-to-(.+)", key)
    if m:
        kind, a, b = m.groups()
        _check_domain(a, domain_names, key)
        _check_domain(b, domain_names, key)
        if kind == "cycada":
            cycada = [f"method.cycada.source={a}", f"method.cycada.target={b}"]
            return ["method.name=cycada", f"method.domains=[{b}]", *cycada], f"single-{a}"
        return ["method.name=single", f"method.domains=[{b}]"], f"single-{a}"
    if key == ORACLE:
        return ["method.name=joint", *(f"domains.{d}.labeled={{fraction: 1.0}}" for d in domain_names)], None
    if key in METHODS and key not in KEYED_METHODS:
        return [f"method.name={key}"], None
    raise ConfigError(
        f"unknown method key '{key}'; use {KEY_FORMS} or one of: "
        f"{', '.join(m for m in METHODS.names() if m not in KEYED_METHODS)} (domains: {', '.join(domain_names)})"
    )


def _check_domain(name: str, domain_names: list[str], key: str) -> None:
    if name not in domain_names:
        raise ConfigError(f"method key '{key}': no domain '{name}'; domains: {', '.join(domain_names)}")


def plan_runs(
    cfg: Config, out: Path, methods: list[str] | None = None, seeds: list[int] | None = None,
    shared: Mapping[str, Path] | None = None,
) -> list[Run]:
    """Every (method, seed) run in dependency order; fine-tuning pulls in its single-domain run. Runs
    of a key in ``shared`` live under that folder instead of ``out/runs/<key>``."""
    shared = shared or {}
    keys = list(methods or cfg.experiment.methods or default_methods(cfg))
    seeds = list(seeds or cfg.experiment.seeds or [cfg.seed])
    names = [d.name for d in cfg.domains]
    ordered: list[str] = []
    for key in keys:
        _, dep = method_overrides(key, names)
        if dep is not None and dep not in ordered:
            ordered.append(dep)
        if key not in ordered:
            ordered.append(key)
    runs = []
    for seed in seeds:
        for key in ordered:
            overrides, dep = method_overrides(key, names)
            folder = shared[key] if key in shared else out / "runs" / key
            runs.append(Run(key, seed, overrides + [f"seed={seed}"], dep, folder if len(seeds) == 1 else folder / f"seed{seed}"))
    return runs


def is_finished(run: Run, iters: int) -> bool:
    """A run is finished when its final evaluation exists for the full iteration budget."""
    path = run.work_dir / "eval_results.json"
    return path.is_file() and json.loads(path.read_text()).get("iteration") == iters


def check_reusable(run: Run, cfg: Config) -> None:
    """Refuse to reuse or resume a run folder whose saved config differs in a result-changing setting."""
    saved = run.work_dir / "config.yaml"
    if not saved.is_file():
        return
    try:
        previous = load_config(saved)
    except ConfigError as e:
        raise ConfigError(
            f"{run.work_dir} holds a run of '{run.key}' whose saved config no longer validates (written by another "
            f"univseg version?):\n{e}\nUse another --out, or delete {run.work_dir} to train it again.",
            path=saved,
        ) from None
    changes = config_changes(previous, cfg)
    if changes:
        raise ConfigError(
            f"{run.work_dir} holds a run of '{run.key}' (seed {run.seed}) made with other settings:\n  "
            + "\n  ".join(changes)
            + f"\nUse another --out for this variant, or delete {run.work_dir} to train it again."
        )


def run_experiment(
    config: str | Path,
    out: str | Path,
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
    shared: Mapping[str, Path] | None = None,
) -> list[dict[str, Any]]:
    """Train (or resume, or skip) every run, then write results.{md,csv,json,png}; returns the rows.
    ``shared``: run folders of keys kept outside ``out`` (see :func:`plan_runs`)."""
    from .trainer import Trainer

    out = Path(out)
    overrides = list(overrides or [])
    base = load_config(config, overrides)
    check_writable_folder(out, "--out")
    runs = plan_runs(base, out, methods, seeds, shared)
    by_key_seed = {(r.key, r.seed): r for r in runs}
    configs = []
    for run in runs:
        extra = [f"name={base.name}-{run.key}"]
        if run.depends_on is not None:
            extra.append(f"model.init_from={by_key_seed[(run.depends_on, run.seed)].work_dir / 'latest.pt'}")
        configs.append(load_config(config, overrides + run.overrides + extra))
        check_reusable(run, configs[-1])
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for run, cfg in zip(runs, configs):
        if is_finished(run, cfg.train.iters):
            print(f"== {run.key} (seed {run.seed}): finished earlier, results reused from {run.work_dir}")
            res = json.loads((run.work_dir / "eval_results.json").read_text())
        else:
            resume = holds_run(run.work_dir)  # latest.pt, or best.pt alone (stopped before the first checkpoint)
            verb = "resuming" if resume else "training"
            print(f"== {run.key} (seed {run.seed}): {verb} {cfg.train.iters} iterations on {', '.join(cfg.trained_domains)}")
            try:
                res = Trainer(cfg, run.work_dir, resume=resume, overwrite=not resume, progress=progress).run()
            except TrainingStopped as e:
                raise TrainingStopped(
                    f"run '{run.key}' (seed {run.seed}) stopped by {e.signal_name} after iteration {e.iteration}; "
                    f"checkpoint {e.path}. Run the same command again to resume it (finished runs are reused)",
                    iteration=e.iteration, signal_name=e.signal_name, path=e.path,
                ) from None
        results.setdefault(run.key, {})[run.seed] = {**res, "train_minutes": training_minutes(run.work_dir)}
    wanted = list(methods or base.experiment.methods or default_methods(base))
    rows = add_gap_closed(summarize({k: results[k] for k in wanted}, [d.name for d in base.domains]), [d.name for d in base.domains])
    write_results(out, rows, [d.name for d in base.domains], base)
    return rows


def training_minutes(work_dir: Path) -> float | None:
    """Minutes of training of a run: the sum of its logged step times (metrics.jsonl; evaluation and
    checkpoint writing excluded), None without a log."""
    path = work_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    seconds, last = 0.0, 0
    for line in path.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if "sec_per_iter" in record:
            seconds += record["sec_per_iter"] * (record["iter"] - last)
            last = record["iter"]
    return seconds / 60


def summarize(results: dict[str, dict[int, dict[str, Any]]], domain_names: list[str]) -> list[dict[str, Any]]:
    """One row per method: mIoU (%) per domain and their average, mean and std over seeds, and the
    mean training minutes of a run (``minutes``; None when a run has no log)."""
    rows = []
    for key, per_seed in results.items():
        samples: dict[str, list[float]] = {d: [] for d in [*domain_names, "average"]}
        for res in per_seed.values():
            mious = [res["domains"][d].get("mIoU") for d in domain_names]
            for d, v in zip(domain_names, mious):
                if v is not None:
                    samples[d].append(100 * v)
            if all(v is not None for v in mious):
                samples["average"].append(100 * sum(mious) / len(mious))
        row: dict[str, Any] = {"method": key, "seeds": sorted(per_seed)}
        for col, values in samples.items():
            row[col] = round(statistics.fmean(values), 2) if values else None
            if len(per_seed) > 1:
                row[f"{col}_std"] = round(statistics.stdev(values), 2) if len(values) > 1 else None
        minutes = [res.get("train_minutes") for res in per_seed.values()]
        row["minutes"] = round(statistics.fmean(minutes), 2) if minutes and None not in minutes else None
        rows.append(row)
    return rows


def add_gap_closed(rows: list[dict[str, Any]], domain_names: list[str]) -> list[dict[str, Any]]:
    """``rows`` with ``gap_closed_<column>`` (%) on every row but 'joint' and 'oracle' when both exist:
    100 * (row - joint) / (oracle - joint) per domain and for the average (None where the oracle does
    not lead joint or a value is missing)."""
    by_key = {r["method"]: r for r in rows}
    joint, oracle = by_key.get("joint"), by_key.get(ORACLE)
    if joint is None or oracle is None:
        return rows
    for row in rows:
        if row is joint or row is oracle:
            continue
        for col in [*domain_names, "average"]:
            values = (row[col], joint[col], oracle[col])
            gap = None if None in values else oracle[col] - joint[col]
            row[f"gap_closed_{col}"] = round(100 * (row[col] - joint[col]) / gap, 1) if gap and gap > 0 else None
    return rows


def mean_std_cell(row: dict[str, Any], col: str) -> str | float | None:
    """A table cell of a summary row: 'mean ± std' over seeds when the row has a std, else the value."""
    if f"{col}_std" in row and row[col] is not None and row[f"{col}_std"] is not None:
        return f"{row[col]:.2f} ± {row[f'{col}_std']:.2f}"
    return row[col]


def write_results(out: Path, rows: list[dict[str, Any]], domain_names: list[str], cfg: Config) -> None:
    """results.md (table), results.csv, results.json and results.png (bar chart) in ``out``."""
    headers = ["method", *domain_names, "average", "minutes"]
    cells = [[mean_std_cell(r, h) if h in r else None for h in headers] for r in rows]
    if any("gap_closed_average" in r for r in rows):
        headers.append("gap closed (average)")
        for r, line in zip(rows, cells):
            gap = r.get("gap_closed_average")
            line.append("" if "gap_closed_average" not in r else "n/a" if gap is None else f"{gap:+.1f}%")
    table = markdown_table(headers, cells)
    seeds = sorted({s for r in rows for s in r["seeds"]})
    note = (
        f"Config `{cfg.name}`; {cfg.train.iters} iterations per run; seeds {seeds}. mIoU (%) on each domain's "
        f"'{cfg.domains[0].val_split}' split in that domain's own label space (whole-image inference). Models "
        "without a head for a domain are scored through a class mapping into its label space. Minutes: training "
        "time of one run (sum of its logged step times; mean over seeds).\n"
    )
    if any("gap_closed_average" in r for r in rows):
        note += (
            "Gap closed: the share of the gap between 'joint' (labeled images only) and 'oracle' (every training "
            "image labeled) that a row closes, 100 * (row - joint) / (oracle - joint) on the average column.\n"
        )
    atomic_write_text(out / "results.md", f"# {cfg.name}: method comparison\n\n{note}\n{table}\n")
    atomic_write_json(out / "results.json", rows)
    buf = io.StringIO()
    values = [*domain_names, "average"]
    cols = ["method", *values, "minutes"] + [f"{c}_std" for c in values if any(f"{c}_std" in r for r in rows)] + [
        f"gap_closed_{c}" for c in values if any(f"gap_closed_{c}" in r for r in rows)
    ]
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())
    from ..viz.chart import bar_chart

    atomic_write(out / "results.png", lambda p: bar_chart(rows, [*domain_names, "average"], p))
    print(f"\n{table}\n\nresults.md, results.csv, results.json and results.png written to {out}")



def label_overrides(count: int, domain_names: Sequence[str]) -> list[str]:
    """Overrides labeling ``count`` images of every domain's train split."""
    return [f"domains.{d}.labeled={{count: {count}}}" for d in domain_names]


def run_label_sweep(
    config: str | Path,
    out: str | Path,
    labels: Sequence[int],
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """The comparison at every count of ``labels`` (labeled images per domain) in ``out/labels-<N>``,
    then label_efficiency.{md,csv,json,png} in ``out``; returns one row per (method, count)."""
    out, overrides = Path(out), list(overrides or [])
    if not labels or any(n < 1 for n in labels):
        raise ConfigError(f"--labels: give one or more counts of labeled images per domain (>= 1), got {list(labels)}",
                          key="experiment.labels")
    names = [d.name for d in load_config(config, overrides).domains]
    rows = []
    for n in sorted(set(labels)):
        print(f"=== {n} labeled images per domain -> {out / f'labels-{n}'}")
        for row in run_experiment(config, out / f"labels-{n}", methods, seeds, overrides + label_overrides(n, names),
                                  progress, shared={ORACLE: out / ORACLE}):
            rows.append({"labels": n, **row})
    write_label_efficiency(out, rows, names)
    return rows


def write_label_efficiency(out: Path, rows: list[dict[str, Any]], domain_names: list[str]) -> None:
    """label_efficiency.md (average mIoU per method and count), .csv / .json (every column) and .png."""
    counts = sorted({r["labels"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["method"], r["labels"]): r for r in rows}
    headers = ["method", *(f"{n} labels" for n in counts)]
    body = [[m, *(mean_std_cell(by[(m, n)], "average") if (m, n) in by else None for n in counts)] for m in methods]
    table = markdown_table(headers, body)
    note = ("Average over domains of the val mIoU (%) in each domain's own label space, mean ± std over seeds, "
            "against the number of labeled images per domain (the other training images unlabeled). 'oracle' "
            "labels every training image: the same run at every count.\n")
    atomic_write_text(out / "label_efficiency.md", f"# Label efficiency\n\n{note}\n{table}\n")
    atomic_write_json(out / "label_efficiency.json", rows)
    values = [*domain_names, "average"]
    cols = ["method", "labels", *values, *(f"{c}_std" for c in values if any(f"{c}_std" in r for r in rows))]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "label_efficiency.csv", buf.getvalue())
    from ..viz.chart import line_chart

    lines = {m: [(by[(m, n)]["average"], by[(m, n)].get("average_std")) if (m, n) in by else (None, None) for n in counts]
             for m in methods}
    atomic_write(out / "label_efficiency.png", lambda p: line_chart(lines, [str(n) for n in counts], p,
                                                                   "average mIoU (%)", "labeled images per domain"))
    print(f"\n{table}\n\nlabel_efficiency.md, .csv, .json and .png written to {out}")
