"""``univseg demo``: single-domain models vs the universal model on the built-in synthetic domains."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .config import load_config, resolve_config_path
from .engine.predict_files import write_prediction
from .engine.predictor import Predictor
from .engine.trainer import Trainer
from .utils.files import atomic_write_json, atomic_write_text
from .utils.table import markdown_table

PREDICTIONS_PER_DOMAIN = 4


def demo_runs(domain_names: list[str]) -> dict[str, list[str]]:
    """Method key -> config overrides: 'single-<domain>' for each domain, then 'univ-full' on all."""
    runs = {f"single-{d}": ["method.name=single", f"method.domains=[{d}]"] for d in domain_names}
    runs["univ-full"] = ["method.name=univ-full"]
    return runs


def results_rows(results: dict[str, dict[str, Any]], domain_names: list[str]) -> list[dict[str, Any]]:
    """One row per method: the mIoU (%) on each domain and their average."""
    rows = []
    for method, res in results.items():
        row: dict[str, Any] = {"method": method}
        for d in domain_names:
            miou = res["domains"][d].get("mIoU")
            row[d] = None if miou is None else round(100 * miou, 2)
        scored = [row[d] for d in domain_names if row[d] is not None]
        row["average"] = round(sum(scored) / len(scored), 2) if len(scored) == len(domain_names) else None
        rows.append(row)
    return rows


def run_demo(out: Path, iters: int | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Train every demo run, evaluate all on every domain, write results.md/json and predictions."""
    out = Path(out)
    base = resolve_config_path("demo")
    overrides = [f"train.iters={iters}"] if iters else []
    domain_names = [d.name for d in load_config(base, overrides).domains]
    results: dict[str, dict[str, Any]] = {}
    tic = time.perf_counter()
    for method, extra in demo_runs(domain_names).items():
        cfg = load_config(base, overrides + extra + [f"name=demo-{method}"])
        print(f"== {method}: training {cfg.train.iters} iterations on {', '.join(cfg.trained_domains)}")
        results[method] = Trainer(cfg, out / "runs" / method, progress=progress).run()
    rows = results_rows(results, domain_names)
    headers = ["method", *domain_names, "average"]
    table = markdown_table(headers, [[r[h] for h in headers] for r in rows])
    minutes = (time.perf_counter() - tic) / 60
    note = (
        "mIoU (%) on each domain's val split, in that domain's own label space. Single-domain models are "
        "scored on the other domain through the built-in class mapping between the two taxonomies.\n"
    )
    atomic_write_text(out / "results.md", f"# univseg demo\n\n{note}\n{table}\n\nTotal time: {minutes:.1f} min\n")
    atomic_write_json(out / "results.json", rows)
    _write_predictions(out, results)
    print(f"\n{table}\n\nresults.md, results.json, predictions/ and runs/ written to {out} ({minutes:.1f} min)")
    return rows


def _write_predictions(out: Path, results: dict[str, dict[str, Any]]) -> None:
    """Predictions of the universal model on a few val images of each domain, in every label space."""
    run_dir = out / "runs" / "univ-full"
    predictor = Predictor.from_checkpoint(run_dir / "latest.pt", device="cpu")
    cfg = load_config(run_dir / "config.yaml")
    from .data.domain import build_domains

    for domain in build_domains(cfg):
        for i in range(min(PREDICTIONS_PER_DOMAIN, len(domain.val))):
            ds, j = domain.val.items[i]
            image = ds.load_image(j)
            for head, mask in predictor.predict_all(image).items():
                write_prediction(out / "predictions" / domain.name, ds.sample_id(j), head, image, mask, predictor)
    (out / "predictions" / "README.txt").write_text(
        "Each val image is segmented in every label space of the universal model:\n"
        "<image>_<head>.png holds class ids, <image>_<head>_overlay.png the colours over the image.\n"
        + json.dumps({h: ls.names for h, ls in predictor.label_spaces.items()}, indent=1)
    )
