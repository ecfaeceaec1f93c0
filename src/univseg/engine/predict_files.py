"""Batch prediction over files and folders: class-id PNGs and colour overlays.

Every PNG is written atomically (a temporary file in the output folder, then a rename), so a full
disk or a crash never leaves a truncated prediction; a failed write stops with a WriteError
naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..data.base import IMAGE_SUFFIXES, list_files, missing_reason, read_image
from ..errors import ConfigError, MissingFileError
from ..utils.files import atomic_write
from ..viz import overlay
from .predictor import Predictor


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in the given folders."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += list_files(p, lambda name: Path(name).suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise MissingFileError(f"input not found: {p}{missing_reason(p)}", path=p)
    if not found:
        raise MissingFileError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    return found


def check_output_folder(out_dir: Path) -> None:
    """ConfigError when ``out_dir`` (``--out``), or the nearest existing path above it, is a file."""
    existing = next((p for p in (out_dir, *out_dir.parents) if p.exists()), None)
    if existing is None or existing.is_dir():
        return
    where = f"--out {out_dir} is a file" if existing == out_dir else f"--out {out_dir}: {existing} is a file"
    raise ConfigError(
        f"{where}; give a folder for the predictions (it is created when missing)", key="--out", path=existing
    )


def write_png(path: Path, pixels: np.ndarray) -> None:
    """Write ``pixels`` as a PNG atomically; WriteError naming ``path`` when it cannot be written."""
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"), "prediction")


def write_prediction(out_dir: Path, stem: str, head: str, image: np.ndarray, mask: np.ndarray, predictor: Predictor) -> None:
    """``<stem>_<head>.png`` (class ids) and ``<stem>_<head>_overlay.png`` under ``out_dir``."""
    write_png(out_dir / f"{stem}_{head}.png", mask)
    write_png(out_dir / f"{stem}_{head}_overlay.png", overlay(image, mask, predictor.label_spaces[head]))


def predict_files(
    checkpoint: str | Path,
    inputs: Iterable[str | Path],
    out_dir: Path,
    label_space: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> int:
    """Predict every input image in one or all (``'all'``) label spaces; returns the number of files written."""
    check_output_folder(out_dir)
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
