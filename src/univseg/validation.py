"""Validation of plain (YAML) data into pydantic models, with messages that name the offending key.

:func:`error_lines` turns pydantic errors into ``dotted.key: problem`` lines (typos get the closest
valid key); :func:`validate_typed` validates a ``{type: name, ...params}`` entry against a
:class:`~univseg.registry.Registry`. Both the experiment config and the data layer (datasets,
transforms) use them, so this module imports nothing from either: only the registry and the errors.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from .errors import ConfigError, UnknownNameError
from .registry import Registry, suggest

T = TypeVar("T")


class StrictModel(BaseModel):
    """Base of config sections: unknown keys and non-finite numbers (``.inf``, ``.nan``) are rejected
    and assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


#: the most values (mappings, lists and scalars, each alias counted as the copy it stands for) a YAML
#: file may hold: far above any real config or class mapping, far below what nested aliases (a
#: "billion laughs" file) expand to
MAX_YAML_NODES = 100_000


def load_yaml_file(path: Path) -> Any:
    """The data of YAML file ``path``. ConfigError naming it when it is not UTF-8 text (e.g. a binary
    file), not valid YAML, or expands beyond MAX_YAML_NODES values (:func:`check_yaml_size`)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not a YAML text file (byte {e.start} is not UTF-8 text); give a .yaml file", path=str(path)
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}", path=str(path)) from None
    check_yaml_size(data, str(path))
    return data


def check_yaml_size(data: Any, source: str) -> None:
    """ConfigError naming ``source`` when ``data`` expands to more than MAX_YAML_NODES values or
    refers to itself (a recursive alias). Shared subtrees (YAML aliases) are sized once, so this
    takes time linear in the file, not in the expansion."""
    sizes: dict[int, int] = {}
    open_ids: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_ids:
            raise ConfigError(f"{source}: an alias refers to the mapping or list that contains it (a recursive "
                              "alias); write the values out instead")
        open_ids.add(id(node))
        total = 1
        for child in node.values() if isinstance(node, dict) else node:
            total += size(child)
            if total > MAX_YAML_NODES:
                raise ConfigError(
                    f"{source}: expands to more than {MAX_YAML_NODES} values (nested YAML aliases '*name' repeat "
                    "their anchor's content); a config is far smaller: remove the nested aliases",
                    values={"limit": MAX_YAML_NODES},
                )
        open_ids.discard(id(node))
        sizes[id(node)] = total
        return total

    size(data)


def dotted(loc: Sequence[str | int], prefix: str = "") -> str:
    """``prefix`` + ``loc`` as a key path: ``domains[1].labeled.count`` (``<top level>`` when empty)."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


def error_lines(
    err: ValidationError, model: type[BaseModel], prefix: str = "", extra_keys: Sequence[str] = ()
) -> list[str]:
    """One ``key.path: problem`` line per error of validating ``model``, the path starting at ``prefix``.

    Unknown keys list the valid keys at their level (``extra_keys`` too at the top level, e.g.
    ``type``) and suggest the closest one; wrong values add the field's description and the value.
    """
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        path = dotted(loc, prefix)
        _, field = _walk(model, loc)
        expected = f"; expected {field.description}" if field is not None and field.description else ""
        if e["type"] == "extra_forbidden":
            valid = _keys_at(model, loc[:-1]) + (list(extra_keys) if len(loc) == 1 else [])
            hint = suggest(str(loc[-1]), valid)
            lines.append(f"{path}: unknown key.{hint} Valid keys here: {', '.join(sorted(valid))}")
        elif e["type"] == "missing":
            what = "item" if loc and isinstance(loc[-1], int) else "required key"
            lines.append(f"{path}: missing {what}{expected}")
        elif e["type"] in ("value_error", "assertion_error"):
            lines.append(f"{path}: {e.get('ctx', {}).get('error', e['msg'])}")
        else:
            got = e.get("input")
            shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
            lines.append(f"{path}: {e['msg']}{expected}{shown}")
    return lines


@dataclass(frozen=True)
class TypedEntry(Generic[T]):
    """A validated ``{type: name, ...params}`` entry: the type name, its registry item and its parameters."""

    type_name: str
    item: T
    params: BaseModel


def validate_typed(
    entry: Any, registry: Registry[T], params_of: Callable[[T], type[BaseModel]], where: str
) -> TypedEntry[T]:
    """Validate a ``{type: name, ...params}`` mapping found at key path ``where``.

    ``type`` is looked up in ``registry`` (an unknown name suggests the closest one and lists the
    available ones); the other keys are validated with the model ``params_of(item)``. Raises
    ConfigError whose message holds one ``where.key: problem`` line per problem.
    """
    kind = registry.kind
    if not isinstance(entry, dict):
        raise ConfigError(
            f"{where}: expected a mapping like {{type: name, ...}}, got {type(entry).__name__} {entry!r}", key=where
        )
    if "type" not in entry:
        hint = suggest("type", [str(k) for k in entry])
        raise ConfigError(
            f"{where}: missing 'type' key.{hint} Available {kind} types: {', '.join(registry.names())}", key=where
        )
    name = entry["type"]
    if not isinstance(name, str):
        raise ConfigError(
            f"{where}.type: expected a string naming a {kind} type, got {type(name).__name__} {name!r}", key=f"{where}.type"
        )
    try:
        item = registry.get(name)
    except UnknownNameError as e:
        raise ConfigError(f"{where}.type: {e}", key=f"{where}.type") from None
    model = params_of(item)
    try:
        params = model.model_validate({k: v for k, v in entry.items() if k != "type"})
    except ValidationError as e:
        raise ConfigError("\n".join(error_lines(e, model, where, extra_keys=("type",))), key=where) from None
    return TypedEntry(name, item, params)


def _walk(model: type[BaseModel], loc: Sequence[str | int]) -> tuple[Any, FieldInfo | None]:
    """The annotation reached by following ``loc`` from ``model`` (None when it leaves the models) and
    the last field passed; list indices and dict keys step into their container's item type."""
    current: Any = model
    field = None
    for part in loc:
        inner = _model_in(current)
        if inner is not None and isinstance(part, str) and part in inner.model_fields:
            field = inner.model_fields[part]
            current = field.annotation
        elif inner is None or _is_model(current):
            return None, field
    return current, field


def _keys_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """Field names of the (sub)model at ``loc`` (empty when ``loc`` does not lead to a model)."""
    inner = _model_in(_walk(model, loc)[0])
    return list(inner.model_fields) if inner is not None else []


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside an annotation such as ``Foo``, ``list[Foo]``, ``dict[str, Foo]`` or ``Optional[Foo]``."""
    if _is_model(annotation):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None
