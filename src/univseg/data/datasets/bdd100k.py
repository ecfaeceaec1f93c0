"""BDD100K semantic segmentation (10K images), labelled with the 19 Cityscapes train ids.

Layout (``root`` = the ``bdd100k`` folder)::

    images/10k/{train,val,test}/{id}.jpg
    labels/sem_seg/masks/{train,val}/{id}.png     (train ids 0..18, 255 = void)

Labels hold Cityscapes train ids, so the label space is :data:`CITYSCAPES` read through
:data:`CITYSCAPES_TRAIN_IDS`. ``test`` is unlabeled.
"""
from __future__ import annotations

from ..base import DATASET_IMAGE_SUFFIXES
from ..registry import register_dataset
from ._common import NativeSegDataset, RootParams, find_images, pair_labels, require_dir, suffix_rule
from .cityscapes import CITYSCAPES, CITYSCAPES_TRAIN_IDS

LAYOUT = """  <root>/images/10k/{train,val,test}/*.jpg
  <root>/labels/sem_seg/masks/{train,val}/*.png  (Cityscapes train ids, 255 = void)
  splits: train, val, test (unlabeled)"""


class Bdd100kParams(RootParams):
    """BDD100K 10K semantic segmentation (``root`` holds ``images/`` and ``labels/``)."""


@register_dataset("bdd100k", params=Bdd100kParams, splits=("train", "val", "test"))
def build_bdd100k(params: Bdd100kParams, split: str) -> NativeSegDataset:
    root = require_dir(params.root, "BDD100K root", LAYOUT)
    image_dir = require_dir(root / "images" / "10k" / split, f"BDD100K '{split}' image folder", LAYOUT)
    images = find_images(image_dir, DATASET_IMAGE_SUFFIXES, layout=LAYOUT)
    if split == "test":
        return NativeSegDataset(CITYSCAPES, images, None, root=image_dir)
    label_dir = require_dir(root / "labels" / "sem_seg" / "masks" / split, f"BDD100K '{split}' label folder", LAYOUT)
    labels = pair_labels(images, suffix_rule(image_dir, label_dir, DATASET_IMAGE_SUFFIXES, ".png"))
    return NativeSegDataset(CITYSCAPES, images, labels, root=image_dir, raw_space=CITYSCAPES_TRAIN_IDS)
