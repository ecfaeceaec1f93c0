"""Fetch an archive's bytes from an http(s):// or file:// URL into a ``.part`` file, resuming a partial one.

HTTP downloads resume with ``Range`` requests; a server that ignores ``Range`` or answers with an
unexpected range makes the download restart cleanly (at most three attempts). ``file://`` sources
resume with a seek.
"""
from __future__ import annotations

import http.client
import os
import re
from pathlib import Path
from typing import Callable
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, url2pathname, urlopen

from ...errors import DownloadError
from .archive import Archive
from .progress import human_size, log, progress_bar

CHUNK = 1 << 20
"""Bytes read per network / file read."""
TIMEOUT_S = 60
"""Seconds to wait for an HTTP connection or read."""
_USER_AGENT = "univseg-downloader (python-urllib)"

ChunkHook = Callable[[int], None]


def _network_error(url: str, reason: object, part: Path) -> DownloadError:
    have = part.stat().st_size if part.exists() else 0
    kept = (
        f" {human_size(have)} already downloaded are kept in {part}; run the same command again to resume the download."
        if have
        else " Check the network connection (and that the URL is reachable), then run the same command again; "
        "an interrupted download resumes where it stopped."
    )
    return DownloadError(f"download of {url} failed: {reason}.{kept}")


def _stream_to_part(read: Callable[[int], bytes], part: Path, offset: int, total: int | None,
                    url: str, name: str, progress: bool, on_chunk: ChunkHook | None) -> None:
    """Append ``read()`` chunks to ``part`` (truncated first when ``offset`` is 0) until EOF."""
    written = offset
    with open(part, "ab" if offset else "wb") as out, progress_bar(
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
                log(progress, f"{name}: the partial download does not fit the server's file; restarting")
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
                    log(progress, f"{name}: the server resumed at an unexpected position; restarting")
                    part.unlink()
                    continue
                if total is None and length is not None:
                    total = offset + length
                log(progress, f"{name}: resuming at {human_size(offset)}")
            else:
                if offset:
                    log(progress, f"{name}: the server does not support resuming; restarting from the beginning")
                offset = 0
                total = length
            if total is None:
                total = size
            _stream_to_part(resp.read, part, offset, total, url, name, progress, on_chunk)
            return
    raise DownloadError(f"download of {url} failed: the server kept sending inconsistent ranges; "
                        f"delete {part} and run the same command again")


def fetch_to_part(archive: Archive, part: Path, progress: bool, on_chunk: ChunkHook | None) -> None:
    """Download ``archive.url`` into ``part``, continuing an existing partial file.

    ``on_chunk(n)`` is called with the size of every chunk received, before it is written.
    Network failures raise :class:`DownloadError` and keep ``part`` for the next attempt.
    """
    scheme = urlparse(archive.url).scheme.lower()
    if scheme == "file":
        _fetch_file_url(archive.url, part, progress, on_chunk)
    elif scheme in ("http", "https"):
        _fetch_http_url(archive.url, part, archive.size, progress, on_chunk)
    else:
        raise DownloadError(f"cannot download {archive.url}: unsupported URL scheme '{scheme}' (use http, https or file)")
