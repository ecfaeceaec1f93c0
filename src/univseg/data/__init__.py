"""Label spaces, datasets (registered by name), splits, transforms and multi-domain sampling.

Importing this package registers every built-in dataset adapter and the synthetic domains.
"""
from . import datasets, synthetic  # noqa: F401  (registration side effects)
from .base import DataError, FileSegDataset, SegDataset
from .label_space import IGNORE_INDEX, LABEL_SPACES, ClassInfo, LabelSpace, register_label_space
from .mapping import ClassMapping, register_mapping
from .registry import DATASETS, DatasetParams, build_dataset, register_dataset

__all__ = [
    "DATASETS", "DataError", "FileSegDataset", "SegDataset", "IGNORE_INDEX", "LABEL_SPACES", "ClassInfo", "LabelSpace",
    "register_label_space", "ClassMapping", "register_mapping", "DatasetParams", "build_dataset", "register_dataset",
]
