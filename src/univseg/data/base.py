"""The dataset interface every adapter implements, and file reading with clear errors."""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, MissingFileError, MissingLabelError, SizeMismatchError, UnreadableFileError
from .label_space import LabelSpace

#: File-name endings of the images that datasets are stored as (the adapters' default).
DATASET_IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
#: File-name endings read as images in a folder of arbitrary images (extra unlabeled folders, prediction inputs).
IMAGE_SUFFIXES: tuple[str, ...] = DATASET_IMAGE_SUFFIXES + (".bmp", ".tif", ".tiff", ".webp")


class SegDataset(abc.ABC):
    """One split of one dataset: an ordered list of samples sharing one label space.

    Images are HxWx3 uint8 RGB arrays; labels are HxW uint8 arrays of train ids with the
    label space's ignore index for void. Unlabeled splits return ``None`` labels.
    """

    label_space: LabelSpace

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def sample_id(self, i: int) -> str:
        """A stable, unique, file-name-safe identifier of sample ``i`` (e.g. relative path stem)."""

    @property
    @abc.abstractmethod
    def has_labels(self) -> bool: ...

    @abc.abstractmethod
    def load_image(self, i: int) -> np.ndarray: ...

    @abc.abstractmethod
    def load_label(self, i: int) -> np.ndarray | None: ...

    def image_file(self, i: int) -> Path | None:
        """The image file of sample ``i`` (None when samples are not files)."""
        return None

    def label_file(self, i: int) -> Path | None:
        """The label file of sample ``i`` (None when unlabeled or samples are not files)."""
        return None

    def load_pair(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Image and label of sample ``i``; raises SizeMismatchError when their sizes differ."""
        image = self.load_image(i)
        label = self.load_label(i)
        if label is not None:
            check_same_size(self, i, image, label)
        return image, label


def check_same_size(ds: SegDataset, i: int, image: np.ndarray, label: np.ndarray) -> None:
    """Raise SizeMismatchError (naming sample ``i`` of ``ds`` and its files) when ``label`` is not the size of ``image``."""
    if label.shape == image.shape[:2]:
        return
    img_file, lab_file = ds.image_file(i), ds.label_file(i)
    image_part = f"image {img_file}" if img_file is not None else "image"
    label_part = f"label {lab_file}" if lab_file is not None else "label"
    hint = "fix or remove this pair"
    raise SizeMismatchError(
        f"size mismatch in sample '{ds.sample_id(i)}': {image_part} is {image.shape[1]}x{image.shape[0]} but "
        f"{label_part} is {label.shape[1]}x{label.shape[0]} (width x height); {hint}",
        path=lab_file, values={"image": tuple(image.shape[:2]), "label": tuple(label.shape)}, hint=hint,
    )


class FileSegDataset(SegDataset):
    """Samples stored as image files with optional label files, in a fixed order.

    Label files are read with :meth:`read_raw` and decoded with ``raw_space`` (the raw encoding of
    these files, by default ``label_space``) into train ids of ``label_space``.
    """

    def __init__(
        self,
        label_space: LabelSpace,
        images: Sequence[Path],
        labels: Sequence[Path] | None = None,
        root: Path | None = None,
        raw_space: LabelSpace | None = None,
    ) -> None:
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.label_space = label_space
        self.raw_space = raw_space if raw_space is not None else label_space
        if self.raw_space.names != label_space.names or self.raw_space.ignore_index != label_space.ignore_index:
            raise ValueError(f"raw encoding '{self.raw_space.name}' does not have the classes of '{label_space.name}'")
        self.images = [Path(p) for p in images]
        self.labels = [Path(p) for p in labels] if labels is not None else None
        self.root = Path(root) if root is not None else None

    def __len__(self) -> int:
        return len(self.images)

    def sample_id(self, i: int) -> str:
        p = self.images[i]
        if self.root is not None:
            try:
                p = p.relative_to(self.root)
            except ValueError:
                pass
        return str(p.with_suffix("")).replace("/", "__")

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def image_file(self, i: int) -> Path:
        return self.images[i]

    def label_file(self, i: int) -> Path | None:
        return self.labels[i] if self.labels is not None else None

    def load_image(self, i: int) -> np.ndarray:
        return read_image(self.images[i])

    def read_raw(self, i: int) -> np.ndarray:
        """The raw label array of sample ``i`` (override for non-index encodings, e.g. colours)."""
        return read_label(self.labels[i])  # type: ignore[index]

    def load_label(self, i: int) -> np.ndarray | None:
        """Train ids of sample ``i``; LabelValueError (naming the file) for values outside ``raw_space``."""
        if self.labels is None:
            return None
        return self.raw_space.encode(self.read_raw(i), source=self.labels[i])


def image_folder_dataset(folder: Path, label_space: LabelSpace) -> FileSegDataset:
    """All images under ``folder`` (recursive, sorted) as an unlabeled dataset."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"unlabeled image folder not found: {folder}", path=folder)
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise MissingFileError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {folder}", path=folder)
    return FileSegDataset(label_space, images, None, root=folder)


def read_image(path: Path) -> np.ndarray:
    """Read an RGB image as HxWx3 uint8; MissingFileError / UnreadableFileError name the file."""
    return decode_file(path, "image", lambda im: np.array(im.convert("RGB")))  # writable copy


def read_label(path: Path) -> np.ndarray:
    """Read a single-channel label image as an HxW integer array; MissingLabelError / UnreadableFileError name the file."""

    def ids(im: Image.Image) -> np.ndarray:
        if im.mode in ("RGB", "RGBA"):
            raise UnreadableFileError(
                f"label {path} is a colour ({im.mode}) image; a label must be single-channel class ids "
                "(use a colour-coded dataset adapter, or convert it)",
                path=path,
            )
        return np.asarray(im if im.mode in ("L", "P", "I", "I;16") else im.convert("L"))

    return decode_file(path, "label", ids)


def decode_file(path: Path, what: str, convert: Callable[[Image.Image], np.ndarray]) -> np.ndarray:
    """Open image file ``path`` (an ``"image"`` or a ``"label"``) and return ``convert(image)``.

    Raises MissingLabelError (labels) or MissingFileError (images) when the file does not exist,
    UnreadableFileError when it cannot be decoded; each names the file in ``path`` and the message.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return convert(im)
    except FileNotFoundError:
        missing = MissingLabelError if what == "label" else MissingFileError
        raise missing(f"{what} file not found: {path}", path=path) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        hint = "the file is corrupt or truncated, replace or remove it"
        raise UnreadableFileError(f"cannot read {what} {path}: {e}; {hint}", path=path, hint=hint) from None


def read_text_file(path: Path, what: str) -> str:
    """The text of ``what`` (e.g. ``"split file"``) at ``path``; MissingFileError / UnreadableFileError name it."""
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise MissingFileError(f"{what} not found: {path}", path=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UnreadableFileError(f"cannot read {what} {path}: {e}", path=path) from None


__all__ = [
    "DATASET_IMAGE_SUFFIXES", "IMAGE_SUFFIXES", "DataError", "FileSegDataset", "SegDataset", "check_same_size",
    "decode_file", "image_folder_dataset", "read_image", "read_label", "read_text_file",
]
