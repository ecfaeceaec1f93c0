"""Mapillary Vistas v1.2 (66 labels: 65 classes + "Unlabeled").

Layout (``root`` = the Vistas folder)::

    {training,validation,testing}/images/{id}.jpg
    {training,validation}/v1.2/labels/{id}.png   (v2.0 release layout)  or
    {training,validation}/labels/{id}.png        (v1.x release layout)

Labels are palettised/single-channel PNGs of label ids 0..65; 65 ("Unlabeled") is void.
Class names and colours: the official ``config_v1.2.json``. ``test`` is unlabeled.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..base import DATASET_IMAGE_SUFFIXES
from ..label_space import ClassInfo, LabelSpace, register_label_space
from ..registry import register_dataset
from ._common import NativeSegDataset, RootParams, find_images, pair_labels, require_dir, suffix_rule

_V12: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("Bird", (165, 42, 42)), ("Ground Animal", (0, 192, 0)), ("Curb", (196, 196, 196)),
    ("Fence", (190, 153, 153)), ("Guard Rail", (180, 165, 180)), ("Barrier", (90, 120, 150)),
    ("Wall", (102, 102, 156)), ("Bike Lane", (128, 64, 255)), ("Crosswalk - Plain", (140, 140, 200)),
    ("Curb Cut", (170, 170, 170)), ("Parking", (250, 170, 160)), ("Pedestrian Area", (96, 96, 96)),
    ("Rail Track", (230, 150, 140)), ("Road", (128, 64, 128)), ("Service Lane", (110, 110, 110)),
    ("Sidewalk", (244, 35, 232)), ("Bridge", (150, 100, 100)), ("Building", (70, 70, 70)),
    ("Tunnel", (150, 120, 90)), ("Person", (220, 20, 60)), ("Bicyclist", (255, 0, 0)),
    ("Motorcyclist", (255, 0, 100)), ("Other Rider", (255, 0, 200)),
    ("Lane Marking - Crosswalk", (200, 128, 128)), ("Lane Marking - General", (255, 255, 255)),
    ("Mountain", (64, 170, 64)), ("Sand", (230, 160, 50)), ("Sky", (70, 130, 180)), ("Snow", (190, 255, 255)),
    ("Terrain", (152, 251, 152)), ("Vegetation", (107, 142, 35)), ("Water", (0, 170, 30)),
    ("Banner", (255, 255, 128)), ("Bench", (250, 0, 30)), ("Bike Rack", (100, 140, 180)),
    ("Billboard", (220, 220, 220)), ("Catch Basin", (220, 128, 128)), ("CCTV Camera", (222, 40, 40)),
    ("Fire Hydrant", (100, 170, 30)), ("Junction Box", (40, 40, 40)), ("Mailbox", (33, 33, 33)),
    ("Manhole", (100, 128, 160)), ("Phone Booth", (142, 0, 0)), ("Pothole", (70, 100, 150)),
    ("Street Light", (210, 170, 100)), ("Pole", (153, 153, 153)), ("Traffic Sign Frame", (128, 128, 128)),
    ("Utility Pole", (0, 0, 80)), ("Traffic Light", (250, 170, 30)), ("Traffic Sign (Back)", (192, 192, 192)),
    ("Traffic Sign (Front)", (220, 220, 0)), ("Trash Can", (140, 140, 20)), ("Bicycle", (119, 11, 32)),
    ("Boat", (150, 0, 255)), ("Bus", (0, 60, 100)), ("Car", (0, 0, 142)), ("Caravan", (0, 0, 90)),
    ("Motorcycle", (0, 0, 230)), ("On Rails", (0, 80, 100)), ("Other Vehicle", (128, 64, 64)),
    ("Trailer", (0, 0, 110)), ("Truck", (0, 0, 70)), ("Wheeled Slow", (0, 0, 192)),
    ("Car Mount", (32, 32, 32)), ("Ego Vehicle", (120, 10, 10)),
)  # fmt: skip

#: Mapillary Vistas v1.2: label id = class id (0..64), 65 = Unlabeled (void).
MAPILLARY_V12 = register_label_space(LabelSpace(
    name="mapillary_v1.2",
    classes=tuple(ClassInfo(n, c) for n, c in _V12),
    void_ids=(65,),
))

LAYOUT = """  <root>/{training,validation,testing}/images/*.jpg
  <root>/{training,validation}/v1.2/labels/*.png  (or <root>/{training,validation}/labels/*.png; ids 0..65, 65 = void)
  splits: train (= training), val (= validation), test (= testing, unlabeled)"""

_FOLDERS = {"train": "training", "val": "validation", "test": "testing"}


class MapillaryParams(RootParams):
    """Mapillary Vistas (``root`` holds ``training/``, ``validation/``, ``testing/``)."""

    version: Literal["v1.2"] = Field("v1.2", description="label set version (only v1.2: 65 classes + Unlabeled)")


@register_dataset("mapillary", params=MapillaryParams, splits=("train", "val", "test"))
def build_mapillary(params: MapillaryParams, split: str) -> NativeSegDataset:
    root = require_dir(params.root, "Mapillary Vistas root", LAYOUT)
    base = require_dir(root / _FOLDERS[split], f"Mapillary Vistas '{split}' folder", LAYOUT)
    image_dir = require_dir(base / "images", f"Mapillary Vistas '{split}' image folder", LAYOUT)
    images = find_images(image_dir, DATASET_IMAGE_SUFFIXES, layout=LAYOUT)
    if split == "test":
        return NativeSegDataset(MAPILLARY_V12, images, None, root=image_dir)
    label_dir = base / params.version / "labels"
    if not label_dir.is_dir():
        label_dir = require_dir(base / "labels", f"Mapillary Vistas '{split}' label folder", LAYOUT)
    labels = pair_labels(images, suffix_rule(image_dir, label_dir, DATASET_IMAGE_SUFFIXES, ".png"))
    return NativeSegDataset(MAPILLARY_V12, images, labels, root=image_dir)
