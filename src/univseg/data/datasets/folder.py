"""The generic dataset: image and label folders (or list files) described entirely in the config.

Each split (``train``, ``val``, ``test``) is one entry of ``splits``; a split without labels
(no ``label_dir`` / ``label_list``) is unlabeled. Relative paths are relative to ``root``.

Example (Cityscapes-style names, raw label ids remapped to 3 classes)::

    type: folder
    root: /data/mycity
    name: mycity                        # label space name
    classes: [road, car, sky]
    palette: [[128, 64, 128], [0, 0, 142], [70, 130, 180]]    # optional
    value_map: {7: 0, 26: 1, 23: 2}     # raw label value -> class index (default: identity)
    void_values: [0, 255]               # raw values meaning "ignore"
    image_suffixes: [_leftImg8bit.png]  # which files are images (default .png .jpg .jpeg)
    label_suffix: _gtFine_labelIds.png  # label name = image name with its image suffix replaced
    splits:
      train: {image_dir: images/train, label_dir: labels/train}
      val:   {image_dir: images/val,   label_dir: labels/val}
      test:  {image_dir: images/test}   # unlabeled

Pairing: the label of ``image_dir/sub/x<image suffix>`` is ``label_dir/sub/x<label_suffix>``
(default: same stem, ``.png``). Folders are searched recursively unless ``recursive: false``.
Instead of folders a split may give list files: ``image_list`` (one image path per line, or
``image label`` per line) and optionally ``label_list`` (one label path per line, same order as
``image_list``) or ``label_dir`` (label = ``label_dir/`` + image file name with the suffix rule).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...errors import DataError
from ..base import DATASET_IMAGE_SUFFIXES
from ..label_space import IGNORE_INDEX, ClassInfo, LabelSpace, default_palette
from ..registry import register_dataset
from ._common import (
    NativeSegDataset,
    RootParams,
    find_images,
    matching_suffix,
    pair_labels,
    read_list_file,
    replace_suffix,
    require_dir,
    require_file,
    require_listed_images,
    resolve,
    suffix_rule,
)

SPLITS = ("train", "val", "test")


class FolderSplit(BaseModel):
    """Where one split's images and (optional) labels are; paths relative to the dataset root."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_dir: Path | None = Field(None, description="folder of images (searched recursively unless recursive: false)")
    image_list: Path | None = Field(None, description="text file: one image path per line, or 'image label' per line")
    label_dir: Path | None = Field(None, description="folder of labels, paired to images by the suffix rule")
    label_list: Path | None = Field(None, description="text file: one label path per line, in image_list order")

    @model_validator(mode="after")
    def _check(self) -> "FolderSplit":
        if (self.image_dir is None) == (self.image_list is None):
            raise ValueError("give exactly one of image_dir or image_list")
        if self.label_dir is not None and self.label_list is not None:
            raise ValueError("give at most one of label_dir or label_list")
        if self.label_list is not None and self.image_list is None:
            raise ValueError("label_list needs image_list (labels are paired to images by line)")
        return self


class FolderParams(RootParams):
    """Generic image/label folders; see the module docstring for a YAML example."""

    root: Path = Field(description="base folder; relative paths of the splits are relative to it")
    classes: list[str] = Field(min_length=1, description="class names, in train-id order")
    palette: list[tuple[int, int, int]] | None = Field(None, description="RGB colour per class (default: VOC-style palette)")
    value_map: dict[int, int] = Field(
        default_factory=dict, description="raw label value -> class index or 255 (empty: raw value = class index)"
    )
    void_values: list[int] = Field(default_factory=lambda: [IGNORE_INDEX], description="raw label values meaning ignore")
    name: str = Field("folder", description="label space name (datasets sharing classes should share it)")
    image_suffixes: list[str] = Field(
        default_factory=lambda: list(DATASET_IMAGE_SUFFIXES), description="file-name endings that mark images (case-insensitive)"
    )
    label_suffix: str = Field(".png", description="label file name = image name with its image suffix replaced by this")
    recursive: bool = Field(True, description="search image folders recursively")
    splits: dict[Literal["train", "val", "test"], FolderSplit] = Field(
        min_length=1, description="split name -> its folders / list files"
    )

    @model_validator(mode="after")
    def _check(self) -> "FolderParams":
        if self.palette is not None and len(self.palette) != len(self.classes):
            raise ValueError(f"palette has {len(self.palette)} colours for {len(self.classes)} classes")
        if self.palette is not None and any(not 0 <= v <= 255 for c in self.palette for v in c):
            raise ValueError("palette colours must be [r, g, b] with values 0..255")
        folder_label_space(self)  # raises ValueError with the reason when the class table is inconsistent
        return self


