"""Study intake: uploads and .zip archives -> candidate images, hostile archives refused.

The archives are real zips written with zipfile; the hostile ones (a 200 MB zip bomb,
entries whose declared size lies, encrypted flags) are patched at the byte level, and
the bomb tests measure with tracemalloc that it is never inflated.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import struct
import sys
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
CENTRAL_HEADER = b"PK\x01\x02"
LOCAL_HEADER = b"PK\x03\x04"


def zip_bytes(entries, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """``entries``: (name, bytes) pairs; a name ending in '/' is a folder entry."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def patch_entry(data: bytes, *, size: int | None = None, flags: int | None = None) -> bytes:
    """The first entry's declared uncompressed size or flags rewritten in both headers."""
    patched = bytearray(data)
    for signature, size_at, flags_at in ((CENTRAL_HEADER, 24, 8), (LOCAL_HEADER, 22, 6)):
        start = patched.index(signature)
        if size is not None:
            struct.pack_into("<I", patched, start + size_at, size)
        if flags is not None:
            struct.pack_into("<H", patched, start + flags_at, flags)
    return bytes(patched)


def raster(fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def dicomdir_file() -> bytes:
    """pydicom's sample DICOMDIR: a real media index, with patient records."""
    with open(get_testdata_file("DICOMDIR"), "rb") as file:
        return file.read()


@pytest.fixture(scope="module")
def ct() -> bytes:
    return make.ct_file(make.hu_phantom(32))


@pytest.fixture(scope="module")
def png() -> bytes:
    return png_bytes(size=(16, 16))


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """200 MB of zeros deflated to about 200 kB, written in 1 MB steps."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("scan.dcm", "w") as stream:
            chunk = bytes(MiB)
            for _ in range(BOMB_BYTES // MiB):
                stream.write(chunk)
    return buffer.getvalue()


@contextlib.contextmanager
def peak_memory():
    """The peak of Python allocations inside the block, in bytes: {'peak': n}."""
    result = {}
    tracemalloc.start()
    try:
        yield result
    finally:
        result["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def names(intake) -> list[str]:
    return [file.name for file in intake.files]


# Uploads: several files --------------------------------------------------------------

def test_uploads_keep_images_in_order_and_skip_the_rest_with_notes(ct, png):
    uploads = [("b.png", png), ("folder/a.dcm", ct), ("README.txt", b"read me"),
               (".DS_Store", b"\x00\x00\x00\x01Bud1"), ("DICOMDIR", dicomdir_file()),
               ("empty.png", b""), ("Thumbs.db", b"\xd0\xcf\x11\xe0"), ("c.png", png)]
    intake = read_uploads(uploads, LIMITS)
    assert names(intake) == ["b.png", "a.dcm", "c.png"]
    assert intake.files[1] == StudyFile("a.dcm", ct)
    assert intake.notes == [
        "Skipped 4 files that are not images: README.txt, .DS_Store, DICOMDIR, Thumbs.db.",
        "Skipped 1 empty file: empty.png."]


def test_upload_names_are_base_names_only(png):
    intake = read_uploads([("C:\\Users\\x\\scan.png", png), ("../../etc/a.png", png),
                           (None, png), ("dir/\x1bb\x07.png", png)], LIMITS)
    assert names(intake) == ["scan.png", "a.png", "file 3", "b.png"]


def test_raster_signatures_are_admitted_without_decoding(png):
    formats = [raster("JPEG"), raster("BMP"), raster("TIFF"), raster("GIF"), raster("WEBP"),
               png[:40]]  # a truncated PNG: decoding, later, reports it for that file
    intake = read_uploads([(f"f{i}", data) for i, data in enumerate(formats)], LIMITS)
    assert len(intake.files) == len(formats) and intake.notes == []


def test_a_dicomdir_under_another_name_is_skipped_by_its_sop_class(ct):
    intake = read_uploads([("index.dcm", dicomdir_file()), ("slice.dcm", ct)], LIMITS)
    assert names(intake) == ["slice.dcm"]
    assert intake.notes == ["Skipped 1 file that is not an image: index.dcm."]


def test_dicom_without_preamble_is_admitted_by_its_dcm_name(ct):
    bare = ct[132:]  # what decode_image reads as DICOM when the name says .dcm
    assert names(read_uploads([("bare.dcm", bare)], LIMITS)) == ["bare.dcm"]
    with pytest.raises(EmptyStudy):
        read_uploads([("bare.bin", bare)], LIMITS)


@pytest.mark.parametrize("name, data", [
    ("study.zip", None), ("scan.png", None), ("scans.tar.gz", b"anything"),
    ("scan.png", gzip.compress(b"x" * 100)), ("scan.dcm", b"Rar!\x1a\x07\x00" + bytes(50))])
def test_an_archive_among_uploaded_files_is_refused(png, name, data):
    data = data if data is not None else zip_bytes([("a.png", png)])
    with pytest.raises(UnsafeArchive) as caught:
        read_uploads([("first.png", png), (name, data)], LIMITS)
    assert name in caught.value.message and "'archive'" in caught.value.message


def test_uploads_over_the_image_limit_are_refused(png):
    limits = Limits(max_images=3, max_bytes=MiB)
    assert len(read_uploads([("a.png", png)] * 3, limits).files) == 3
    with pytest.raises(StudyTooLarge) as caught:
        read_uploads([("a.png", png)] * 4, limits)
    assert "more than 3 images" in caught.value.message


def test_uploads_over_the_byte_limit_are_refused(png):
    with pytest.raises(StudyTooLarge) as caught:
        read_uploads([("a.png", png), ("b.png", png)], Limits(10, len(png) * 2 - 1))
    assert "add up to more than" in caught.value.message


def test_uploads_without_any_image_are_an_empty_study():
    with pytest.raises(EmptyStudy) as caught:
        read_uploads([("notes.txt", b"hello"), ("blank.png", b"")], LIMITS)
    assert caught.value.message.startswith("The upload holds no image the app can read")
    assert "notes.txt" in caught.value.message


def test_a_long_list_of_skipped_files_is_cut_short(png):
    uploads = [(f"note{i}.txt", b"text") for i in range(15)] + [("a.png", png)]
    note = read_uploads(uploads, LIMITS).notes[0]
    assert note.startswith("Skipped 15 files that are not images: note0.txt, ")
    assert "note9.txt and 5 more." in note and "note10" not in note


# Archives: one .zip ------------------------------------------------------------------

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
        "Skipped 4 files that are not images: DICOMDIR, .DS_Store, ._IM2.dcm, README.txt.",
        "Skipped 1 empty file: empty.dcm."]


@pytest.mark.parametrize("entry", [
    "../evil.png", "study/../../evil.png", "/etc/cron.d/evil.png", "C:\\evil.png",
    "C:/evil.png", "\\\\server\\share\\evil.png", "study\\..\\..\\evil.png", "study/.."])
def test_entries_that_climb_out_are_refused(png, entry):
    with pytest.raises(UnsafeArchive) as caught:
        read_archive(zip_bytes([("ok.png", png), (entry, png)]), LIMITS)
    assert f"'{entry}'" in caught.value.message and "outside the archive" in caught.value.message


def test_a_long_entry_name_is_cut_in_the_message(png):
    entry = "x" * 300 + "/../evil.png"
    with pytest.raises(UnsafeArchive) as caught:
        read_archive(zip_bytes([(entry, png)]), LIMITS)
    assert len(caught.value.message) < 200 and "x" * 79 + "\u2026" in caught.value.message


@pytest.mark.parametrize("entry", ["inner.zip", "scans.TAR", "a.tgz", "b.gz", "c.bz2",
                                   "d.xz", "e.7z", "f.rar"])
def test_nested_archives_are_refused_by_name(png, entry):
    with pytest.raises(UnsafeArchive) as caught:
        read_archive(zip_bytes([("a.png", png), (f"sub/{entry}", png)]), LIMITS)
    assert "another archive" in caught.value.message and entry in caught.value.message


@pytest.mark.parametrize("inner", ["zip", "empty zip", "gzip", "bzip2", "xz", "7z", "tar"])
def test_nested_archives_are_refused_by_content_under_an_innocent_name(png, inner):
    import bz2
    import lzma
    import tarfile

    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        info = tarfile.TarInfo("a.png")
        info.size = len(png)
        archive.addfile(info, io.BytesIO(png))
    data = {"zip": zip_bytes([("a.png", png)]), "empty zip": zip_bytes([]),
            "gzip": gzip.compress(png), "bzip2": bz2.compress(png), "xz": lzma.compress(png),
            "7z": b"7z\xbc\xaf\x27\x1c" + bytes(30), "tar": tar.getvalue()}[inner]
    with pytest.raises(UnsafeArchive) as caught:
        read_archive(zip_bytes([("a.png", png), ("IM0001.dcm", data)]), LIMITS)
    assert "'IM0001.dcm'" in caught.value.message


def test_encrypted_entries_are_refused(png):
    data = patch_entry(zip_bytes([("a.png", png)]), flags=0x1)
    with pytest.raises(UnsafeArchive) as caught:
        read_archive(data, LIMITS)
    assert "encrypted" in caught.value.message


def test_compression_methods_that_inflate_unbounded_are_refused(png):
    data = zip_bytes([("a.png", png)], compression=zipfile.ZIP_BZIP2)
    with pytest.raises(UnsupportedImage) as caught:
        read_archive(data, LIMITS)
    assert "compression method" in caught.value.message


def test_a_zip_bomb_is_refused_from_its_ratio_without_inflating_it(bomb, monkeypatch):
    assert len(bomb) < MiB  # 200 MB declared: well under the default 512 MiB limit
    with peak_memory() as memory, pytest.raises(UnsafeArchive) as caught:
        read_archive(bomb, LIMITS)
    assert "zip bomb" in caught.value.message and "'scan.dcm'" in caught.value.message
    assert memory["peak"] < 4 * MiB
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *args, **kwargs: pytest.fail("read"))
    with pytest.raises(UnsafeArchive):
        read_archive(bomb, LIMITS)


def test_declared_sizes_over_the_byte_limit_are_refused_before_reading(bomb, png,
                                                                       monkeypatch):
    with pytest.raises(StudyTooLarge) as caught:
        read_archive(bomb, Limits(max_images=10, max_bytes=100 * MiB, max_ratio=10_000))
    assert "add up to more than 100 MiB" in caught.value.message
    data = zip_bytes([(f"{i}.png", png) for i in range(3)], zipfile.ZIP_STORED)
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *args, **kwargs: pytest.fail("read"))
    with pytest.raises(StudyTooLarge):
        read_archive(data, Limits(max_images=10, max_bytes=3 * len(png) - 1))


def test_a_small_entry_may_compress_far_beyond_the_ratio(png):
    data = zip_bytes([("a.png", png), ("flat.dcm", make.xray_file(np.zeros((256, 256))))])
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo("flat.dcm")
    assert info.file_size > 200 * info.compress_size  # under 1 MiB: allowed
    assert names(read_archive(data, LIMITS)) == ["a.png", "flat.dcm"]


def test_a_bomb_whose_declared_size_lies_is_refused_without_inflating_it(bomb):
    lying = patch_entry(bomb, size=1000)  # 1000 bytes declared: passes the ratio check
    assert zipfile.ZipFile(io.BytesIO(lying)).getinfo("scan.dcm").file_size == 1000
    with peak_memory() as memory, pytest.raises(UnsafeArchive) as caught:
        read_archive(lying, LIMITS)
    assert "does not match its declared size" in caught.value.message
    assert memory["peak"] < 8 * MiB


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_an_entry_shorter_or_longer_than_declared_is_refused(png, compression):
    data = zip_bytes([("a.png", png)], compression)
    for size in (len(png) - 1, len(png) + 1):
        with pytest.raises(UnsafeArchive):
            read_archive(patch_entry(data, size=size), LIMITS)


def test_inflating_stops_once_an_entry_gives_more_than_it_declared(bomb, monkeypatch):
    """Should zipfile ever stop holding an entry to its declared size, intake still does."""
    real_open = zipfile.ZipFile.open

    def generous(self, *args, **kwargs):
        stream = real_open(self, *args, **kwargs)
        stream._left = BOMB_BYTES  # zipfile's own cut-off at the declared size, undone
        return stream

    monkeypatch.setattr(zipfile.ZipFile, "open", generous)
    with peak_memory() as memory, pytest.raises(UnsafeArchive) as caught:
        read_archive(patch_entry(bomb, size=1000), LIMITS)
    assert "does not match its declared size" in caught.value.message
    assert memory["peak"] < 8 * MiB


def test_inflating_stops_once_the_study_holds_its_byte_limit(png):
    archive = zipfile.ZipFile(io.BytesIO(zip_bytes([("a.png", png)])))
    with pytest.raises(StudyTooLarge):
        intake_module._inflate(archive, archive.infolist()[0], len(png) - 1, LIMITS)
    assert intake_module._inflate(archive, archive.infolist()[0], len(png), LIMITS) == png


def test_more_entries_than_examined_are_refused(png):
    tiny = [(f"{i}.txt", b"x") for i in range(11)]
    with pytest.raises(StudyTooLarge) as caught:
        read_archive(zip_bytes(tiny), Limits(max_images=5, max_bytes=MiB, max_entries=10))
    assert "more than 10 entries" in caught.value.message
    assert Limits(max_images=1, max_bytes=MiB).entries == 104  # the default: 4 x + 100
    with pytest.raises(StudyTooLarge):
        read_archive(zip_bytes([(f"{i}.txt", b"x") for i in range(105)] + [("a.png", png)]),
                     Limits(max_images=1, max_bytes=MiB))


def test_archives_over_the_image_limit_are_refused(png):
    data = zip_bytes([(f"{i}.png", png) for i in range(6)])
    assert len(read_archive(data, Limits(max_images=6, max_bytes=MiB)).files) == 6
    with pytest.raises(StudyTooLarge) as caught:
        read_archive(data, Limits(max_images=5, max_bytes=MiB))
    assert "more than 5 images" in caught.value.message


@pytest.mark.parametrize("entries", [[], [("docs/", b"")],
                                     [("README.md", b"# scans"), ("a.png", b"")]])
def test_archives_without_any_image_are_an_empty_study(entries):
    with pytest.raises(EmptyStudy) as caught:
        read_archive(zip_bytes(entries), LIMITS)
    assert "PNG, JPEG, BMP, TIFF or DICOM" in caught.value.message


@pytest.mark.parametrize("kind", ["png", "text", "empty", "truncated zip", "gzip"])
def test_something_other_than_a_zip_is_unsupported(png, kind):
    data = {"png": png, "text": b"not an archive", "empty": b"",
            "truncated zip": zip_bytes([("a.png", png)])[:-30],
            "gzip": gzip.compress(png)}[kind]
    with pytest.raises(UnsupportedImage) as caught:
        read_archive(data, LIMITS)
    assert caught.value.message == "The archive is not a readable .zip file."


# Nothing reaches the disk -------------------------------------------------------------

_AUDIT = {"installed": False, "events": None}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
DISK_EVENTS = {"tempfile.mkstemp", "tempfile.mkdtemp", "os.mkdir", "os.rename",
               "os.symlink", "shutil.copyfile"}


def _record(event: str, args: tuple) -> None:
    events = _AUDIT["events"]
    if events is None:
        return
    if event in DISK_EVENTS or (event == "open" and isinstance(args[2], int)
                                and args[2] & WRITE_FLAGS):
        events.append((event, args[0]))


@contextlib.contextmanager
def disk_writes():
    """Files opened for writing, folders and temporary files made inside the block (an
    audit hook, which cannot be removed: one per process, recording only when asked)."""
    if not _AUDIT["installed"]:
        sys.addaudithook(_record)
        _AUDIT["installed"] = True
    _AUDIT["events"] = events = []
    try:
        yield events
    finally:
        _AUDIT["events"] = None


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
