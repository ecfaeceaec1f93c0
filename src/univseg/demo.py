"""``univseg demo``: single-domain models vs the universal model on the built-in synthetic domains."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .config import load_config, resolve_config_path
from .data.domain import build_domains
from .engine.experiment import run_experiment
from .engine.predict_files import write_prediction
from .engine.predictor import Predictor

PREDICTIONS_PER_DOMAIN = 4


def run_demo(out: Path, iters: int | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Run the demo config's comparison (its ``experiment.methods``), then write predictions of the
    universal model on a few val images of every domain, in every label space."""
    out = Path(out)
    overrides = [f"train.iters={iters}"] if iters else []
    warmup = load_config(resolve_config_path("demo")).method.warmup_iters
    if iters is not None and iters <= warmup:
        print(f"note: univ-full's entropy alignment terms start at iteration {warmup} (method.warmup_iters); with "
              f"--iters {iters} they never start and univ-full trains like joint. Use --iters above {warmup} to see them")
    tic = time.perf_counter()
    rows = run_experiment(resolve_config_path("demo"), out, overrides=overrides, progress=progress)
    _write_predictions(out, out / "runs" / "univ-full")
    print(f"demo finished in {(time.perf_counter() - tic) / 60:.1f} min; predictions in {out / 'predictions'}")
    return rows


def _write_predictions(out: Path, run_dir: Path) -> None:
    predictor = Predictor.from_checkpoint(run_dir / "latest.pt", device="cpu")
    for domain in build_domains(load_config(run_dir / "config.yaml")):
        for i in range(min(PREDICTIONS_PER_DOMAIN, len(domain.val))):
            ds, j = domain.val.items[i]
            image = ds.load_image(j)
            for head, mask in predictor.predict_all(image).items():
                write_prediction(out / "predictions" / domain.name, ds.sample_id(j), head, image, mask, predictor)
    (out / "predictions" / "README.txt").write_text(
        "Each val image is segmented in every label space of the universal model:\n"
        "<image>_<head>.png holds class ids, <image>_<head>_overlay.png the colours over the image.\n"
        + json.dumps({h: ls.names for h, ls in predictor.label_spaces.items()}, indent=1)
        + "\n"
    )
