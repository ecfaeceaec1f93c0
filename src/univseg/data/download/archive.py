"""The description of one file to download: URL, file name, archive type and expected checksum / size."""
from __future__ import annotations

import re
from dataclasses import dataclass

ARCHIVE_KINDS = ("zip", "tar", "tar.gz")


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
