"""Download, verify, extract and arrange a dataset of the catalogue into its folder under a data root.

Steps and the state they leave on disk (re-running skips finished steps):

1. download each archive to ``<root>/downloads/<file>.part``, resuming from the size of an existing
   ``.part``;
2. verify its sha256 / md5 (and size when known), then rename ``.part`` to ``<file>`` atomically.
   A verified archive is not downloaded again unless ``force``;
3. extract safely into a temporary folder next to the target, arrange, write the marker
   ``.univseg_download_ok`` (JSON with the checksums) and move the result into place with one
   rename, so an interrupted run never leaves a layout that looks complete.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Union

from ...errors import ChecksumError, DownloadError, GatedDatasetError
from .archive import Archive
from .catalogue import DOWNLOAD_DIR, DownloadEntry, get_entry
from .extract import extract_archive
from .fetch import ChunkHook, fetch_to_part
from .lock import dataset_lock
from .progress import human_size, log, warn
from .verify import record_digests, recorded_digests, sidecar, verify_archive

MARKER = ".univseg_download_ok"
"""File written into a dataset folder once it is completely downloaded, verified and arranged."""


def download_file(archive: Archive, dest_dir: Path, *, force: bool = False, progress: bool = True,
                  on_chunk: ChunkHook | None = None) -> tuple[Path, dict[str, str]]:
    """Download ``archive`` into ``dest_dir`` (resuming a ``.part``), verify it and return
    ``(path, digests)``. An existing verified file is reused unless ``force``.

    ``on_chunk(n)`` is called with the size of every chunk received, before it is written (progress
    hooks, tests); an OSError it raises is treated like a network failure.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / archive.filename
    part = dest_dir / (archive.filename + ".part")
    if force:
        for p in (final, part, sidecar(final)):
            p.unlink(missing_ok=True)
    if final.is_file():
        digests = recorded_digests(archive, final)
        if digests is not None:
            log(progress, f"{archive.filename}: already downloaded and verified")
            return final, digests
        try:
            digests = verify_archive(archive, final)
        except ChecksumError as e:
            warn(f"the existing {final} is damaged ({e}); downloading it again")
        else:
            if not archive.verified:
                warn(f"{archive.filename}: no checksum is known for this archive; the existing file was not verified")
            record_digests(final, digests)
            log(progress, f"{archive.filename}: already downloaded")
            return final, digests
    if archive.size is not None:
        need = archive.size - (part.stat().st_size if part.exists() else 0)
        free = shutil.disk_usage(dest_dir).free
        if need > free:
            raise DownloadError(
                f"not enough free disk space in {dest_dir} for {archive.filename}: need {human_size(need)}, "
                f"have {human_size(free)}; free some space or choose another --root"
            )
    log(progress, f"downloading {archive.url}")
    fetch_to_part(archive, part, progress, on_chunk)
    digests = verify_archive(archive, part)
    if not archive.verified:
        warn(f"{archive.filename}: no checksum is known for this archive, so it was not verified "
             f"(sha256 of the downloaded file: {digests['sha256']})")
    os.replace(part, final)
    record_digests(final, digests)
    return final, digests


def _tmp_prefix(entry: DownloadEntry) -> str:
    return f".univseg_tmp_{entry.folder}_"


def download_dataset(name: Union[str, DownloadEntry], root: Path, *, force: bool = False,
                     progress: bool = True) -> Path:
    """Download, verify, extract and arrange dataset ``name`` into ``root/<folder>``; return that folder.

    A folder already completed by an earlier run (it holds the marker) is returned untouched unless
    ``force``, which re-downloads and replaces it. Raises :class:`GatedDatasetError` (message: the
    manual instructions) for registration-gated datasets, ``UnknownNameError`` listing the available
    names for an unknown ``name``, and :class:`DownloadError` for network / checksum / archive problems.
    """
    entry = get_entry(name)
    root = Path(root).expanduser()
    if entry.gated:
        raise GatedDatasetError(entry.instructions_for(root))
    target = root / entry.folder
    marker = target / MARKER
    if marker.is_file() and not force:
        log(progress, f"{entry.name}: already downloaded into {target} (pass --force to download again)")
        return target
    if target.exists() and not marker.is_file() and not force:
        raise DownloadError(
            f"{target} already exists but was not completed by 'univseg data download' (it has no {MARKER}). "
            "If you put the dataset there yourself, there is nothing to download; otherwise move or delete "
            "that folder, or pass --force to replace it."
        )
    root.mkdir(parents=True, exist_ok=True)
    with dataset_lock(root, entry.name):
        for stale in root.glob(_tmp_prefix(entry) + "*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        got = [download_file(a, root / DOWNLOAD_DIR, force=force, progress=progress) for a in entry.archives]
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(entry), dir=root))
        try:
            extracted = tmp / "extracted"
            extracted.mkdir()
            for archive, (path, _) in zip(entry.archives, got):
                log(progress, f"extracting {path.name}")
                extract_archive(path, extracted, archive.kind, progress=progress)
            staged = tmp / entry.folder
            assert entry.arrange is not None
            entry.arrange(extracted, staged)
            if not staged.is_dir():
                raise DownloadError(f"arranging {entry.name} produced no folder {staged.name}")
            record = {
                "dataset": entry.name,
                "title": entry.title,
                "completed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "archives": [
                    {"file": a.filename, "url": a.url, "verified": a.verified, **digests}
                    for a, (_, digests) in zip(entry.archives, got)
                ],
            }
            (staged / MARKER).write_text(json.dumps(record, indent=2) + "\n")
            if target.exists():  # force: replace a previous copy
                os.replace(target, tmp / "previous")
            os.replace(staged, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log(progress, f"{entry.name}: ready in {target} (archives kept in {root / DOWNLOAD_DIR}; "
                  "delete them to save space)")
    return target
