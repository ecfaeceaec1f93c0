"""SUN RGB-D, 37-class semantic segmentation (RGB only).

Two common layouts (``root`` = the dataset folder):

* list files (``list_dir`` set): ``{list_dir}/{train,test}.txt``, one ``image label`` pair of
  paths per line, relative to ``root`` (a leading ``/`` is allowed); the list order is kept;
* folders (``list_dir`` unset)::

      {train,test}/image/{id}.jpg|png
      {train,test}/label/{id}.png          (paired by file stem)

Labels: 0 = void, k = class k-1 (the 37 official class names).
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from ..base import DATASET_IMAGE_SUFFIXES
from ..label_space import register_label_space
from ..registry import register_dataset
from ._common import (
    NativeSegDataset,
    RootParams,
    find_images,
    offset_space,
    pair_labels,
    read_list_file,
    require_dir,
    require_file,
    require_listed_images,
    resolve,
    suffix_rule,
)

SUNRGBD = register_label_space(offset_space(
    "sunrgbd",
    (
        "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
        "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
        "floor_mat", "clothes", "ceiling", "books", "fridge", "tv", "paper", "towel", "shower_curtain",
        "box", "whiteboard", "person", "night_stand", "toilet", "sink", "lamp", "bathtub", "bag",
    ),
))  # fmt: skip

LAYOUT = """  either list files: <root>/<list_dir>/{train,test}.txt with lines 'image_path label_path' (relative to root)
  or folders:        <root>/{train,test}/image/*.jpg  and  <root>/{train,test}/label/*.png  (same stem)
  labels: 0 = void, k = class k-1"""


class SunRgbdParams(RootParams):
    """SUN RGB-D 37-class segmentation (list-file or folder layout)."""

    list_dir: Path | None = Field(
        None, description="folder with train.txt/test.txt ('image label' per line), relative to root; unset: folder layout"
    )


def build_from_list(list_file: Path, base: Path, space, layout: str) -> NativeSegDataset:
    """Pairs from a list file with one 'image label' line per sample (paths relative to ``base``)."""
    rows = read_list_file(list_file, 2, 2)
    images = [resolve(base, r[0], listed=True) for r in rows]
    require_listed_images(images, list_file, base, layout)
    label_of = {im: resolve(base, r[1], listed=True) for im, r in zip(images, rows)}
    labels = pair_labels(images, label_of.__getitem__, f"fix {list_file}")
    return NativeSegDataset(space, images, labels, root=base)


@register_dataset("sunrgbd", params=SunRgbdParams, splits=("train", "test"))
def build_sunrgbd(params: SunRgbdParams, split: str) -> NativeSegDataset:
    root = require_dir(params.root, "SUN RGB-D root", LAYOUT)
    if params.list_dir is not None:
        list_dir = require_dir(resolve(root, params.list_dir), "SUN RGB-D list folder", LAYOUT)
        list_file = require_file(list_dir / f"{split}.txt", f"SUN RGB-D '{split}' list file", LAYOUT)
        return build_from_list(list_file, root, SUNRGBD, LAYOUT)
    image_dir = require_dir(root / split / "image", f"SUN RGB-D '{split}' image folder", LAYOUT)
    label_dir = require_dir(root / split / "label", f"SUN RGB-D '{split}' label folder", LAYOUT)
    images = find_images(image_dir, DATASET_IMAGE_SUFFIXES, layout=LAYOUT)
    labels = pair_labels(images, suffix_rule(image_dir, label_dir, DATASET_IMAGE_SUFFIXES, ".png"))
    return NativeSegDataset(SUNRGBD, images, labels, root=image_dir)
