"""Batch prediction over files, folders and videos: class-id PNGs and colour overlays.

Folders are searched recursively for images; video files (VIDEO_SUFFIXES, decoded with PyAV, the
optional extra ``univseg[video]``) give one prediction per frame in a folder named after the video.

Every PNG is written atomically (a temporary file in the output folder, then a rename), so a full
disk or a crash never leaves a truncated prediction; a failed write stops with a WriteError
naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..data.base import IMAGE_SUFFIXES, files_or_folders, read_image
from ..errors import ConfigError, DataError, MissingFileError, UnreadableFileError
from ..utils.files import atomic_write, check_writable_folder
from ..viz.panel import overlay_with_legend
from .export import open_predictor
from .inference import InferenceSettings
from .predictor import Predictor

#: File-name endings read as videos when named as inputs.
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def collect_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files named directly (images or videos) and images found (recursively, sorted) in the given folders,
    each file once."""
    found = list({p.resolve(): p for p in files_or_folders(inputs)}.values())
    if not found:
        raise MissingFileError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    return found


def is_video(path: Path) -> bool:
    """Whether ``path`` is read as a video (by its suffix: VIDEO_SUFFIXES)."""
    return path.suffix.lower() in VIDEO_SUFFIXES


def _import_av(path: Path):
    """The PyAV module; DataError saying how to install it when it is missing."""
    try:
        import av
    except ImportError:
        hint = 'pip install "univseg[video]"'
        raise DataError(f"{path}: reading videos needs PyAV, which is not installed; {hint}", path=path, hint=hint) from None
    return av


def video_frame_count(path: Path) -> int | None:
    """Number of frames the video's header announces (None when it does not say)."""
    av = _import_av(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise _unreadable_video(path, "it has no video stream")
            return container.streams.video[0].frames or None
    except av.error.FFmpegError as e:
        raise _unreadable_video(path, str(e)) from None


def video_frames(path: Path) -> Iterator[np.ndarray]:
    """The frames of a video file as HxWx3 uint8 RGB arrays, in order (decoded with PyAV)."""
    av = _import_av(path)
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as e:
        raise _unreadable_video(path, str(e)) from None


def _unreadable_video(path: Path, reason: str) -> UnreadableFileError:
    """The error for a video file that cannot be decoded, naming the file and the reason."""
    return UnreadableFileError(f"cannot read video {path}: {reason}; check that the file is complete and plays", path=path)


def frames_of(paths: list[Path], stems: list[str]) -> Iterator[tuple[Path, str, np.ndarray]]:
    """``(sub-folder, output stem, image)`` of every input: an image is ``('.', stem, pixels)``, the
    k-th frame of a video ``(<video stem>, 'frame_<k:06d>', pixels)``."""
    for path, stem in zip(paths, stems):
        if is_video(path):
            frames = 0
            for frames, frame in enumerate(video_frames(path), 1):
                yield Path(stem), f"frame_{frames - 1:06d}", frame
            if not frames:
                raise MissingFileError(f"video {path} has no frames: nothing to predict; give a video with frames", path=path)
        else:
            yield Path("."), stem, read_image(path)


def count_frames(paths: list[Path]) -> int | None:
    """Images plus video frames to predict (None when a video does not announce its frame count)."""
    counts = [video_frame_count(p) if is_video(p) else 1 for p in paths]
    return None if None in counts else sum(counts)


def check_output_folder(out_dir: Path, inputs: Iterable[str | Path]) -> None:
    """ConfigError when ``out_dir`` (``--out``) lies inside an input folder (a later run would read the
    predictions as input); WriteError when it cannot be written (a file in its place, no permission)."""
    out = out_dir.resolve()
    for folder in (Path(p) for p in inputs):
        if folder.is_dir() and out.is_relative_to(folder.resolve()):
            raise ConfigError(
                f"--out {out_dir} is inside the input folder {folder}: a later run would read the predictions as "
                f"input images; choose an --out outside {folder}", key="--out", path=out_dir,
            )
    check_writable_folder(out_dir, "--out")


def write_png(path: Path, pixels: np.ndarray) -> None:
    """Write ``pixels`` as a PNG atomically; WriteError naming ``path`` when it cannot be written."""
    atomic_write(path, lambda tmp: Image.fromarray(pixels).save(tmp, format="PNG"), "prediction")


def write_prediction(
    out_dir: Path, stem: str, head: str, image: np.ndarray, mask: np.ndarray, predictor: Predictor
) -> tuple[Path, Path]:
    """``<stem>_<head>.png`` (class ids) and ``<stem>_<head>_overlay.png`` (the colours over the image at its
    resolution, the legend of the classes shown underneath) under ``out_dir``; returns both paths."""
    ids, colours = out_dir / f"{stem}_{head}.png", out_dir / f"{stem}_{head}_overlay.png"
    write_png(ids, mask)
    write_png(colours, overlay_with_legend(image, mask, predictor.label_spaces[head]))
    return ids, colours


def predict_files(
    checkpoint: str | Path,
    inputs: Iterable[str | Path],
    out_dir: Path,
    label_space: str | None = None,
    device: str = "auto",
    progress: bool = True,
    inference: InferenceSettings = InferenceSettings(),
    runtime: str = "torch",
) -> int:
    """Predict every input image and video frame in one or all (``'all'``) label spaces, as
    ``inference`` says, with the model run by ``runtime`` (torch: ``checkpoint`` is a univseg
    checkpoint; onnxruntime / torchscript: a file written by ``univseg export``); returns the number of files written. A video's frames go to
    ``out_dir/<video stem>/frame_000000_<head>.png`` (and ``_overlay.png``), and so on; inputs whose
    stems are equal get names that keep their extension or folder (:func:`output_stems`)."""
    inputs = list(inputs)
    check_output_folder(out_dir, inputs)
    predictor = open_predictor(checkpoint, runtime, device, inference)
    heads = list(predictor.label_spaces) if label_space == "all" else [predictor.resolve(label_space)]
    paths = collect_inputs(inputs)
    total = count_frames(paths)
    written: set[Path] = set()
    items = frames_of(paths, output_stems(paths))
    for sub, stem, image in tqdm(items, total=total, desc="predict", unit="image", disable=not progress):
        masks = predictor.predict_all(image) if len(heads) > 1 else {heads[0]: predictor.predict(image, heads[0])}
        for head in heads:
            written.update(write_prediction(out_dir / sub, stem, head, image, masks[head], predictor))
    return len(written)


def output_stems(paths: list[Path]) -> list[str]:
    """The output name stem of each input (distinct files get distinct stems): its stem when no other
    input shares it; else its file name with the extension (``x.jpg``, ``x.png``) when that is unique
    among them; else its path below the folder the inputs sharing its name have in common, joined
    with ``__`` (``a__x.png``, ``b__x.png``)."""
    out = []
    for p in paths:
        group = [q for q in paths if q.stem == p.stem]
        if len(group) == 1:
            out.append(p.stem)
        elif [q.name for q in group].count(p.name) == 1:
            out.append(p.name)
        else:
            same = [q.resolve() for q in group if q.name == p.name]
            out.append("__".join(p.resolve().relative_to(os.path.commonpath(same)).parts))
    return out
