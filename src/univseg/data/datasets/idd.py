"""IDD (India Driving Dataset) segmentation, level-3 (26 classes) or level-1 (7 classes), and IDD-Lite.

``idd`` (``root`` = the ``IDD_Segmentation`` folder; labels made by IDD's ``createLabels.py``)::

    leftImg8bit/{train,val,test}/{seq}/{id}_leftImg8bit.png|jpg
    gtFine/{train,val}/{seq}/{id}_gtFine_labellevel3Ids.png   (level-3 ids 0..25, 255 = void)
    gtFine/{train,val}/{seq}/{id}_gtFine_labellevel1Ids.png   (optional, level-1 ids 0..6)

With ``level: 1`` the split uses the ``labellevel1Ids`` files when any exist, otherwise it reads the
level-3 files and groups them into level 1 with the official grouping (``anue_labels.py``).

``idd_lite`` (``root`` = the ``idd20k_lite`` folder; level-1 labels)::

    leftImg8bit/{train,val,test}/{seq}/{id}_image.jpg
    gtFine/{train,val}/{seq}/{id}_label.png                   (level-1 ids 0..6, 255 = void)

``test`` is unlabeled in both.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

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

#: IDD level 1 (label value = class id, 255 = void). Colours: those of a representative level-3 class.
IDD_LEVEL1 = register_label_space(LabelSpace(
    name="idd_level1",
    classes=(
        ClassInfo("drivable", (128, 64, 128)),
        ClassInfo("non-drivable", (244, 35, 232)),
        ClassInfo("living things", (220, 20, 60)),
        ClassInfo("vehicles", (0, 0, 142)),
        ClassInfo("road side objects", (220, 220, 0)),
        ClassInfo("far objects", (70, 70, 70)),
        ClassInfo("sky", (70, 130, 180)),
    ),
    void_ids=(255,),
))

# IDD level 3 (anue_labels.py, level3Id order): name, colour, level-1 class.
IDD_LEVEL3_TABLE: tuple[tuple[str, tuple[int, int, int], str], ...] = (
    ("road", (128, 64, 128), "drivable"),
    ("drivable fallback", (81, 0, 81), "drivable"),  # + parking
    ("sidewalk", (244, 35, 232), "non-drivable"),
    ("non-drivable fallback", (152, 251, 152), "non-drivable"),  # + rail track
    ("person", (220, 20, 60), "living things"),  # + animal
    ("rider", (255, 0, 0), "living things"),
    ("motorcycle", (0, 0, 230), "vehicles"),
    ("bicycle", (119, 11, 32), "vehicles"),
    ("autorickshaw", (255, 204, 54), "vehicles"),
    ("car", (0, 0, 142), "vehicles"),
    ("truck", (0, 0, 70), "vehicles"),
    ("bus", (0, 60, 100), "vehicles"),
    ("vehicle fallback", (136, 143, 153), "vehicles"),  # + caravan, trailer, train
    ("curb", (220, 190, 40), "road side objects"),
    ("wall", (102, 102, 156), "road side objects"),
    ("fence", (190, 153, 153), "road side objects"),
    ("guard rail", (180, 165, 180), "road side objects"),
    ("billboard", (174, 64, 67), "road side objects"),
    ("traffic sign", (220, 220, 0), "road side objects"),
    ("traffic light", (250, 170, 30), "road side objects"),
    ("pole", (153, 153, 153), "road side objects"),  # + polegroup
    ("obs-str-bar-fallback", (169, 187, 214), "road side objects"),
    ("building", (70, 70, 70), "far objects"),
    ("bridge", (150, 100, 100), "far objects"),  # + tunnel
    ("vegetation", (107, 142, 35), "far objects"),
    ("sky", (70, 130, 180), "sky"),  # + fallback background
)

#: IDD level 3 (label value = class id, 255 = void).
IDD_LEVEL3 = register_label_space(LabelSpace(
    name="idd_level3",
    classes=tuple(ClassInfo(name, color) for name, color, _ in IDD_LEVEL3_TABLE),
    void_ids=(255,),
))

#: IDD level-1 classes read from level-3 label files (the official level3 -> level1 grouping).
IDD_LEVEL1_FROM_LEVEL3 = recode(
    IDD_LEVEL1,
    [[i for i, row in enumerate(IDD_LEVEL3_TABLE) if row[2] == c.name] for c in IDD_LEVEL1.classes],
    void_ids=(255,),
)

LAYOUT = """  <root>/leftImg8bit/{split}/{seq}/*_leftImg8bit.png
  <root>/gtFine/{split}/{seq}/*_gtFine_labellevel3Ids.png  (and/or *_gtFine_labellevel1Ids.png)
  splits: train, val, test (unlabeled); make the label files with IDD's createLabels.py"""

LAYOUT_LITE = """  <root>/leftImg8bit/{split}/{seq}/*_image.jpg
  <root>/gtFine/{split}/{seq}/*_label.png  (level-1 ids 0..6, 255 = void)
  splits: train, val, test (unlabeled)"""


class IddParams(RootParams):
    """IDD segmentation (``root`` holds ``leftImg8bit/`` and ``gtFine/``)."""

    level: Literal[3, 1] = Field(3, description="label hierarchy level: 3 (26 classes) or 1 (7 classes)")


class IddLiteParams(RootParams):
    """IDD-Lite (``root`` holds ``leftImg8bit/`` and ``gtFine/``), level-1 labels."""


@register_dataset("idd", params=IddParams, splits=("train", "val", "test"))
def build_idd(params: IddParams, split: str) -> NativeSegDataset:
    space = IDD_LEVEL3 if params.level == 3 else IDD_LEVEL1
    root = require_dir(params.root, "IDD root", LAYOUT)
    image_dir = require_dir(root / "leftImg8bit" / split, f"IDD '{split}' image folder", LAYOUT)
    suffixes = with_exts("_leftImg8bit")
    images = find_images(image_dir, suffixes, recursive=True, layout=LAYOUT)
    if split == "test":
        return NativeSegDataset(space, images, None, root=image_dir)
    label_dir = require_dir(root / "gtFine" / split, f"IDD '{split}' label folder", LAYOUT)
    raw_space, label_suffix, hint = space, "_gtFine_labellevel3Ids.png", ""
    if params.level == 1:
        if next(label_dir.rglob("*_gtFine_labellevel1Ids.png"), None) is not None:
            label_suffix = "_gtFine_labellevel1Ids.png"
            hint = f"{label_dir} holds *_gtFine_labellevel1Ids.png files, so every image needs one"
        else:
            raw_space = IDD_LEVEL1_FROM_LEVEL3
    labels = pair_labels(images, suffix_rule(image_dir, label_dir, suffixes, label_suffix), hint)
    return NativeSegDataset(space, images, labels, root=image_dir, raw_space=raw_space)


@register_dataset("idd_lite", params=IddLiteParams, splits=("train", "val", "test"))
def build_idd_lite(params: IddLiteParams, split: str) -> NativeSegDataset:
    root = require_dir(params.root, "IDD-Lite root", LAYOUT_LITE)
    image_dir = require_dir(root / "leftImg8bit" / split, f"IDD-Lite '{split}' image folder", LAYOUT_LITE)
    suffixes = with_exts("_image")
    images = find_images(image_dir, suffixes, recursive=True, layout=LAYOUT_LITE)
    if split == "test":
        return NativeSegDataset(IDD_LEVEL1, images, None, root=image_dir)
    label_dir = require_dir(root / "gtFine" / split, f"IDD-Lite '{split}' label folder", LAYOUT_LITE)
    labels = pair_labels(images, suffix_rule(image_dir, label_dir, suffixes, "_label.png"))
    return NativeSegDataset(IDD_LEVEL1, images, labels, root=image_dir)
