"""Class mappings between label spaces, for scoring a model on a domain whose label space it lacks."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import ConfigError, MissingFileError
from ..validation import load_yaml_file
from .label_space import LabelSpace

_BUILTIN: dict[tuple[str, str], dict[str, str | None]] = {}


def register_mapping(src: str, dst: str, table: Mapping[str, str | None]) -> None:
    """Register a built-in mapping from label space ``src`` to ``dst`` by class names (None = ignore)."""
    key = (src, dst)
    if key in _BUILTIN:
        raise ValueError(f"a mapping {src} -> {dst} is already registered")
    _BUILTIN[key] = dict(table)


def builtin_mapping_names() -> list[tuple[str, str]]:
    return sorted(_BUILTIN)


@dataclass(frozen=True)
class MappingFile:
    """A class-mapping YAML file: ``{source class: target class | ignore}`` and, when given, the label space names."""

    table: dict[str, str | None]
    source: str | None = None
    target: str | None = None


def read_mapping_file(path: str | Path) -> MappingFile:
    """Read a class-mapping YAML file.

    The file is either the table itself or ``{source: <space>, target: <space>, mapping: <table>}``.
    Raises MissingFileError when it does not exist and ConfigError (naming it) when it is malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"class mapping file not found: {path}", path=path)
    data = load_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping 'source class: target class', got {type(data).__name__}", path=path)
    table = data.get("mapping", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: 'mapping' must be 'source class: target class' pairs", path=path)
    names = {str(k): (None if v is None else str(v)) for k, v in table.items()}
    if "mapping" not in data:
        return MappingFile(names)
    source, target = data.get("source"), data.get("target")
    return MappingFile(names, None if source is None else str(source), None if target is None else str(target))


@dataclass(frozen=True)
class ClassMapping:
    """A many-to-one map from the classes of ``src`` to the classes of ``dst`` (or to nothing).

    ``lut[k]`` is the ``dst`` train id for ``src`` train id ``k``, or -1 where the class has no
    counterpart; such predictions count as wrong for whatever the ground truth is.
    """

    src: LabelSpace
    dst: LabelSpace
    lut: tuple[int, ...]

    @classmethod
    def from_names(cls, src: LabelSpace, dst: LabelSpace, table: Mapping[str, str | None], origin: str = "mapping") -> "ClassMapping":
        """Build from ``{src class name: dst class name or None}``; classes left out map to nothing."""
        unknown_src = sorted(set(table) - set(src.names))
        if unknown_src:
            raise ConfigError(f"{origin}: {unknown_src} are not classes of '{src.name}' ({', '.join(src.names)})")
        lut = []
        for name in src.names:
            target = table.get(name)
            if target is None or target == "ignore":
                lut.append(-1)
                continue
            if target not in dst.names:
                raise ConfigError(
                    f"{origin}: '{name}' maps to '{target}', which is not a class of '{dst.name}' ({', '.join(dst.names)})"
                )
            lut.append(dst.index(target))
        return cls(src=src, dst=dst, lut=tuple(lut))

    @classmethod
    def from_yaml(cls, path: str | Path, src: LabelSpace, dst: LabelSpace) -> "ClassMapping":
        """Read a mapping file (see :func:`read_mapping_file`) between ``src`` and ``dst``."""
        return cls.from_names(src, dst, read_mapping_file(path).table, origin=str(path))

    @classmethod
    def builtin(cls, src: LabelSpace, dst: LabelSpace) -> "ClassMapping | None":
        """The registered mapping between the two label spaces, identity for equal spaces, else None."""
        if src.names == dst.names:
            return cls(src=src, dst=dst, lut=tuple(range(src.num_classes)))
        table = _BUILTIN.get((src.name, dst.name))
        return None if table is None else cls.from_names(src, dst, table, origin=f"built-in mapping {src.name}->{dst.name}")

    def apply(self, pred: np.ndarray) -> np.ndarray:
        """Map an array of ``src`` train ids to ``dst`` train ids (-1 = no counterpart)."""
        return np.asarray(self.lut, dtype=np.int64)[pred]
