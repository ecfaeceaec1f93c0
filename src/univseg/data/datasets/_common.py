"""Shared building blocks of the dataset adapters: file discovery, label pairing, raw decoding.

Every adapter follows the same recipe:

1. check the dataset root and the split folder exist (:func:`require_dir`, which says what layout
   is expected when they do not);
2. list the split's images, sorted (:func:`find_images`);
3. derive each image's label path with the dataset's pairing rule and check it exists
   (:func:`pair_labels`, which names the image and the expected label when it does not);
4. return a :class:`NativeSegDataset`, which decodes label files with the file's own raw
   encoding (``raw_space``) into the train ids of the dataset's label space.
"""
from __future__ import annotations

import contextlib
import contextvars
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from pydantic import Field

from ...errors import DataError, LabelValueError, MissingFileError, MissingLabelError
from ..base import DATASET_IMAGE_SUFFIXES, FileSegDataset, decode_file, list_files, missing_reason, read_text_file
from ..label_space import ClassInfo, LabelSpace, default_palette
from ..registry import DatasetParams


class RootParams(DatasetParams):
    """Parameters shared by every native-layout adapter."""

    root: Path = Field(description="dataset root folder, in the dataset's official layout")


# ----------------------------------------------------------------------------------------------
# label spaces
# ----------------------------------------------------------------------------------------------


def recode(space: LabelSpace, raw_ids: Sequence[Sequence[int]] | None, void_ids: Iterable[int]) -> LabelSpace:
    """The same classes (name, colours, order) under another raw file encoding.

    ``raw_ids[k]`` lists the raw values meaning class ``k`` (``None``: raw value == train id).
    Used where one dataset family stores labels in several encodings (e.g. Cityscapes labelIds
    vs. trainIds, IDD level-3 ids read as level-1 classes).
    """
    classes = tuple(
        ClassInfo(c.name, c.color, tuple(raw_ids[k]) if raw_ids is not None else ())
        for k, c in enumerate(space.classes)
    )
    return LabelSpace(name=space.name, classes=classes, ignore_index=space.ignore_index, void_ids=tuple(void_ids))


def offset_space(name: str, names: Sequence[str], colors: Sequence[Sequence[int]] | None = None) -> LabelSpace:
    """Label space whose files store class ``k`` as ``k + 1`` and void as 0 (SUN RGB-D, NYU, ADE20K)."""
    colors = colors if colors is not None else default_palette(len(names))
    if len(colors) != len(names):
        raise ValueError(f"label space '{name}': {len(colors)} colours for {len(names)} classes")
    return LabelSpace(
        name=name,
        classes=tuple(ClassInfo(n, tuple(int(v) for v in c), (k + 1,)) for k, (n, c) in enumerate(zip(names, colors))),
        void_ids=(0,),
    )


# ----------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------


class NativeSegDataset(FileSegDataset):
    """Image/label files of a dataset adapter, whose sample ids must be unique within the split.

    ``label_space`` is the dataset family's label space (the same object for every dataset and
    split of the family, whatever the file encoding); ``raw_space`` has the same classes and says
    which raw values of *these* label files mean which class (defaults to ``label_space``).
    Labels come back as train ids with void = ``label_space.ignore_index``.
    """

    def __init__(
        self,
        label_space: LabelSpace,
        images: Sequence[Path],
        labels: Sequence[Path] | None = None,
        root: Path | None = None,
        raw_space: LabelSpace | None = None,
    ) -> None:
        super().__init__(label_space, images, labels, root, raw_space)
        check_unique_ids(self)


