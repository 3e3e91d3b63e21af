"""Study intake: uploads and .zip archives -> candidate images, hostile archives refused.

The archives are real zips written with zipfile; the hostile ones (a 200 MB zip bomb,
entries whose declared size lies, encrypted flags) are patched at the byte level, and
tracemalloc shows that the bomb is never inflated. An audit hook shows that nothing
reaches the disk.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import struct
import sys
import tarfile
import tracemalloc
import zipfile

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from inference.errors import UnsupportedImage
from studies import intake as intake_module
from studies.errors import EmptyStudy, StudyTooLarge, UnsafeArchive
from studies.intake import Limits, StudyFile, read_archive, read_uploads

from . import dicom_factory as make
from .model_factory import png_bytes

MiB = 1 << 20
LIMITS = Limits(max_images=1000, max_bytes=512 * MiB)
BOMB_BYTES = 200 * MiB


def zip_bytes(entries, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """``entries``: (name, bytes) pairs; a name ending in '/' is a folder entry."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def patch_entry(data: bytes, *, size: int | None = None, flags: int | None = None) -> bytes:
    """The first entry's declared uncompressed size or flags, rewritten in the central
    directory and the local header."""
    patched = bytearray(data)
    for signature, size_at, flags_at in ((b"PK\x01\x02", 24, 8), (b"PK\x03\x04", 22, 6)):
        start = patched.index(signature)
        if size is not None:
            struct.pack_into("<I", patched, start + size_at, size)
        if flags is not None:
            struct.pack_into("<H", patched, start + flags_at, flags)
    return bytes(patched)


