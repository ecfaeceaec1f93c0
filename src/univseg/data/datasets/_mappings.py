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

from ...errors import ConfigError
from ..mapping import builtin_mapping_names, read_mapping_file, register_mapping

MAPPINGS_DIR = Path(str(files("univseg") / "resources" / "mappings"))


def mapping_files() -> list[Path]:
    """The shipped mapping files, sorted."""
    return sorted(MAPPINGS_DIR.glob("*.yaml"))


def load_builtin_mappings() -> None:
    """Register every shipped mapping (idempotent); each file must name its ``source`` and ``target``."""
    known = set(builtin_mapping_names())
    for path in mapping_files():
        m = read_mapping_file(path)
        if m.source is None or m.target is None:
            raise ConfigError(f"{path}: a mapping file needs the keys 'source', 'target' and 'mapping'", path=path)
        if (m.source, m.target) not in known:
            register_mapping(m.source, m.target, m.table)
