"""The dataset interface every adapter implements, and file reading with clear errors."""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .label_space import LabelSpace


class DataError(RuntimeError):
    """A data problem that names the offending file and says what to do."""


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

    def load_pair(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Image and label of sample ``i``; raises DataError when their sizes differ."""
        image = self.load_image(i)
        label = self.load_label(i)
        if label is not None and label.shape != image.shape[:2]:
            raise DataError(
                f"size mismatch in sample '{self.sample_id(i)}': image is {image.shape[1]}x{image.shape[0]} "
                f"but label is {label.shape[1]}x{label.shape[0]} (width x height); "
                "fix or remove this pair"
            )
        return image, label


class FileSegDataset(SegDataset):
    """Samples stored as image files with optional label files, in a fixed order."""

    def __init__(
        self,
        label_space: LabelSpace,
        images: Sequence[Path],
        labels: Sequence[Path] | None = None,
        root: Path | None = None,
    ) -> None:
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.label_space = label_space
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

    def load_image(self, i: int) -> np.ndarray:
        return read_image(self.images[i])

    def load_label(self, i: int) -> np.ndarray | None:
        if self.labels is None:
            return None
        path = self.labels[i]
        raw = read_label(path)
        bad = self.label_space.invalid_values(raw)
        if bad:
            raise DataError(
                f"{path}: label values {bad} are outside label space '{self.label_space.name}' "
                f"(valid raw values: {self.label_space.valid_raw_values()}); fix the file, or declare "
                "the values as void / map them in the dataset config"
            )
        return self.label_space.encode(raw)


def read_image(path: Path) -> np.ndarray:
    """Read an RGB image as HxWx3 uint8; raises DataError naming the file when it is unreadable."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.array(im.convert("RGB"))  # writable copy
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}; the file is corrupt or truncated, replace or remove it") from None


def read_label(path: Path) -> np.ndarray:
    """Read a single-channel label image as an HxW integer array; raises DataError naming the file."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGB", "RGBA"):
                raise DataError(
                    f"label {path} is a colour ({im.mode}) image; a label must be single-channel class ids "
                    "(use a colour-coded dataset adapter, or convert it)"
                )
            return np.asarray(im if im.mode in ("L", "P", "I", "I;16") else im.convert("L"))
    except FileNotFoundError:
        raise DataError(f"label file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read label {path}: {e}; the file is corrupt or truncated, replace or remove it") from None
