"""Dataset registry: a dataset type name -> its validated parameters and a split builder."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from pydantic import BaseModel, ConfigDict

from ..errors import ConfigError
from ..registry import Registry
from ..validation import validate_typed
from .base import SegDataset


class DatasetParams(BaseModel):
    """Base of every dataset's parameter model: unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class DatasetSpec:
    """How to build one dataset type.

    Attributes:
        params: the pydantic model validating the dataset's own config keys.
        build: ``build(params, split) -> SegDataset`` for one split name.
        splits: split names the dataset understands (the first is the default train split).
    """

    params: type[DatasetParams]
    build: Callable[[DatasetParams, str], SegDataset]
    splits: tuple[str, ...]


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(name: str, params: type[DatasetParams], splits: tuple[str, ...]):
    """Decorator registering ``build(params, split)`` as dataset type ``name``."""

    def deco(build: Callable[[DatasetParams, str], SegDataset]):
        DATASETS.register(name, DatasetSpec(params=params, build=build, splits=splits))
        return build

    return deco


def check_split(type_name: str, split: str) -> DatasetSpec:
    """The spec of dataset type ``type_name``; raises ConfigError listing its splits when it has no ``split``."""
    spec = DATASETS.get(type_name)
    if split not in spec.splits:
        raise ConfigError(f"dataset '{type_name}' has no split '{split}'; splits: {', '.join(spec.splits)}")
    return spec


def build_dataset(type_name: str, params: DatasetParams, split: str) -> SegDataset:
    """Build split ``split`` of dataset type ``type_name``; an unknown split lists the valid ones."""
    return check_split(type_name, split).build(params, split)


@dataclass(frozen=True)
class DatasetSource:
    """A dataset type with validated parameters: what a domain's ``dataset`` entry resolves to."""

    type_name: str
    params: DatasetParams

    def build(self, split: str) -> SegDataset:
        """Split ``split`` of this dataset."""
        return build_dataset(self.type_name, self.params, split)


def resolve_dataset(entry: Mapping[str, Any], where: str) -> DatasetSource:
    """Validate a ``{type: name, ...params}`` dataset entry found at key path ``where``.

    Raises ConfigError naming the key: a missing or unknown type (with the closest registered
    name), unknown keys (with the closest valid key) and wrong values.
    """
    typed = validate_typed(entry, DATASETS, lambda spec: spec.params, where)
    return DatasetSource(typed.type_name, typed.params)