def raster(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def dicomdir_file() -> bytes:
    """pydicom's sample DICOMDIR: a real media index, with patient records."""
    with open(get_testdata_file("DICOMDIR"), "rb") as file:
        return file.read()


def tar_bytes(png: bytes) -> bytes:
    buffer, info = io.BytesIO(), tarfile.TarInfo("a.png")
    info.size = len(png)
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.addfile(info, io.BytesIO(png))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def ct() -> bytes:
    return make.ct_file(make.hu_phantom(32))


@pytest.fixture(scope="module")
def png() -> bytes:
    return png_bytes(size=(16, 16))


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """200 MB of zeros deflated to about 200 kB, written in 1 MB steps."""
    buffer, chunk = io.BytesIO(), bytes(MiB)
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("scan.dcm", "w") as stream:
            for _ in range(BOMB_BYTES // MiB):
                stream.write(chunk)
    return buffer.getvalue()


def peak_memory(call) -> tuple[Exception, int]:
    """What ``call`` raised, and the most bytes Python held at once meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(Exception) as caught:
            call()
        return caught.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def names(intake) -> list[str]:
    return [file.name for file in intake.files]


def test_uploads_keep_images_in_order_and_skip_the_rest_with_notes(ct, png):
    uploads = [("b.png", png), ("../folder/a.dcm", ct), ("README.txt", b"read me"),
               (".DS_Store", b"\x00\x00\x00\x01Bud1"), ("DICOMDIR", dicomdir_file()),
               ("empty.png", b""), ("Thumbs.db", b"\xd0\xcf\x11\xe0"), (None, png),
               ("index.dcm", dicomdir_file()),  # a DICOMDIR known by its SOP class
               ("C:\\Users\\x\\scan.png", png), ("dir/\x1bc\x07.png", png)]
    intake = read_uploads(uploads, LIMITS)
    assert names(intake) == ["b.png", "a.dcm", "file 8", "scan.png", "c.png"]  # base names
    assert intake.files[1] == StudyFile("a.dcm", ct)
    assert intake.notes == ["Skipped 5 files that are not images: README.txt, .DS_Store, "
                            "DICOMDIR, Thumbs.db, index.dcm.", "Skipped 1 empty file: empty.png."]


def test_the_content_decides_and_images_are_not_decoded_here(ct, png):
    formats = [raster("JPEG"), raster("BMP"), raster("TIFF"), raster("GIF"), raster("WEBP"),
               png[:40],  # a truncated PNG: decoding, later, reports it for that file
               ct[132:]]  # DICOM without its preamble: decode_image takes it by its name
    intake = read_uploads([(f"f{i}.dcm", data) for i, data in enumerate(formats)], LIMITS)
    assert len(intake.files) == len(formats) and intake.notes == []
    with pytest.raises(EmptyStudy):
        read_uploads([("bare.bin", ct[132:])], LIMITS)


@pytest.mark.parametrize("name, data", [
    ("study.zip", None), ("scan.png", None), ("scans.tar.gz", b"anything"),
    ("scan.png", gzip.compress(b"x" * 100, mtime=0)), ("scan.dcm", b"Rar!\x1a\x07\x00" + bytes(50))])
def test_an_archive_among_uploaded_files_is_refused(png, name, data):
    data = data if data is not None else zip_bytes([("a.png", png)])
    with pytest.raises(UnsafeArchive) as caught:
        read_uploads([("first.png", png), (name, data)], LIMITS)
    assert name in caught.value.message and "'archive'" in caught.value.message


@pytest.mark.parametrize("read", ["uploads", "archive"])
def test_over_the_image_limit_or_without_images_is_refused(png, read):
    def study(files, limits=LIMITS):
        if read == "uploads":
            return read_uploads(files, limits)
        return read_archive(zip_bytes(files), limits)

    pngs = [(f"{i}.png", png) for i in range(4)]
    assert len(study(pngs[:3], Limits(3, MiB)).files) == 3
    with pytest.raises(StudyTooLarge, match="more than 3 images, the most"):
        study(pngs, Limits(3, MiB))
    with pytest.raises(StudyTooLarge, match="add up to more than"):
        study(pngs[:3] + [("notes.txt", b"x")], Limits(5, 3 * len(png)))
    with pytest.raises(EmptyStudy) as caught:
        study([("notes.txt", b"hello"), ("blank.png", b"")])
    assert caught.value.message == (
        "The upload holds no image the app can read (PNG, JPEG, BMP, TIFF or DICOM). "
        "Skipped 1 file that is not an image: notes.txt. Skipped 1 empty file: blank.png.")


def test_a_long_list_of_skipped_files_is_cut_short(png):
    uploads = [(f"note{i}.txt", b"text") for i in range(15)] + [("a.png", png)]
    note = read_uploads(uploads, LIMITS).notes[0]
    assert note.startswith("Skipped 15 files that are not images: note0.txt, ")
    assert "note9.txt and 5 more." in note and "note10" not in note


def test_archive_with_folders_and_clutter_gives_its_images_in_archive_order(ct, png):
    data = zip_bytes([
        ("study/", b""), ("study/series1/", b""), ("study/series1/IM2.dcm", ct),
        ("study/DICOMDIR", dicomdir_file()), ("study/README.txt", b"exported by a viewer"),
        ("study/.DS_Store", b"\x00\x00\x00\x01Bud1"), ("__MACOSX/study/._IM2.dcm", b"\x00\x05"),
        ("study/series1/IM1.dcm", ct), ("study/empty.dcm", b""), ("study/photo.png", png)])
    intake = read_archive(data, LIMITS)
    assert names(intake) == ["IM2.dcm", "IM1.dcm", "photo.png"]
    assert intake.files[0].data == ct and intake.files[2].data == png
    assert intake.notes == [
        "Skipped 4 files that are not images: DICOMDIR, README.txt, .DS_Store, ._IM2.dcm.",
        "Skipped 1 empty file: empty.dcm."]


@pytest.mark.parametrize("entry, shown", [
    *[(entry, entry) for entry in (
        "../evil.png", "study/../../evil.png", "/etc/cron.d/evil.png", "C:\\evil.png",
        "C:/evil.png", "\\\\server\\share\\evil.png", "study\\..\\..\\evil.png", "study/..")],
    ("x" * 300 + "/../evil.png", "x" * 79 + "\u2026")])  # a long name is cut
def test_entries_that_climb_out_are_refused(png, entry, shown):
    with pytest.raises(UnsafeArchive) as caught:
        read_archive(zip_bytes([("ok.png", png), (entry, png)]), LIMITS)
    assert f"'{shown}' points outside the archive" in caught.value.message


@pytest.mark.parametrize("entry, kind", [
    *[(f"sub/{name}", "png") for name in ("inner.zip", "scans.TAR", "a.tgz", "b.gz", "c.bz2",
                                           "d.xz", "e.7z", "f.rar")],  # by name
    *[("IM0001.dcm", kind) for kind in ("zip", "empty zip", "gzip", "bzip2", "xz", "7z",
                                        "tar")]])  # by content, under an innocent name
def test_nested_archives_are_refused(png, entry, kind):
    inner = {"zip": lambda: zip_bytes([("a.png", png)]), "empty zip": lambda: zip_bytes([]),
             "gzip": lambda: gzip.compress(png), "bzip2": lambda: bz2.compress(png),
             "xz": lambda: lzma.compress(png), "7z": lambda: b"7z\xbc\xaf\x27\x1c" + bytes(30),
             "tar": lambda: tar_bytes(png), "png": lambda: png}[kind]()
    with pytest.raises(UnsafeArchive) as caught:
        read_archive(zip_bytes([("a.png", png), (entry, inner)]), LIMITS)
    assert f"another archive ('{entry}')" in caught.value.message


@pytest.mark.parametrize("encrypted, error, words", [
    (True, UnsafeArchive, "is encrypted"),
    (False, UnsupportedImage, "compression method")])  # bzip2 inflates in unbounded steps
def test_encrypted_or_bzip2_entries_are_refused(png, encrypted, error, words):
    if encrypted:
        data = patch_entry(zip_bytes([("a.png", png)]), flags=0x1)
    else:
        data = zip_bytes([("a.png", png)], compression=zipfile.ZIP_BZIP2)
    with pytest.raises(error, match=words):
        read_archive(data, LIMITS)


def never_opened(*_args, **_kwargs):
    pytest.fail("an entry was opened for reading")


def test_a_zip_bomb_is_refused_from_its_ratio_without_inflating_it(bomb, monkeypatch):
    assert len(bomb) < MiB  # 200 MB declared: well under the default 512 MiB limit
    error, peak = peak_memory(lambda: read_archive(bomb, LIMITS))
    assert isinstance(error, UnsafeArchive) and peak < 4 * MiB
    assert "'scan.dcm' inflates more than 200 times" in error.message and "bomb" in error.message
    monkeypatch.setattr(zipfile.ZipFile, "open", never_opened)
    with pytest.raises(UnsafeArchive):
        read_archive(bomb, LIMITS)


def test_declared_sizes_over_the_byte_limit_are_refused_before_reading(bomb, png,
                                                                       monkeypatch):
    with pytest.raises(StudyTooLarge, match="add up to more than 100 MiB"):
        read_archive(bomb, Limits(max_images=10, max_bytes=100 * MiB, max_ratio=10_000))
    data = zip_bytes([(f"{i}.png", png) for i in range(3)], zipfile.ZIP_STORED)
    monkeypatch.setattr(zipfile.ZipFile, "open", never_opened)
    with pytest.raises(StudyTooLarge):
        read_archive(data, Limits(max_images=10, max_bytes=3 * len(png) - 1))


def test_a_small_entry_may_compress_far_beyond_the_ratio(png):
    data = zip_bytes([("a.png", png), ("flat.dcm", make.xray_file(np.zeros((256, 256))))])
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo("flat.dcm")
    assert info.file_size > 200 * info.compress_size  # under 1 MiB: allowed
    assert names(read_archive(data, LIMITS)) == ["a.png", "flat.dcm"]


@pytest.mark.parametrize("zipfile_cuts_off", [True, False])
def test_a_bomb_whose_declared_size_lies_is_refused_without_inflating_it(
        bomb, monkeypatch, zipfile_cuts_off):
    """1000 bytes declared passes the ratio check. zipfile stops at the declared size; were
    it ever not to, intake's own count still stops it."""
    lying = patch_entry(bomb, size=1000)
    assert zipfile.ZipFile(io.BytesIO(lying)).getinfo("scan.dcm").file_size == 1000
    real_open = zipfile.ZipFile.open

    def generous(self, *args, **kwargs):
        stream = real_open(self, *args, **kwargs)
        stream._left = BOMB_BYTES  # zipfile's own cut-off, undone
        return stream

    if not zipfile_cuts_off:
        monkeypatch.setattr(zipfile.ZipFile, "open", generous)
    error, peak = peak_memory(lambda: read_archive(lying, LIMITS))
    assert isinstance(error, UnsafeArchive) and peak < 8 * MiB
    assert "does not match its declared size" in error.message


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_an_entry_shorter_or_longer_than_declared_is_refused(png, compression):
    data = zip_bytes([("a.png", png)], compression)
    for size in (len(png) - 1, len(png) + 1):
        with pytest.raises(UnsafeArchive):
            read_archive(patch_entry(data, size=size), LIMITS)


def test_inflating_stops_once_the_study_holds_its_byte_limit(png):
    archive = zipfile.ZipFile(io.BytesIO(zip_bytes([("a.png", png)])))
    with pytest.raises(StudyTooLarge):
        intake_module._inflate(archive, archive.infolist()[0], len(png) - 1, LIMITS)
    assert intake_module._inflate(archive, archive.infolist()[0], len(png), LIMITS) == png


def test_more_entries_than_examined_are_refused(png):
    tiny = [(f"{i}.txt", b"x") for i in range(11)]
    with pytest.raises(StudyTooLarge, match="more than 10 entries"):
        read_archive(zip_bytes(tiny), Limits(max_images=5, max_bytes=MiB, max_entries=10))
    assert Limits(max_images=1, max_bytes=MiB).entries == 104  # the default: 4 x + 100
    with pytest.raises(StudyTooLarge):
        read_archive(zip_bytes([(f"{i}.txt", b"x") for i in range(105)] + [("a.png", png)]),
                     Limits(max_images=1, max_bytes=MiB))


@pytest.mark.parametrize("kind", ["png", "text", "empty", "truncated zip", "gzip"])
def test_something_other_than_a_zip_is_unsupported(png, kind):
    data = {"png": png, "text": b"not an archive", "empty": b"",
            "truncated zip": zip_bytes([("a.png", png)])[:-30],
            "gzip": gzip.compress(png)}[kind]
    with pytest.raises(UnsupportedImage) as caught:
        read_archive(data, LIMITS)
    assert caught.value.message == "The archive is not a readable .zip file."


WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
DISK_EVENTS = {"tempfile.mkstemp", "tempfile.mkdtemp", "os.mkdir", "os.rename", "os.symlink"}
_HOOKED: set = set()
_RECORDING: list[list] = []  # an audit hook cannot be removed: one, recording when asked


def _record(event: str, args: tuple) -> None:
    if _RECORDING and (event in DISK_EVENTS or (
            event == "open" and isinstance(args[2], int) and args[2] & WRITE_FLAGS)):
        _RECORDING[-1].append((event, args[0]))


@contextlib.contextmanager
def disk_writes():
    """Files opened for writing, folders and temporary files made inside the block."""
    if _record not in _HOOKED:
        sys.addaudithook(_record)
        _HOOKED.add(_record)
    _RECORDING.append(events := [])
    try:
        yield events
    finally:
        _RECORDING.remove(events)


def test_reading_an_archive_writes_nothing_to_disk(ct, png, tmp_path):
    data = zip_bytes([("study/", b""), ("study/a/IM1.dcm", ct), ("study/b.png", png),
                      ("__MACOSX/study/._b.png", b"\x00"), ("notes.txt", b"x")])
    with disk_writes() as events:
        intake = read_archive(data, LIMITS)
        with pytest.raises(UnsafeArchive):
            read_archive(zip_bytes([("../../tmp/evil.png", png)]), LIMITS)
    assert events == [] and names(intake) == ["IM1.dcm", "b.png"]
    with disk_writes() as events:
        (tmp_path / "probe").write_bytes(b"x")
        os.mkdir(tmp_path / "folder")
    assert len(events) == 2  # the recorder sees writes and folders
