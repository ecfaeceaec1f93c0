"""NYU Depth v2 semantic segmentation (795 train / 654 test), 40 or 13 classes.

Layout (``root`` = the dataset folder; the common export of the labelled subset)::

    image/{train,test}/{id}.png|jpg
    label40/{train,test}/{id}.png      (0 = void, k = class k-1 of the 40 classes)
    label13/{train,test}/{id}.png      (0 = void, k = class k-1 of the 13 classes)

Class names: the 40 classes of Gupta et al. (CVPR 2013), the 13 classes of Couprie et al. / Eigen
& Fergus. Label space names: "nyuv2_40", "nyuv2_13".
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..base import DATASET_IMAGE_SUFFIXES
from ..label_space import register_label_space
from ..registry import register_dataset
from ._common import NativeSegDataset, RootParams, find_images, offset_space, pair_labels, require_dir, suffix_rule

NYUV2_40 = register_label_space(offset_space(
    "nyuv2_40",
    (
        "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
        "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
        "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
        "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
        "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
    ),  # "refridgerator": sic, the official spelling
))  # fmt: skip

NYUV2_13 = register_label_space(offset_space(
    "nyuv2_13",
    ("bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "painting", "sofa", "table", "tv", "wall", "window"),
))

LAYOUT = """  <root>/image/{train,test}/*.png
  <root>/label40/{train,test}/*.png  and/or  <root>/label13/{train,test}/*.png  (same stem; 0 = void, k = class k-1)"""


class NyuV2Params(RootParams):
    """NYU Depth v2 segmentation (``root`` holds ``image/`` and ``label40/`` / ``label13/``)."""

    classes: Literal[13, 40] = Field(40, description="class set: 40 (Gupta et al.) or 13 (Couprie et al.)")


@register_dataset("nyuv2", params=NyuV2Params, splits=("train", "test"))
def build_nyuv2(params: NyuV2Params, split: str) -> NativeSegDataset:
    space = NYUV2_40 if params.classes == 40 else NYUV2_13
    root = require_dir(params.root, "NYUv2 root", LAYOUT)
    image_dir = require_dir(root / "image" / split, f"NYUv2 '{split}' image folder", LAYOUT)
    label_dir = require_dir(root / f"label{params.classes}" / split, f"NYUv2 '{split}' {params.classes}-class label folder", LAYOUT)
    images = find_images(image_dir, DATASET_IMAGE_SUFFIXES, layout=LAYOUT)
    labels = pair_labels(images, suffix_rule(image_dir, label_dir, DATASET_IMAGE_SUFFIXES, ".png"))
    return NativeSegDataset(space, images, labels, root=image_dir)
