"""Download public datasets and arrange them into the folder layout the dataset adapters expect.

``univseg data download NAME --root DIR`` calls :func:`download_dataset`. Each entry of
:data:`DOWNLOADS` is either

* downloadable: a list of :class:`Archive` (URL, file name, checksum, size) plus a post-extraction
  step that moves the extracted files into ``DIR/<folder>`` (e.g. ``DIR/camvid``), or
* gated (registration required, or terms to accept by hand): plain-text instructions saying where to
  register, which archives to fetch and where to extract them; :func:`download_dataset` raises
  :class:`GatedDatasetError` whose message is exactly those instructions.

Modules, each importing only the ones listed before it:

* :mod:`.progress`: console output (sizes, status lines, warnings, progress bars);
* :mod:`.archive`: :class:`Archive`, the description of one file to download;
* :mod:`.fetch`: the http(s):// / file:// client with resume (``Range``) and restarts;
* :mod:`.verify`: size and checksum verification, and the record of verified files;
* :mod:`.extract`: path-traversal-safe zip / tar extraction;
* :mod:`.lock`: the per-dataset lock file against concurrent runs;
* :mod:`.catalogue`: :class:`DownloadEntry`, the registry :data:`DOWNLOADS` and the built-in datasets;
* :mod:`.install`: :func:`download_file` and :func:`download_dataset`, the whole pipeline.
"""
from ...errors import ChecksumError, DownloadError, GatedDatasetError, UnsafeArchiveError
from .archive import ARCHIVE_KINDS, Archive, archive_kind
from .catalogue import (
    DOWNLOAD_DIR,
    DOWNLOADS,
    DownloadEntry,
    MoveFolderWith,
    describe,
    get_entry,
    register_download,
    temporary_download,
)
from .extract import extract_archive
from .fetch import ChunkHook
from .install import MARKER, download_dataset, download_file
from .verify import file_digests

__all__ = [
    "ARCHIVE_KINDS", "Archive", "archive_kind",
    "DOWNLOAD_DIR", "DOWNLOADS", "DownloadEntry", "MoveFolderWith", "describe", "get_entry", "register_download",
    "temporary_download",
    "extract_archive", "ChunkHook", "MARKER", "download_dataset", "download_file", "file_digests",
    "DownloadError", "ChecksumError", "UnsafeArchiveError", "GatedDatasetError",
]
