"""How much do shared BatchNorm statistics cost each domain? A diagnostic for finished runs.

    python benchmarks/bn_stats_diagnostic.py RUN_DIR [RUN_DIR ...] [--json OUT.json]

A universal model's BatchNorm running statistics average over the batches of every domain it was
trained on. For each run folder (holding config.yaml and latest.pt) and each domain with its own
head, this prints val mIoU (%) with the stored statistics and with statistics re-estimated from
that domain's labeled training images alone (evaluation transforms, a cumulative average over one
pass, no weights changed). The gap is what per-domain normalisation statistics would recover.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from univseg.config import load_config
from univseg.data.domain import Domain, eval_loader, iter_images
from univseg.engine.evaluator import choose_head, evaluate_domain
from univseg.engine.trainer import Trainer
from univseg.utils.table import markdown_table


@torch.no_grad()
def reestimate_batchnorm(model: torch.nn.Module, domain: Domain, batch_size: int) -> None:
    """Replace every BatchNorm layer's running statistics by their average over ``domain``'s labeled images."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in layers]
    device = next(model.parameters()).device
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()
    for batch in eval_loader(domain.centroid_view, batch_size):
        for img, _ in iter_images(batch):
            model.features(img.to(device))
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    model.eval()


def diagnose(run: Path) -> list[dict]:
    """Rows (run, domain, stored, per-domain) for every domain of ``run`` that has its own head."""
    cfg = load_config(run / "config.yaml")
    trainer = Trainer(cfg, run, resume=True, progress=False)
    model = trainer.model.eval()
    stored = {k: v.clone() for k, v in model.state_dict().items()}
    rows = []
    for name in trainer.heads:
        domain = trainer.domains[name]
        choice = choose_head(trainer.heads, name, domain.label_space)
        model.load_state_dict(stored)
        before = evaluate_domain(model, domain, choice, cfg.eval.batch_size, progress=False).miou()
        reestimate_batchnorm(model, domain, cfg.eval.batch_size)
        after = evaluate_domain(model, domain, choice, cfg.eval.batch_size, progress=False).miou()
        rows.append({"run": str(run), "domain": name, "stored_bn": round(100 * before, 2), "per_domain_bn": round(100 * after, 2)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (config.yaml + latest.pt)")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args()
    rows = [row for run in args.runs for row in diagnose(run)]
    table = [[r["run"], r["domain"], f"{r['stored_bn']:.2f}", f"{r['per_domain_bn']:.2f}", f"{r['per_domain_bn'] - r['stored_bn']:+.2f}"] for r in rows]
    print(markdown_table(["run", "domain", "mIoU stored BN", "mIoU per-domain BN", "gain"], table))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
