"""The config schema of one domain: its dataset, splits, labeled-subset and unlabeled-pool rules.

The experiment config (:mod:`univseg.config`) holds a list of these; the data layer reads them
(:mod:`univseg.data.recipe`) without depending on the rest of the config.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

from pydantic import AfterValidator, Field, model_validator

from ..validation import StrictModel


class LabeledConfig(StrictModel):
    """Which images of the train split are labeled. At most one of count / fraction / split_file."""

    count: Optional[int] = Field(None, ge=1, description="number of labeled images, drawn deterministically")
    fraction: Optional[float] = Field(None, gt=0, le=1, description="fraction of the train split that is labeled")
    split_file: Optional[Path] = Field(None, description="list file of labeled images ('image [label]' per line)")
    seed: Optional[int] = Field(None, description="selection seed (default: the experiment seed)")

    @model_validator(mode="after")
    def _one_rule(self) -> "LabeledConfig":
        given = [k for k in ("count", "fraction", "split_file") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give only one of count / fraction / split_file, not {' and '.join(given)}")
        return self


class UnlabeledConfig(StrictModel):
    """The pool of unlabeled images of a domain (their labels, if any, are never read)."""

    use_train: bool = Field(True, description="use the train split's images as unlabeled data")
    include_labeled: bool = Field(False, description="keep the labeled images in the unlabeled pool too")
    extra_splits: list[str] = Field(default_factory=list, description="more splits of the dataset used unlabeled (e.g. test)")
    extra_dirs: list[Path] = Field(default_factory=list, description="folders of extra unlabeled images (searched recursively)")
    split_file: Optional[Path] = Field(None, description="list file of unlabeled images, replacing the rules above")
    max_images: Optional[int] = Field(None, ge=1, description="cap on the pool size (deterministic subset)")


#: The strong views' photometric pipeline of UniMatch (Yang et al., "Revisiting Weak-to-Strong
#: Consistency in Semi-Supervised Semantic Segmentation", CVPR 2023; the ``strong`` augmentations
#: of their ``SemiDataset``): ColorJitter(0.5, 0.5, 0.5, 0.25) with p 0.8, RandomGrayscale(p 0.2),
#: Gaussian blur with sigma ~ U(0.1, 2.0) with p 0.5.
UNIMATCH_STRONG_TRANSFORMS: list[dict[str, Any]] = [
    {"type": "color_jitter", "brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.25, "p": 0.8},
    {"type": "random_grayscale", "p": 0.2},
    {"type": "gaussian_blur", "sigma": [0.1, 2.0], "p": 0.5},
]


def _positive_range(cap: float) -> Callable[[tuple[float, float]], tuple[float, float]]:
    """A validator of ``[low, high]`` pairs with ``0 < low <= high <= cap``."""
    upto = "" if cap == math.inf else f" <= {cap:g}"

    def check(rng: tuple[float, float]) -> tuple[float, float]:
        if not 0 < rng[0] <= rng[1] <= cap:
            raise ValueError(f"expected [low, high] with 0 < low <= high{upto}, got {list(rng)}")
        return rng

    return check


class CutMixConfig(StrictModel):
    """The CutMix box of each strong view; the defaults are UniMatch's ``obtain_cutmix_box``."""

    p: float = Field(0.5, ge=0, le=1, description="probability that a strong view gets a box (else its mask is empty)")
    area: Annotated[tuple[float, float], AfterValidator(_positive_range(1.0))] = Field(
        (0.02, 0.4), description="[low, high] box area as a fraction of the image, within (0, 1]"
    )
    ratio: Annotated[tuple[float, float], AfterValidator(_positive_range(math.inf))] = Field(
        (0.3, 1 / 0.3), description="[low, high] box aspect ratio height / width, positive"
    )


class DomainConfig(StrictModel):
    """One domain: a dataset, its label space, labeled subset, unlabeled pool and val split."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_\-]+$", description="domain id; also names its head and result columns")
    dataset: dict[str, Any] = Field(..., description="{type: <registered dataset>, ...that dataset's own keys}")
    train_split: str = Field("train", description="split providing labeled and unlabeled training images")
    val_split: str = Field("val", description="split used for evaluation")
    labeled: LabeledConfig = Field(default_factory=LabeledConfig, description="labeled subset rule (default: all)")
    unlabeled: UnlabeledConfig = Field(default_factory=UnlabeledConfig, description="unlabeled pool rule")
    batch_size: int = Field(4, ge=1, description="labeled images per step")
    unlabeled_batch_size: int = Field(4, ge=0, description="unlabeled images per step (0: none)")
    train_transforms: list[dict[str, Any]] = Field(default_factory=list, description="augmentations for training images")
    val_transforms: list[dict[str, Any]] = Field(default_factory=list, description="transforms for evaluation images")
    strong_transforms: Optional[list[dict[str, Any]]] = Field(
        None,
        description="photometric transforms making the strong views of unlabeled images from their weak view "
        "(train_transforms), for methods that use them; null: UniMatch's (Yang et al. CVPR 2023) color_jitter "
        "0.5/0.5/0.5/0.25 p 0.8, random_grayscale p 0.2, gaussian_blur sigma [0.1, 2.0] p 0.5",
    )
    cutmix: CutMixConfig = Field(default_factory=CutMixConfig, description="CutMix box of each strong view")
