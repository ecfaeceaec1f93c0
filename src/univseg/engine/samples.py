"""Sample predictions on the first val images of each domain, shared by ``univseg eval --save-samples``
(one "image | ground truth | prediction per head" PNG panel per image) and the report's sample table."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..data.domain import Domain
from ..viz.panel import sample_panel
from .predict_files import write_png
from .predictor import Predictor


@dataclass(frozen=True)
class Sample:
    """One val image (HxWx3 uint8, after the domain's val transforms), its label (train ids) and the
    model's prediction in every label space (head -> HxW class ids)."""

    sample_id: str
    image: np.ndarray
    label: np.ndarray
    predictions: dict[str, np.ndarray]


def val_samples(predictor: Predictor, domain: Domain, count: int) -> Iterator[Sample]:
    """The first ``count`` val images of ``domain`` with the predictions of every head of ``predictor``."""
    for i in range(min(count, len(domain.val))):
        item = domain.val[i]
        image = item["image"].permute(1, 2, 0).clamp(0, 255).round().byte().numpy()
        yield Sample(domain.val.sample_id(i), image, item["label"].numpy(), predictor.predict_all(image))


def save_sample_panels(predictor: Predictor, domains: Iterable[Domain], count: int, out_dir: Path,
                       width: int | None = None) -> list[Path]:
    """Write ``out_dir/<domain>/<sample id>.png``: the panel of each of the first ``count`` val images of
    every domain (tiles ``width`` pixels wide, default the image's); returns the files written."""
    written = []
    for domain in domains:
        for sample in val_samples(predictor, domain, count):
            predictions = {head: (mask, predictor.label_spaces[head]) for head, mask in sample.predictions.items()}
            panel = sample_panel(sample.image, sample.label, domain.label_space, predictions, width)
            path = out_dir / domain.name / f"{sample.sample_id.replace('/', '_')}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_png(path, panel)
            written.append(path)
    return written