def folder_label_space(p: FolderParams) -> LabelSpace:
    """The label space described by the params (classes, palette, value_map, void_values)."""
    k = len(p.classes)
    colors = p.palette if p.palette is not None else default_palette(k)
    void = set(p.void_values)
    for v in void | set(p.value_map):
        if not 0 <= v < 65536:
            raise ValueError(f"raw label value {v} is outside 0..65535")
    if p.value_map:
        bad = {r: t for r, t in p.value_map.items() if not (0 <= t < k or t == IGNORE_INDEX)}
        if bad:
            raise ValueError(f"value_map targets {bad} are not class indices 0..{k - 1} (or {IGNORE_INDEX} = ignore)")
        both = sorted(void & set(p.value_map))
        if both:
            raise ValueError(f"raw values {both} are both in void_values and value_map")
        raw_ids = [tuple(sorted(r for r, t in p.value_map.items() if t == c)) for c in range(k)]
        empty = [p.classes[c] for c in range(k) if not raw_ids[c]]
        if empty:
            raise ValueError(f"classes {empty} have no raw value in value_map (map a raw value to each class)")
        void |= {r for r, t in p.value_map.items() if t == IGNORE_INDEX}
    else:
        clash = sorted(v for v in void if v < k)
        if clash:
            raise ValueError(f"void_values {clash} are class indices (raw value = class index without value_map)")
        raw_ids = [()] * k
    return LabelSpace(
        name=p.name,
        classes=tuple(ClassInfo(n, tuple(int(x) for x in col), ids) for n, col, ids in zip(p.classes, colors, raw_ids)),
        void_ids=tuple(sorted(void)),
    )


LAYOUT = """  as configured: splits.<split>.image_dir (or image_list) and label_dir (or label_list), relative to root"""


@register_dataset("folder", params=FolderParams, splits=SPLITS)
def build_folder(params: FolderParams, split: str) -> NativeSegDataset:
    if split not in params.splits:
        hint = f"add 'splits: {{{split}: {{image_dir: ..., label_dir: ...}}}}'"
        raise DataError(
            f"folder dataset '{params.name}' has no '{split}' split configured (configured: "
            f"{', '.join(params.splits)}); {hint}",
            hint=hint,
        )
    s = params.splits[split]
    space = folder_label_space(params)
    root = require_dir(params.root, "dataset root", LAYOUT)
    label_dir = require_dir(resolve(root, s.label_dir), f"'{split}' label folder", LAYOUT) if s.label_dir else None

    if s.image_dir is not None:
        image_dir = require_dir(resolve(root, s.image_dir), f"'{split}' image folder", LAYOUT)
        images = find_images(image_dir, params.image_suffixes, recursive=params.recursive)
        if label_dir is None:
            return NativeSegDataset(space, images, None, root=image_dir)
        rule = suffix_rule(image_dir, label_dir, params.image_suffixes, params.label_suffix)
        return NativeSegDataset(space, images, pair_labels(images, rule), root=image_dir)

    list_file = require_file(resolve(root, s.image_list), f"'{split}' image list", LAYOUT)  # type: ignore[arg-type]
    rows = read_list_file(list_file, 1, 2)
    images = [resolve(root, r[0], listed=True) for r in rows]
    require_listed_images(images, list_file, root, LAYOUT)
    two_cols = [len(r) == 2 for r in rows]
    if any(two_cols) and not all(two_cols):
        raise DataError(f"{list_file}: either every line or no line must name a label ('image label')", path=list_file)
    if all(two_cols):
        if label_dir is not None or s.label_list is not None:
            raise DataError(
                f"{list_file} names the labels itself; remove label_dir / label_list from split '{split}'", path=list_file
            )
        label_of = {im: resolve(root, r[1], listed=True) for im, r in zip(images, rows)}
    elif s.label_list is not None:
        label_file = require_file(resolve(root, s.label_list), f"'{split}' label list", LAYOUT)
        label_rows = read_list_file(label_file, 1, 1)
        if len(label_rows) != len(rows):
            raise DataError(
                f"{label_file} has {len(label_rows)} lines but {list_file} has {len(rows)}; they must pair line by line",
                path=label_file,
            )
        label_of = {im: resolve(root, r[0], listed=True) for im, r in zip(images, label_rows)}
    elif label_dir is not None:
        label_of = {}
        for im in images:
            old = matching_suffix(im.name, params.image_suffixes)
            if old is None:
                raise DataError(
                    f"image {im} (from {list_file}) does not end with any of image_suffixes {params.image_suffixes}", path=im
                )
            label_of[im] = label_dir / replace_suffix(im.name, old, params.label_suffix)
    else:
        return NativeSegDataset(space, images, None, root=root)
    return NativeSegDataset(space, images, pair_labels(images, label_of.__getitem__, f"fix {list_file}"), root=root)
