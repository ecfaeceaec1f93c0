"""Dataset registry: a dataset type name -> its validated parameters and a split builder."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pydantic import BaseModel, ConfigDict

from ..registry import Registry
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


def build_dataset(type_name: str, params: DatasetParams, split: str) -> SegDataset:
    """Build split ``split`` of dataset type ``type_name``; an unknown split lists the valid ones."""
    spec = DATASETS.get(type_name)
    if split not in spec.splits:
        raise ValueError(f"dataset '{type_name}' has no split '{split}'; splits: {', '.join(spec.splits)}")
    return spec.build(params, split)
