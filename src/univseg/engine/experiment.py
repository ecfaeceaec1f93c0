"""Method comparisons: train a set of methods on the same data, splits, seed and budget, evaluate
every model on every domain, and write the paper-style table (rows = methods, columns = domains).

Method keys (the rows):
    single-<D>            supervised on domain D only (scored elsewhere through class mappings)
    finetune-<A>-to-<B>   single-<A>, then fine-tuned on B's labels with a new head
    joint                 Univ-basic: all domains, supervised only
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
rows() -> results.md / .csv / .json / .png in the output folder.
"""
from __future__ import annotations

import csv
import io
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, config_changes, load_config
from ..errors import ConfigError, TrainingStopped
from ..utils.files import atomic_write, atomic_write_json, atomic_write_text, check_writable_folder
from ..utils.table import markdown_table
from ..methods import METHODS
from .experiment_options import KEY_FORMS, KEYED_METHODS, PLAIN_METHODS
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
    if key in METHODS and key not in KEYED_METHODS:
        return [f"method.name={key}"], None
    raise ConfigError(
        f"unknown method key '{key}'; use {KEY_FORMS} or one of: "
        f"{', '.join(m for m in METHODS.names() if m not in KEYED_METHODS)} (domains: {', '.join(domain_names)})"
    )


def _check_domain(name: str, domain_names: list[str], key: str) -> None:
    if name not in domain_names:
        raise ConfigError(f"method key '{key}': no domain '{name}'; domains: {', '.join(domain_names)}")


def plan_runs(cfg: Config, out: Path, methods: list[str] | None = None, seeds: list[int] | None = None) -> list[Run]:
    """Every (method, seed) run in dependency order; fine-tuning pulls in its single-domain run."""
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
            sub = key if len(seeds) == 1 else f"{key}/seed{seed}"
            runs.append(Run(key, seed, overrides + [f"seed={seed}"], dep, out / "runs" / sub))
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
) -> list[dict[str, Any]]:
    """Train (or resume, or skip) every run, then write results.{md,csv,json,png}; returns the rows."""
    from .trainer import Trainer

    out = Path(out)
    overrides = list(overrides or [])
    base = load_config(config, overrides)
    check_writable_folder(out, "--out")
    runs = plan_runs(base, out, methods, seeds)
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
        results.setdefault(run.key, {})[run.seed] = res
    wanted = list(methods or base.experiment.methods or default_methods(base))
    rows = summarize({k: results[k] for k in wanted}, [d.name for d in base.domains])
    write_results(out, rows, [d.name for d in base.domains], base)
    return rows


def summarize(results: dict[str, dict[int, dict[str, Any]]], domain_names: list[str]) -> list[dict[str, Any]]:
    """One row per method: mIoU (%) per domain and their average; mean and std over seeds."""
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
        rows.append(row)
    return rows


def mean_std_cell(row: dict[str, Any], col: str) -> str | float | None:
    """A table cell of a summary row: 'mean ± std' over seeds when the row has a std, else the value."""
    if f"{col}_std" in row and row[col] is not None and row[f"{col}_std"] is not None:
        return f"{row[col]:.2f} ± {row[f'{col}_std']:.2f}"
    return row[col]


def write_results(out: Path, rows: list[dict[str, Any]], domain_names: list[str], cfg: Config) -> None:
    """results.md (table), results.csv, results.json and results.png (bar chart) in ``out``."""
    headers = ["method", *domain_names, "average"]
    table = markdown_table(headers, [[mean_std_cell(r, h) for h in headers] for r in rows])
    seeds = sorted({s for r in rows for s in r["seeds"]})
    note = (
        f"Config `{cfg.name}`; {cfg.train.iters} iterations per run; seeds {seeds}. mIoU (%) on each domain's "
        f"'{cfg.domains[0].val_split}' split in that domain's own label space (whole-image inference). Models "
        "without a head for a domain are scored through a class mapping into its label space.\n"
    )
    atomic_write_text(out / "results.md", f"# {cfg.name}: method comparison\n\n{note}\n{table}\n")
    atomic_write_json(out / "results.json", rows)
    buf = io.StringIO()
    cols = ["method", *domain_names, "average"] + [f"{c}_std" for c in [*domain_names, "average"] if any(f"{c}_std" in r for r in rows)]
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())
    from ..viz.chart import bar_chart

    atomic_write(out / "results.png", lambda p: bar_chart(rows, [*domain_names, "average"], p))
    print(f"\n{table}\n\nresults.md, results.csv, results.json and results.png written to {out}")

