"""The dataset interface every adapter implements, file reading with clear errors, and folder listing.

Images are read as 8-bit RGB whatever their stored mode (:func:`image_to_rgb`: 16-bit greyscale is
scaled by its bit depth, value / 257); labels are read as the values they store, never rescaled
(:func:`read_label`). Folders are listed by :func:`list_files`, which follows symbolic links and
reports, instead of silently skipping, links that are broken or loop (:func:`report_bad_links`).
"""
from __future__ import annotations

import abc
import contextlib
import contextvars
import errno
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

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
    images = list_files(folder, lambda name: Path(name).suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise MissingFileError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {folder}", path=folder)
    return FileSegDataset(label_space, images, None, root=folder)


# ----------------------------------------------------------------------------------------------
# folders and links
# ----------------------------------------------------------------------------------------------

#: A link that cannot be followed, and why: ``(path, "a broken symbolic link to x.png")``.
BadLink = tuple[Path, str]

_BAD_LINKS: contextvars.ContextVar[list[BadLink] | None] = contextvars.ContextVar("univseg_bad_links", default=None)
_WARNED_FOLDERS: set[Path] = set()


def list_files(folder: Path, keep: Callable[[str], bool], recursive: bool = True) -> list[Path]:
    """Sorted files in ``folder`` whose names pass ``keep``; with ``recursive`` also those in its
    sub-folders. Symbolic links are followed, linked folders included. A link that is broken, loops
    on itself, or leads back to a folder above it is skipped and reported (:func:`report_bad_links`).
    """
    folder = Path(folder)
    files: list[Path] = []
    bad: list[BadLink] = []
    _walk(folder, keep, recursive, [folder.resolve()], files, bad)
    report_bad_links(folder, bad)
    return sorted(files)


def _walk(folder: Path, keep: Callable[[str], bool], recursive: bool, above: list[Path],
          files: list[Path], bad: list[BadLink]) -> None:
    """Add the kept files of ``folder`` to ``files`` (and its sub-folders' with ``recursive``), and the
    links that cannot be followed to ``bad``; ``above`` holds the real paths of the folders walked into."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise UnreadableFileError(f"cannot list folder {folder}: {e.strerror or e}", path=folder) from None
    for entry in entries:
        path = Path(entry.path)
        problem = link_problem(path) if entry.is_symlink() else None
        if problem is not None:
            if keep(entry.name) or (recursive and not Path(entry.name).suffix):  # an image, or maybe a folder
                bad.append((path, problem))
        elif entry.is_dir():
            if recursive:
                real = path.resolve()
                if real in above:
                    bad.append((path, f"a symbolic link loop: it leads back to {real}, a folder above it"))
                else:
                    _walk(path, keep, recursive, [*above, real], files, bad)
        elif entry.is_file() and keep(entry.name):
            files.append(path)


def link_problem(path: Path) -> str | None:
    """Why symbolic link ``path`` cannot be followed ("a broken symbolic link to x", "a symbolic link
    loop"), or None when it is no link or leads to something that exists."""
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return f"a broken symbolic link to {os.readlink(path)}"
        return f"a symbolic link that cannot be followed ({e.strerror})"
    return None


@contextlib.contextmanager
def collect_bad_links() -> Iterator[list[BadLink]]:
    """Within this block :func:`report_bad_links` adds the links to the yielded list instead of
    warning (``univseg data check`` reports each of them as a problem)."""
    found: list[BadLink] = []
    token = _BAD_LINKS.set(found)
    try:
        yield found
    finally:
        _BAD_LINKS.reset(token)


def report_bad_links(folder: Path, bad: Sequence[BadLink]) -> None:
    """Tell the user about links under ``folder`` that were skipped: one warning on stderr per folder
    and process (the first link and the count), or into the list of :func:`collect_bad_links`."""
    sink = _BAD_LINKS.get()
    if not bad or (sink is None and Path(folder) in _WARNED_FOLDERS):
        return
    if sink is not None:
        sink.extend(bad)
        return
    _WARNED_FOLDERS.add(Path(folder))
    path, problem = bad[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    print(f"warning: skipped {path}{more} under {folder}: {problem}; fix or remove the link "
          "('univseg data check' lists every such link)", file=sys.stderr, flush=True)


def files_or_folders(inputs: Iterable[str | Path], origin: str = "input") -> list[Path]:
    """Files named directly and images found (recursively, sorted) in the named folders; a path
    that does not exist raises MissingFileError naming ``origin`` (e.g. a command-line option)."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += list_files(p, lambda name: Path(name).suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise MissingFileError(f"{origin} not found: {p}{missing_reason(p)}; give image files or folders of images", path=p)
    return found


def missing_reason(path: Path) -> str:
    """`` (x is a broken symbolic link to y)`` when ``path`` is a link that cannot be followed, else ``""``."""
    problem = link_problem(Path(path))
    return "" if problem is None else f" ({path} is {problem})"


# ----------------------------------------------------------------------------------------------
# images and labels
# ----------------------------------------------------------------------------------------------

#: Modes read through PIL's own conversion to RGB (alpha, where present, is dropped, not composited).
_COLOUR_MODES = ("1", "L", "LA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr")
#: 16-bit greyscale modes (byte orders); their values are the stored 16-bit values.
_GREY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
#: Modes whose pixel values are raw label values as stored.
_LABEL_MODES = ("L", "P", "I") + _GREY16_MODES


def read_image(path: Path) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB (see :func:`image_to_rgb`); MissingFileError / UnreadableFileError name the file."""
    return decode_file(path, "image", lambda im: image_to_rgb(im, path))


def image_to_rgb(im: Image.Image, path: Path | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB pixels of a PIL image of any mode with a known brightness scale (a writable copy).

    Greyscale becomes three equal channels. Deeper greyscale is scaled by its bit depth to 0..255:
    ``round(v * 255 / (2**depth - 1))``, i.e. ``v / 257`` for 16-bit (``I;16``, and ``I`` images whose
    file declares 16 bits or fewer); float (``F``) images must hold 0..1 and are multiplied by 255.
    Palette images take their palette's colours; an alpha channel is dropped (not composited);
    CMYK and YCbCr are converted by PIL. Anything else (32-bit integers, floats outside 0..1, LAB,
    HSV) raises UnreadableFileError naming ``path``.
    """
    if im.mode in _GREY16_MODES or im.mode in ("I", "F"):
        return np.repeat(_grey_to_uint8(im, path)[..., None], 3, axis=2)
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")  # palette colours, with any transparency as alpha (dropped below)
    if im.mode in _COLOUR_MODES:
        return np.array(im.convert("RGB"))
    raise _uninterpretable(path, f"has pixel mode '{im.mode}', which univseg does not read as colours")


def _grey_to_uint8(im: Image.Image, path: Path | None) -> np.ndarray:
    """0..255 values of a 16-bit, 32-bit integer or float greyscale image, scaled by its depth (see :func:`image_to_rgb`)."""
    values = np.asarray(im)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if im.mode == "F":
        if not np.isfinite(values).all() or lo < 0 or hi > 1:
            raise _uninterpretable(path, f"holds floating-point pixels in [{lo:g}, {hi:g}]; only floats in 0..1 are read")
        return np.rint(values * 255).astype(np.uint8)
    depth = _bit_depth(im)
    top = 2**depth - 1
    if depth > 16 or lo < 0 or hi > top:
        raise _uninterpretable(path, f"holds {depth}-bit integer pixels in [{lo:g}, {hi:g}], which have no brightness "
                               "scale univseg can assume")
    return ((values.astype(np.int64) * 255 + top // 2) // top).astype(np.uint8)


def _bit_depth(im: Image.Image) -> int:
    """Bits per sample of a 16-bit or ``I`` (32-bit integer) greyscale image: what its file declares
    (TIFF's BitsPerSample), else 16 for the 16-bit modes and 32 for ``I``."""
    if im.mode in _GREY16_MODES:
        return 16
    declared = getattr(im, "tag_v2", {}).get(258)  # TIFF BitsPerSample
    if isinstance(declared, tuple):
        declared = declared[0] if declared else None
    return int(declared) if declared else 32


def _uninterpretable(path: Path | None, why: str) -> UnreadableFileError:
    """The error for an image (file ``path``, if any) whose pixels cannot be read as colours, because it ``why``."""
    where = f"image {path}" if path is not None else "the image"
    hint = "convert it to an 8-bit RGB or greyscale image"
    return UnreadableFileError(f"cannot read {where}: it {why}; {hint}", path=path, hint=hint)


def read_label(path: Path) -> np.ndarray:
    """Read a single-channel label image as an HxW integer array of its stored values, never rescaled:
    16-bit labels keep values above 255 (the label space accepts or reports them), 1-bit labels read
    as 0/1, an alpha channel is dropped. MissingLabelError / UnreadableFileError name the file."""

    def ids(im: Image.Image) -> np.ndarray:
        if im.mode in _LABEL_MODES:
            return np.asarray(im)
        if im.mode == "1":
            return np.asarray(im).astype(np.uint8)
        if im.mode in ("LA", "PA"):
            return np.asarray(im.getchannel(0))
        colour = im.mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
        what = f"is a colour ({im.mode}) image" if colour else f"has pixel mode '{im.mode}', not integer class ids"
        hint = "a label must be single-channel class ids (use a colour-coded dataset adapter, or convert it)"
        raise UnreadableFileError(f"label {path} {what}; {hint}", path=path, hint=hint)

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
        raise missing(f"{what} file not found: {path}{missing_reason(path)}", path=path) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        problem = link_problem(Path(path))
        hint = "fix or remove the link" if problem else "the file is corrupt or truncated, replace or remove it"
        raise UnreadableFileError(f"cannot read {what} {path}: {problem or e}; {hint}", path=path, hint=hint) from None


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
    "collect_bad_links", "decode_file", "image_folder_dataset", "image_to_rgb", "link_problem", "list_files",
    "missing_reason", "read_image", "read_label", "read_text_file", "report_bad_links",
]
