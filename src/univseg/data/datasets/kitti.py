"""KITTI semantic segmentation benchmark (2015 "data_semantics"), Cityscapes-compatible labels.

Layout (``root`` = the folder holding ``training/`` and ``testing/``)::

    training/image_2/{id}_10.png      training/semantic/{id}_10.png   (Cityscapes label ids 0..33)
    testing/image_2/{id}_10.png       (unlabeled)

Labels use the Cityscapes label ids and decode with the Cityscapes table into the 19 train ids.
"""
from __future__ import annotations

from ..base import DATASET_IMAGE_SUFFIXES
from ..registry import register_dataset
from ._common import NativeSegDataset, RootParams, find_images, pair_labels, require_dir, suffix_rule
from .cityscapes import CITYSCAPES

LAYOUT = """  <root>/training/image_2/*.png   <root>/training/semantic/*.png  (Cityscapes label ids)
  <root>/testing/image_2/*.png    (unlabeled)
  splits: train (= training), test (= testing, unlabeled)"""

_FOLDERS = {"train": "training", "test": "testing"}


class KittiParams(RootParams):
    """KITTI semantic segmentation (``root`` holds ``training/`` and ``testing/``)."""


@register_dataset("kitti", params=KittiParams, splits=("train", "test"))
def build_kitti(params: KittiParams, split: str) -> NativeSegDataset:
    root = require_dir(params.root, "KITTI root", LAYOUT)
    base = root / _FOLDERS[split]
    image_dir = require_dir(base / "image_2", f"KITTI '{split}' image folder", LAYOUT)
    images = find_images(image_dir, DATASET_IMAGE_SUFFIXES, layout=LAYOUT)
    if split == "test":
        return NativeSegDataset(CITYSCAPES, images, None, root=image_dir)
    label_dir = require_dir(base / "semantic", f"KITTI '{split}' label folder", LAYOUT)
    labels = pair_labels(images, suffix_rule(image_dir, label_dir, DATASET_IMAGE_SUFFIXES, ".png"))
    return NativeSegDataset(CITYSCAPES, images, labels, root=image_dir)
