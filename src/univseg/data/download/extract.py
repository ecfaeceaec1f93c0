"""Extract zip and tar archives safely: members that would land outside the target folder are refused.

Rejected are absolute paths, ``..`` components, links pointing outside the folder and (for tar)
devices and other special files; on Python versions that have it, tar's ``data`` filter is applied too.
"""
from __future__ import annotations

import re
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ...errors import DownloadError, UnsafeArchiveError
from .archive import archive_kind
from .progress import progress_bar

_HAS_TAR_FILTER = hasattr(tarfile, "data_filter")  # Python >= 3.11.4 / 3.10.12
_TAR_FILTER_ERROR = getattr(tarfile, "FilterError", ())


def _unsafe_name(name: str) -> str | None:
    """Why member ``name`` would escape the extraction folder, or None when it is safe."""
    n = name.replace("\\", "/")
    if n.startswith("/") or re.match(r"^[A-Za-z]:", n):
        return "has an absolute path"
    if ".." in PurePosixPath(n).parts:
        return "contains '..' (it would be written outside the extraction folder)"
    return None


def _reject(archive: Path, member: str, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"refusing to extract {archive}: member '{member}' {why}. The archive is unsafe (path traversal); "
        "nothing was installed. Delete it and check where it came from."
    )


def _extract_zip(path: Path, dest: Path, progress: bool) -> None:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        for info in infos:  # check everything before writing anything
            why = _unsafe_name(info.filename)
            if why:
                raise _reject(path, info.filename, why)
        base = dest.resolve()
        for info in progress_bar(progress, iterable=infos, unit="file", desc=f"extracting {path.name}"):
            target = (base / info.filename).resolve()
            if target != base and base not in target.parents:
                raise _reject(path, info.filename, "resolves outside the extraction folder")
            zf.extract(info, base)


def _tar_link_escapes(member: tarfile.TarInfo) -> bool:
    link = member.linkname.replace("\\", "/")
    if link.startswith("/") or re.match(r"^[A-Za-z]:", link):
        return True
    start = PurePosixPath(member.name).parent if member.issym() else PurePosixPath(".")
    depth = 0
    for part in (start / link).parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in (".", ""):
            depth += 1
    return False


def _extract_tar(path: Path, dest: Path, progress: bool) -> None:
    base = dest.resolve()
    with tarfile.open(path, "r:*") as tf:
        # Members are checked and extracted one by one (a second pass over a .tar.gz would decompress
        # it twice); a rejection leaves only the temporary folder, which the caller removes.
        for member in progress_bar(progress, iterable=tf, unit="file", desc=f"extracting {path.name}"):
            why = _unsafe_name(member.name)
            if why:
                raise _reject(path, member.name, why)
            if (member.issym() or member.islnk()) and _tar_link_escapes(member):
                raise _reject(path, member.name, f"is a link to '{member.linkname}' outside the extraction folder")
            if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                raise _reject(path, member.name, "is a device or other special file")
            target = (base / member.name).resolve()
            if target != base and base not in target.parents:
                raise _reject(path, member.name, "resolves outside the extraction folder")
            try:
                if _HAS_TAR_FILTER:
                    tf.extract(member, base, filter="data")
                else:  # pragma: no cover - old Python: the checks above are the protection
                    tf.extract(member, base)
            except _TAR_FILTER_ERROR as e:
                raise _reject(path, member.name, str(e)) from None


def extract_archive(path: Path, dest: Path, kind: str | None = None, *, progress: bool = True) -> None:
    """Extract ``path`` into the existing folder ``dest``, refusing members that would escape it."""
    kind = kind or archive_kind(path.name)
    try:
        if kind == "zip":
            _extract_zip(path, dest, progress)
        else:
            _extract_tar(path, dest, progress)
    except (zipfile.BadZipFile, tarfile.ReadError, EOFError, zlib.error) as e:
        raise DownloadError(
            f"cannot extract {path}: the archive is corrupt or truncated ({e}). Delete it and run the same "
            "command again (or pass --force) to download it afresh."
        ) from None