class ColorCodedSegDataset(NativeSegDataset):
    """Labels stored as RGB colour images: each colour of ``colors`` is raw value = its row index."""

    def __init__(self, *args, colors: Sequence[Sequence[int]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.colors = np.asarray(colors, dtype=np.int64)
        self._codes = (self.colors[:, 0] << 16) | (self.colors[:, 1] << 8) | self.colors[:, 2]
        if len(set(self._codes.tolist())) != len(self._codes):
            raise ValueError("colour table repeats a colour")
        self._order = np.argsort(self._codes)

    def read_raw(self, i: int) -> np.ndarray:
        """Row index in ``colors`` of every pixel; LabelValueError (colour -> pixel count) for unknown colours."""
        path = self.labels[i]  # type: ignore[index]
        rgb = decode_file(path, "label", lambda im: np.asarray(im.convert("RGB"), dtype=np.int64))
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        sorted_codes = self._codes[self._order]
        pos = np.clip(np.searchsorted(sorted_codes, code), 0, len(sorted_codes) - 1)
        known = sorted_codes[pos] == code
        if not known.all():
            unknown, counts = np.unique(code[~known], return_counts=True)
            pixels = {((int(c) >> 16) & 255, (int(c) >> 8) & 255, int(c) & 255): int(n) for c, n in zip(unknown, counts)}
            hint = "the file is not a colour-coded label of this dataset (or was saved lossily), fix or remove it"
            raise LabelValueError(
                f"{path}: colours {list(pixels)[:10]} are not in the colour table of label space "
                f"'{self.label_space.name}'; {hint}",
                path=path, values=pixels, hint=hint,
            )
        return self._order[pos].astype(np.int32)


def check_unique_ids(ds: FileSegDataset) -> None:
    """Raise DataError when two samples of a split would get the same sample id."""
    seen: dict[str, Path] = {}
    for i, p in enumerate(ds.images):
        sid = ds.sample_id(i)
        if sid in seen:
            raise DataError(
                f"images {seen[sid]} and {p} get the same sample id '{sid}'; rename one of them "
                "(sample ids must be unique within a split)",
                path=p, hint="rename one of them",
            )
        seen[sid] = p


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------


def require_dir(path: Path, what: str, layout: str) -> Path:
    """Return ``path`` when it is a folder; otherwise raise DataError naming it and the expected layout."""
    path = Path(path)
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "does not exist"
        raise MissingFileError(f"{what} {path} {state}; expected layout:\n{layout}", path=path, hint=layout)
    return path


def require_file(path: Path, what: str, layout: str) -> Path:
    """Return ``path`` when it is a file; otherwise raise MissingFileError naming it and the expected layout."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} {path} does not exist; expected layout:\n{layout}", path=path, hint=layout)
    return path


def require_listed_images(images: Sequence[Path], list_file: Path, base: Path, layout: str) -> None:
    """Raise MissingFileError (naming the list file and the first missing image) unless every image exists."""
    missing = [p for p in images if not p.is_file()]
    if missing:
        raise MissingFileError(
            f"{list_file} names {len(missing)} image(s) that do not exist, first: {missing[0]}{missing_reason(missing[0])}; "
            f"paths are relative to {base}; expected layout:\n{layout}",
            path=missing[0], hint=layout,
        )


def matching_suffix(name: str, suffixes: Sequence[str]) -> str | None:
    """The longest of ``suffixes`` that ``name`` ends with (case-insensitive), else None."""
    low = name.lower()
    hits = [s for s in suffixes if low.endswith(s.lower())]
    return max(hits, key=len) if hits else None


def find_images(
    folder: Path,
    suffixes: Sequence[str] = DATASET_IMAGE_SUFFIXES,
    recursive: bool = False,
    layout: str = "",
) -> list[Path]:
    """Sorted image files in ``folder`` whose names end with one of ``suffixes`` (case-insensitive).

    Hidden files are left out. Symbolic links are followed; links that are broken or loop are
    skipped with a warning (see :func:`~univseg.data.base.list_files`). Raises MissingFileError
    when nothing matches, naming the folder, the patterns and the layout.
    """
    files = list_files(
        folder, lambda name: not name.startswith(".") and matching_suffix(name, suffixes) is not None, recursive
    )
    if not files:
        raise MissingFileError(
            f"no images matching {' '.join('*' + s for s in suffixes)} found in {folder}"
            f"{' (searched recursively)' if recursive else ''}" + (f"; expected layout:\n{layout}" if layout else ""),
            path=folder, hint=layout or None,
        )
    return files


def with_exts(stem_suffix: str, exts: Sequence[str] = DATASET_IMAGE_SUFFIXES) -> tuple[str, ...]:
    """('_leftImg8bit.png', '_leftImg8bit.jpg', ...) for ``stem_suffix='_leftImg8bit'``."""
    return tuple(stem_suffix + e for e in exts)


def replace_suffix(name: str, old: str, new: str) -> str:
    """``name`` with its ending ``old`` (case-insensitive) replaced by ``new``."""
    assert name.lower().endswith(old.lower()), (name, old)
    return name[: len(name) - len(old)] + new


def suffix_rule(image_dir: Path, label_dir: Path, image_suffixes: Sequence[str], label_suffix: str) -> Callable[[Path], Path]:
    """Pairing rule: ``image_dir/sub/<id><image suffix>`` -> ``label_dir/sub/<id><label_suffix>``.

    E.g. ``leftImg8bit/train/aachen/x_leftImg8bit.png`` -> ``gtFine/train/aachen/x_gtFine_labelIds.png``.
    """

    def label_for(img: Path) -> Path:
        old = matching_suffix(img.name, image_suffixes)
        assert old is not None, img
        return label_dir / img.parent.relative_to(image_dir) / replace_suffix(img.name, old, label_suffix)

    return label_for


_MISSING_LABELS: contextvars.ContextVar[list | None] = contextvars.ContextVar("univseg_missing_labels", default=None)


@contextlib.contextmanager
def collect_missing_labels() -> Iterator[list[tuple[Path, Path]]]:
    """Within this block :func:`pair_labels` records missing label files instead of raising.

    Yields a list that receives ``(image, expected label)`` pairs; the datasets built meanwhile keep
    the (missing) label paths, so ``load_label`` raises DataError for exactly those samples. Used
    by ``univseg data check`` to report every problem of a split instead of the first.
    """
    found: list[tuple[Path, Path]] = []
    token = _MISSING_LABELS.set(found)
    try:
        yield found
    finally:
        _MISSING_LABELS.reset(token)


def pair_labels(images: Sequence[Path], label_for: Callable[[Path], Path], hint: str = "") -> list[Path]:
    """Label path of every image by the pairing rule ``label_for``; every label must exist.

    Raises MissingLabelError naming the first images without a label and their expected label
    paths; its ``path`` is the first expected label and ``values`` maps every such image to its label.
    """
    labels = [label_for(p) for p in images]
    missing = [(im, lab) for im, lab in zip(images, labels) if not lab.is_file()]
    sink = _MISSING_LABELS.get()
    if missing and sink is not None:
        sink.extend(missing)
        return labels
    if missing:
        lines = "\n".join(f"  image {im} -> expected label {lab}{missing_reason(lab)}" for im, lab in missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        todo = f"add the labels or remove the images{'; ' + hint if hint else ''}"
        raise MissingLabelError(
            f"{len(missing)} image(s) have no label file:\n{lines}{more}\n{todo}",
            path=missing[0][1], values={str(im): str(lab) for im, lab in missing}, hint=todo,
        )
    return labels


def read_list_file(path: Path, min_cols: int = 1, max_cols: int = 2) -> list[list[str]]:
    """Non-empty, non-comment lines of a list file split on whitespace; checks the column count."""
    rows = []
    for n, line in enumerate(read_text_file(path, "list file").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cols = line.split()
        if not min_cols <= len(cols) <= max_cols:
            want = str(min_cols) if min_cols == max_cols else f"{min_cols} to {max_cols}"
            raise DataError(
                f"{path}:{n}: expected {want} whitespace-separated path(s), got {len(cols)}: {line!r}", path=path
            )
        rows.append(cols)
    if not rows:
        raise DataError(f"list file {path} is empty", path=path)
    return rows



def resolve(base: Path, p: str | Path, listed: bool = False) -> Path:
    """``p`` relative to ``base``; absolute paths are kept.

    With ``listed`` (a path read from a list file) an absolute path that does not exist is taken
    relative to ``base``, as list files often write ``/JPEGImages/x.jpg`` meaning ``<root>/JPEGImages/x.jpg``.
    """
    p = Path(p)
    if p.is_absolute() and (not listed or p.exists()):
        return p
    return base / str(p).lstrip("/")
