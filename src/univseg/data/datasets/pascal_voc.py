"""PASCAL VOC 2012 segmentation, 21 classes (background + 20), optionally with SBD-augmented labels.

Layout (``root`` = ``VOCdevkit/VOC2012``)::

    JPEGImages/{id}.jpg
    SegmentationClass/{id}.png                 (palette PNG: index = class id, 255 = void/boundary)
    ImageSets/Segmentation/{train,val,trainval}.txt     (one image id per line)
    SegmentationClassAug/{id}.png              (optional, SBD "aug" labels, single-channel)
    ImageSets/Segmentation/train_aug.txt       (optional, for split ``train_aug``)

Split ``train_aug`` reads ``train_aug.txt`` (lines: an image id, or ``/JPEGImages/x.jpg
/SegmentationClassAug/x.png`` as in DeepLab's list) with labels from ``SegmentationClassAug/``.
The list order is kept.
"""
from __future__ import annotations

from pathlib import Path

from ..base import DATASET_IMAGE_SUFFIXES
from ..label_space import ClassInfo, LabelSpace, register_label_space, voc_color
from ..registry import register_dataset
from ._common import (
    NativeSegDataset,
    RootParams,
    pair_labels,
    read_list_file,
    require_dir,
    require_file,
    require_listed_images,
    resolve,
)

_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

PASCAL_VOC = register_label_space(LabelSpace(
    name="pascal_voc",
    classes=tuple(ClassInfo(n, voc_color(i)) for i, n in enumerate(_NAMES)),
    void_ids=(255,),
))

LAYOUT = """  <root>/JPEGImages/{id}.jpg
  <root>/SegmentationClass/{id}.png  (palette indices, 255 = void)
  <root>/ImageSets/Segmentation/{train,val,trainval}.txt
  optional: <root>/SegmentationClassAug/{id}.png + <root>/ImageSets/Segmentation/train_aug.txt (split train_aug)"""


def _image_of(image_dir: Path, image_id: str) -> Path:
    """``JPEGImages/{id}.jpg`` (or a re-encoded ``.png``/``.jpeg`` when only that exists)."""
    for ext in DATASET_IMAGE_SUFFIXES[1:] + DATASET_IMAGE_SUFFIXES[:1]:  # .jpg first
        if (image_dir / f"{image_id}{ext}").is_file():
            return image_dir / f"{image_id}{ext}"
    return image_dir / f"{image_id}.jpg"


class PascalVocParams(RootParams):
    """PASCAL VOC 2012 segmentation (``root`` = ``VOCdevkit/VOC2012``)."""


@register_dataset("pascal_voc", params=PascalVocParams, splits=("train", "val", "trainval", "train_aug"))
def build_pascal_voc(params: PascalVocParams, split: str) -> NativeSegDataset:
    root = require_dir(params.root, "PASCAL VOC root", LAYOUT)
    image_dir = require_dir(root / "JPEGImages", "PASCAL VOC image folder", LAYOUT)
    label_dir = require_dir(
        root / ("SegmentationClassAug" if split == "train_aug" else "SegmentationClass"), "PASCAL VOC label folder", LAYOUT
    )
    list_file = require_file(root / "ImageSets" / "Segmentation" / f"{split}.txt", f"PASCAL VOC '{split}' list", LAYOUT)
    rows = read_list_file(list_file, 1, 2)
    images = [_image_of(image_dir, r[0]) if len(r) == 1 else resolve(root, r[0], listed=True) for r in rows]
    require_listed_images(images, list_file, root, LAYOUT)
    label_of = {im: label_dir / f"{r[0]}.png" if len(r) == 1 else resolve(root, r[1], listed=True) for im, r in zip(images, rows)}
    labels = pair_labels(images, label_of.__getitem__, f"fix {list_file}")
    return NativeSegDataset(PASCAL_VOC, images, labels, root=image_dir)
