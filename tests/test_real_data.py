"""The adapters on the real CamVid and IDD-Lite copies (read-only, outside the repository).

The data folder is ``<repo>/../shared/data`` or ``$UNIVSEG_DATA_ROOT``; tests skip when it is absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import univseg.data.datasets  # noqa: F401  (registers the adapters)
from univseg.data.registry import DATASETS, build_dataset

DATA_ROOT = Path(os.environ.get("UNIVSEG_DATA_ROOT", Path(__file__).parents[1] / ".." / "shared" / "data")).resolve()


def dataset_root(name: str) -> Path:
    root = DATA_ROOT / name
    if not root.is_dir():
        pytest.skip(f"real data not available: {root} is missing (set UNIVSEG_DATA_ROOT to the folder holding {name}/)")
    return root


def build(adapter: str, folder: str, split: str):
    return build_dataset(adapter, DATASETS.get(adapter).params(root=dataset_root(folder)), split)


def spread(n: int, k: int = 5) -> list[int]:
    """``k`` indices spread over ``range(n)`` (first and last included)."""
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


@pytest.mark.parametrize(
    "adapter,folder,split,count,labeled",
    [
        ("camvid", "camvid", "train", 367, True),
        ("camvid", "camvid", "val", 101, True),
        ("idd_lite", "idd_lite", "train", 1403, True),
        ("idd_lite", "idd_lite", "val", 102, True),
        ("idd_lite", "idd_lite", "test", 404, False),
    ],
)
def test_real_split(adapter, folder, split, count, labeled):
    ds = build(adapter, folder, split)
    assert len(ds) == count
    assert ds.has_labels == labeled
    ids = [ds.sample_id(i) for i in range(len(ds))]
    assert len(set(ids)) == len(ids)
    assert ds.images == sorted(ds.images)
    if labeled:
        # pairing by stem: camvid train/X.jpg <-> trainannot/X.png; idd_lite leftImg8bit/S/seq/X_image.jpg <-> gtFine/S/seq/X_label.png
        root = dataset_root(folder)
        for img, lab in zip(ds.images, ds.labels):
            if adapter == "camvid":
                expected = root / f"{split}annot" / (img.stem + ".png")
            else:
                expected = root / "gtFine" / split / img.parent.name / (img.stem.removesuffix("_image") + "_label.png")
            assert lab == expected, (img, lab)
    for i in spread(len(ds)):
        image, label = ds.load_pair(i)
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
        if labeled:
            assert label.shape == image.shape[:2] and label.dtype == np.uint8
            values = set(np.unique(label).tolist())
            assert values <= set(range(ds.label_space.num_classes)) | {ds.label_space.ignore_index}, values
            assert values - {255}, f"{ds.labels[i]} holds no class at all"
        else:
            assert label is None


def test_real_void_maps_to_ignore():
    """CamVid's raw 11 (void) becomes 255; IDD-Lite's 255 stays 255."""
    from univseg.data.base import read_label

    for adapter, folder, void_raw in (("camvid", "camvid", 11), ("idd_lite", "idd_lite", 255)):
        ds = build(adapter, folder, "val")
        for i in range(len(ds)):
            raw = read_label(ds.labels[i])
            if (raw == void_raw).any():
                label = ds.load_label(i)
                assert (label[raw == void_raw] == 255).all()
                keep = raw != void_raw
                np.testing.assert_array_equal(label[keep], raw[keep])
                break
        else:
            pytest.fail(f"no {folder} val label has void pixels")


def test_real_label_spaces_are_the_documented_ones():
    cam = build("camvid", "camvid", "val").label_space
    idd = build("idd_lite", "idd_lite", "val").label_space
    assert cam.names == ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                         "Pedestrian", "Bicyclist"]  # fmt: skip
    assert idd.names == ["drivable", "non-drivable", "living things", "vehicles", "road side objects", "far objects", "sky"]
