"""Batch prediction over files and folders: class-id PNGs and colour overlays."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..data.base import read_image
from ..data.base import IMAGE_SUFFIXES
from ..errors import MissingFileError
from ..viz import overlay
from .predictor import Predictor


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in the given folders."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise MissingFileError(f"input not found: {p}", path=p)
    if not found:
        raise MissingFileError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    return found


def write_prediction(out_dir: Path, stem: str, head: str, image: np.ndarray, mask: np.ndarray, predictor: Predictor) -> None:
    """``<stem>_<head>.png`` (class ids) and ``<stem>_<head>_overlay.png`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(out_dir / f"{stem}_{head}.png")
    Image.fromarray(overlay(image, mask, predictor.label_spaces[head])).save(out_dir / f"{stem}_{head}_overlay.png")


def predict_files(
    checkpoint: str | Path,
    inputs: Iterable[str | Path],
    out_dir: Path,
    label_space: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> int:
    """Predict every input image in one or all (``'all'``) label spaces; returns the number of files written."""
    predictor = Predictor.from_checkpoint(checkpoint, device=device)
    heads = list(predictor.label_spaces) if label_space == "all" else [predictor.resolve(label_space)]
    images = collect_images(inputs)
    stems = _unique_stems(images)
    written = 0
    for path, stem in tqdm(list(zip(images, stems)), desc="predict", disable=not progress):
        image = read_image(path)
        masks = predictor.predict_all(image) if len(heads) > 1 else {heads[0]: predictor.predict(image, heads[0])}
        for head in heads:
            write_prediction(out_dir, stem, head, image, masks[head], predictor)
            written += 2
    return written


def _unique_stems(paths: list[Path]) -> list[str]:
    """File stems, made unique with the parent folder name where two images share a stem."""
    stems = [p.stem for p in paths]
    return [f"{p.parent.name}__{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]
