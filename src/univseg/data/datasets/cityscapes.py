"""Cityscapes (fine annotations) in its official layout, and the Cityscapes label table.

Layout (``root`` = the folder holding ``leftImg8bit/`` and ``gtFine/``)::

    leftImg8bit/{train,val,test,train_extra}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    gtFine/{train,val}/{city}/{city}_{seq}_{frame}_gtFine_labelTrainIds.png   (if generated)
    gtFine/{train,val}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png        (official)

Label encodings: the official ``*_gtFine_labelIds.png`` hold the 34 Cityscapes ids (0..33) and
are mapped to the 19 train ids with the official table below; ``*_gtFine_labelTrainIds.png``
(made by cityscapesscripts' ``createTrainIdLabelImgs``) already hold train ids with 255 = void.
When a split folder holds any ``labelTrainIds`` file, that encoding is used for the whole split.

Both encodings decode into the single label space :data:`CITYSCAPES` (its raw ids are the
official label ids); :data:`CITYSCAPES_TRAIN_IDS` is the same classes read from train-id files.
``test`` (labels withheld) and ``train_extra`` (coarse only) are unlabeled.
"""
from __future__ import annotations

from ..label_space import ClassInfo, LabelSpace, register_label_space
from ..registry import register_dataset
from ._common import (
    NativeSegDataset,
    RootParams,
    find_images,
    pair_labels,
    recode,
    require_dir,
    suffix_rule,
    with_exts,
)

# The official table (cityscapesscripts/helpers/labels.py): name, colour, label id, in train-id order.
# Label ids 0-6, 9, 10, 14-16, 18, 29, 30 and -1 (license plate, never drawn; 255 as uint8) are void.
CITYSCAPES = register_label_space(LabelSpace(
    name="cityscapes",
    classes=(
        ClassInfo("road", (128, 64, 128), (7,)),
        ClassInfo("sidewalk", (244, 35, 232), (8,)),
        ClassInfo("building", (70, 70, 70), (11,)),
        ClassInfo("wall", (102, 102, 156), (12,)),
        ClassInfo("fence", (190, 153, 153), (13,)),
        ClassInfo("pole", (153, 153, 153), (17,)),
        ClassInfo("traffic light", (250, 170, 30), (19,)),
        ClassInfo("traffic sign", (220, 220, 0), (20,)),
        ClassInfo("vegetation", (107, 142, 35), (21,)),
        ClassInfo("terrain", (152, 251, 152), (22,)),
        ClassInfo("sky", (70, 130, 180), (23,)),
        ClassInfo("person", (220, 20, 60), (24,)),
        ClassInfo("rider", (255, 0, 0), (25,)),
        ClassInfo("car", (0, 0, 142), (26,)),
        ClassInfo("truck", (0, 0, 70), (27,)),
        ClassInfo("bus", (0, 60, 100), (28,)),
        ClassInfo("train", (0, 80, 100), (31,)),
        ClassInfo("motorcycle", (0, 0, 230), (32,)),
        ClassInfo("bicycle", (119, 11, 32), (33,)),
    ),
    # unlabeled, ego vehicle, rectification border, out of roi, static, dynamic, ground, parking,
    # rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer, license plate (-1)
    void_ids=(0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30, 255),
))

#: The Cityscapes classes as stored in train-id files (``*_labelTrainIds.png``, BDD100K): 255 = void.
CITYSCAPES_TRAIN_IDS = recode(CITYSCAPES, None, void_ids=(255,))

LAYOUT = """  <root>/leftImg8bit/{split}/{city}/*_leftImg8bit.png
  <root>/gtFine/{split}/{city}/*_gtFine_labelIds.png  (or *_gtFine_labelTrainIds.png)
  splits: train, val, test (unlabeled), train_extra (unlabeled)"""

UNLABELED_SPLITS = ("test", "train_extra")


class CityscapesParams(RootParams):
    """Cityscapes fine annotations (``root`` holds ``leftImg8bit/`` and ``gtFine/``)."""


@register_dataset("cityscapes", params=CityscapesParams, splits=("train", "val", "test", "train_extra"))
def build_cityscapes(params: CityscapesParams, split: str) -> NativeSegDataset:
    root = require_dir(params.root, "Cityscapes root", LAYOUT)
    image_dir = require_dir(root / "leftImg8bit" / split, f"Cityscapes '{split}' image folder", LAYOUT)
    images = find_images(image_dir, with_exts("_leftImg8bit"), recursive=True, layout=LAYOUT)
    if split in UNLABELED_SPLITS:
        return NativeSegDataset(CITYSCAPES, images, None, root=image_dir)
    label_dir = require_dir(root / "gtFine" / split, f"Cityscapes '{split}' label folder", LAYOUT)
    use_train_ids = next(label_dir.rglob("*_gtFine_labelTrainIds.png"), None) is not None
    label_suffix = "_gtFine_labelTrainIds.png" if use_train_ids else "_gtFine_labelIds.png"

    hint = (
        f"{label_dir} holds *_gtFine_labelTrainIds.png files, so every image needs one (generate them for all "
        "images, or delete them to use *_gtFine_labelIds.png)"
        if use_train_ids
        else ""
    )
    labels = pair_labels(images, suffix_rule(image_dir, label_dir, with_exts("_leftImg8bit"), label_suffix), hint)
    return NativeSegDataset(
        CITYSCAPES, images, labels, root=image_dir, raw_space=CITYSCAPES_TRAIN_IDS if use_train_ids else CITYSCAPES
    )
