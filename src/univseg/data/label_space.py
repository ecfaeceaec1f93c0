"""Label spaces: class names, colours, raw-value mapping and the ignore index, defined once.

:data:`LABEL_SPACES` is the table of named label spaces: each dataset family (and the synthetic
taxonomies) registers its label space there with :func:`register_label_space`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import LabelValueError, UnknownNameError
from ..registry import Registry, suggest

IGNORE_INDEX = 255
"""Train id of void pixels (never a class); also what label padding is filled with."""


@dataclass(frozen=True)
class ClassInfo:
    """One class of a label space.

    Attributes:
        name: human-readable class name.
        color: RGB colour used for overlays.
        raw_ids: values in the dataset's label files that mean this class (empty: raw id == train id).
    """

    name: str
    color: tuple[int, int, int]
    raw_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class LabelSpace:
    """A frozen table of classes plus the ignore index; everything else is derived from it.

    Train ids are the class positions 0..K-1. Raw label values listed in ``void_ids`` map to
    ``ignore_index``; any other raw value that no class claims is *outside the label space*.
    """

    name: str
    classes: tuple[ClassInfo, ...]
    ignore_index: int = IGNORE_INDEX
    void_ids: tuple[int, ...] = ()
    _lut: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError(f"label space '{self.name}' has no classes")
        names = [c.name for c in self.classes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"label space '{self.name}' repeats class names: {dupes}")
        if len(self.classes) >= self.ignore_index:
            raise ValueError(
                f"label space '{self.name}' has {len(self.classes)} classes; the ignore index "
                f"{self.ignore_index} must be larger than the number of classes"
            )
        lut = np.full(65536, -1, dtype=np.int32)  # -1 marks values outside the label space
        for v in self.void_ids:
            lut[v] = self.ignore_index
        for train_id, c in enumerate(self.classes):
            for raw in c.raw_ids or (train_id,):
                if lut[raw] != -1:
                    raise ValueError(f"label space '{self.name}': raw value {raw} is claimed twice")
                lut[raw] = train_id
        object.__setattr__(self, "_lut", lut)

    @classmethod
    def from_names(
        cls,
        name: str,
        class_names: Sequence[str],
        colors: Sequence[Sequence[int]] | None = None,
        void_ids: Iterable[int] = (),
        ignore_index: int = IGNORE_INDEX,
    ) -> "LabelSpace":
        """Build a label space whose raw ids equal the train ids (the common case)."""
        colors = colors if colors is not None else default_palette(len(class_names))
        return cls(
            name=name,
            classes=tuple(ClassInfo(n, tuple(int(v) for v in c)) for n, c in zip(class_names, colors)),
            ignore_index=ignore_index,
            void_ids=tuple(void_ids),
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def palette(self) -> np.ndarray:
        """(K, 3) uint8 colours, row k for train id k."""
        return np.array([c.color for c in self.classes], dtype=np.uint8)

    def index(self, class_name: str) -> int:
        """Train id of ``class_name``; raises UnknownNameError with the valid names when unknown."""
        try:
            return self.names.index(class_name)
        except ValueError:
            raise UnknownNameError(
                f"label space '{self.name}' has no class '{class_name}'.{suggest(class_name, self.names)} "
                f"Classes: {', '.join(self.names)}"
            ) from None

    def encode(self, raw: np.ndarray, source: str | Path | None = None) -> np.ndarray:
        """Map raw label values to train ids (uint8, ignore = ``ignore_index``).

        Raises:
            LabelValueError: when ``raw`` holds values outside the label space; ``values`` maps each
                such value to its pixel count and ``path`` is ``source`` (the label file), which the
                message names.
        """
        bad = self.invalid_values(raw)
        if bad:
            values, counts = np.unique(raw, return_counts=True)
            pixels = dict(zip(values.tolist(), counts.tolist()))
            shown = bad if len(bad) <= 20 else [*bad[:20], "..."]
            where = f"{source}: " if source is not None else ""
            hint = "fix the file or remove the sample"
            raise LabelValueError(
                f"{where}label values {shown} are outside label space '{self.name}' "
                f"(valid raw values: {format_ranges(self.valid_raw_values())}); {hint}",
                path=source, values={v: int(pixels[v]) for v in bad}, hint=hint,
            )
        return self._lut[raw.astype(np.int64)].astype(np.uint8)

    def invalid_values(self, raw: np.ndarray) -> list[int]:
        """Sorted raw values in ``raw`` that neither a class nor void claims."""
        values = np.unique(raw)
        if values.size and (values.min() < 0 or values.max() >= len(self._lut)):
            return [int(v) for v in values if v < 0 or v >= len(self._lut) or self._lut[v] < 0]
        return [int(v) for v in values[self._lut[values.astype(np.int64)] < 0]]

    def valid_raw_values(self) -> list[int]:
        return [int(v) for v in np.flatnonzero(self._lut >= 0)]

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, stored in checkpoints and result files."""
        return {
            "name": self.name,
            "ignore_index": self.ignore_index,
            "void_ids": list(self.void_ids),
            "classes": [
                {"name": c.name, "color": list(c.color), "raw_ids": list(c.raw_ids)} for c in self.classes
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabelSpace":
        return cls(
            name=d["name"],
            classes=tuple(
                ClassInfo(c["name"], tuple(c["color"]), tuple(c.get("raw_ids", ()))) for c in d["classes"]
            ),
            ignore_index=d.get("ignore_index", IGNORE_INDEX),
            void_ids=tuple(d.get("void_ids", ())),
        )


#: Built-in label spaces by name; see :func:`register_label_space`.
LABEL_SPACES: Registry[LabelSpace] = Registry("label space")


def register_label_space(space: LabelSpace) -> LabelSpace:
    """Add ``space`` to :data:`LABEL_SPACES` under its name (unique) and return it."""
    LABEL_SPACES.register(space.name, space)
    return space


def voc_color(i: int) -> tuple[int, int, int]:
    """Colour of index ``i`` in the PASCAL VOC palette (bit-interleaving of the index; 0 is black)."""
    r = g = b = 0
    c = i
    for j in range(8):
        r |= ((c >> 0) & 1) << (7 - j)
        g |= ((c >> 1) & 1) << (7 - j)
        b |= ((c >> 2) & 1) << (7 - j)
        c >>= 3
    return (r, g, b)


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """Distinct colours for ``n`` classes: VOC palette entries 1..n (black is skipped)."""
    return [voc_color(i + 1) for i in range(n)]


def format_ranges(values: Sequence[int]) -> str:
    """'0-10, 255' for [0..10, 255]: a compact listing of label values for messages."""
    out: list[str] = []
    vals = sorted(values)
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        out.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ", ".join(out)
