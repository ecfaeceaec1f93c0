"""Ship and register the built-in class mappings (``univseg/resources/mappings/*.yaml``).

Each file reads::

    source: cityscapes        # label space names
    target: camvid
    mapping:                  # source class -> target class, or ignore (no counterpart)
      road: Road
      ...
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import yaml

from ..mapping import builtin_mapping_names, register_mapping

MAPPINGS_DIR = Path(str(files("univseg") / "resources" / "mappings"))


def mapping_files() -> list[Path]:
    """The shipped mapping files, sorted."""
    return sorted(MAPPINGS_DIR.glob("*.yaml"))


def read_mapping_file(path: Path) -> tuple[str, str, dict[str, str | None]]:
    """(source, target, table) of a shipped mapping file; raises ValueError naming the file."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not {"source", "target", "mapping"} <= set(data):
        raise ValueError(f"{path}: a mapping file needs the keys 'source', 'target' and 'mapping'")
    table = data["mapping"]
    if not isinstance(table, dict):
        raise ValueError(f"{path}: 'mapping' must be 'source class: target class' pairs")
    return str(data["source"]), str(data["target"]), {str(k): (None if v is None else str(v)) for k, v in table.items()}


def load_builtin_mappings() -> None:
    """Register every shipped mapping (idempotent)."""
    known = set(builtin_mapping_names())
    for path in mapping_files():
        src, dst, table = read_mapping_file(path)
        if (src, dst) not in known:
            register_mapping(src, dst, table)
