"""An upload (several files, or one .zip) -> the candidate image files of a study.

Nothing here decodes an image or touches the disk: names inside an archive are only
ever shown, never used as paths. Every archive entry is checked (path, nesting,
encryption, compression method, declared size and ratio) before any is inflated, and
inflated in chunks that stop as soon as it gives more than it declared, so a crafted
archive is refused before it can cost memory. Files that are not images (folder
metadata, DICOMDIR indexes, read-me files) are skipped with a note, not refused.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field

from inference.errors import UnsupportedImage
from inference.preprocess import is_dicom

from .errors import EmptyStudy, StudyTooLarge, UnsafeArchive

MiB = 1 << 20
CHUNK = MiB
RATIO_FLOOR = MiB  # entries up to this size may compress as well as they like
NOTE_NAMES = 10  # names listed in a note before "and N more"
SHOWN_CHARS = 80  # an entry name quoted in a message is cut to this length
NAME_CHARS = 255

ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar")
ARCHIVE_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08", b"\x1f\x8b", b"\xfd7zXZ\x00",
                 b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07")
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"II+\x00",
               b"MM\x00+", b"GIF87a", b"GIF89a")
BMP_HEADER_SIZES = {12, 16, 40, 52, 56, 64, 108, 124}
DICOM_SUFFIXES = (".dcm", ".dicom")  # decode_image reads these even without a preamble
SKIPPED_NAMES = {"dicomdir", "thumbs.db", "desktop.ini"}
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # the SOP class of a DICOMDIR
READABLE_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}  # both inflate in bounded steps
# What pydicom may raise on a hostile file (as in inference.dicom._read).
DICOM_READ_ERRORS = (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError,
                     EOFError, NotImplementedError, OverflowError, RuntimeError, struct.error)


@dataclass(frozen=True)
class StudyFile:
    name: str  # the base name, for display only: never used as a path
    data: bytes


@dataclass
class Intake:
    files: list[StudyFile]  # candidate images, in upload or archive order
    notes: list[str] = field(default_factory=list)  # for the user: skipped files


@dataclass(frozen=True)
class Limits:
    max_images: int
    max_bytes: int  # total uncompressed bytes
    max_entries: int | None = None  # archive entries examined; None: 4 * max_images + 100
    max_ratio: int = 200  # an entry inflating more than this times its compressed size

    @property
    def entries(self) -> int:
        return self.max_entries if self.max_entries is not None else 4 * self.max_images + 100


def read_uploads(uploads: list[tuple[str | None, bytes]], limits: Limits) -> Intake:
    """Several uploaded files -> candidate images; an archive among them is refused, as a
    study comes either as files or as one archive, never as a mix."""
    if sum(len(data) for _, data in uploads) > limits.max_bytes:
        raise StudyTooLarge(too_many_bytes(limits))
    sorter = _Sorter(limits)
    for index, (filename, data) in enumerate(uploads, 1):
        name = display_name(filename, index)
        if skipped_by_name(filename or "", name):
            sorter.skipped.append(name)
            continue
        if name.lower().endswith(ARCHIVE_SUFFIXES) or _is_archive_data(data):
            raise UnsafeArchive(f"'{shown(name)}' is an archive: send one archive in the "
                                "'archive' field, or the images themselves, not both.")
        sorter.add(name, data)
    return sorter.finish()


def read_archive(data: bytes, limits: Limits) -> Intake:
    """One .zip -> candidate images, every entry checked before it is inflated."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
            struct.error, NotImplementedError) as exc:
        raise UnsupportedImage("The archive is not a readable .zip file.") from exc
    with archive:
        sorter = _Sorter(limits)
        budget = limits.max_bytes
        for info in _checked_entries(archive.infolist(), limits):
            name = display_name(info.filename)
            if skipped_by_name(info.filename, name):  # never inflated
                sorter.skipped.append(name)
                continue
            content = _inflate(archive, info, budget, limits)
            budget -= len(content)
            if _is_archive_data(content):
                raise UnsafeArchive(_nested(info.filename))
            sorter.add(name, content)
    return sorter.finish()


def _checked_entries(infos: list[zipfile.ZipInfo], limits: Limits) -> list[zipfile.ZipInfo]:
    """Every entry's metadata checked, before any is inflated; the files among them."""
    if len(infos) > limits.entries:
        raise StudyTooLarge(f"The archive holds more than {limits.entries} entries, the most "
                            "this server examines: split the study into smaller archives.")
    to_read, declared = [], 0
    for info in infos:
        entry = info.filename
        if _climbs_out(entry):
            raise UnsafeArchive(f"The archive entry '{shown(entry)}' points outside the "
                                "archive (an absolute path or '..'): the archive was refused.")
        if info.flag_bits & 0x1:
            raise UnsafeArchive(f"The archive entry '{shown(entry)}' is encrypted: send an "
                                "archive without a password.")
        if info.is_dir():
            continue
        to_read.append(info)
        if skipped_by_name(entry, display_name(entry)):
            continue
        if entry.lower().endswith(ARCHIVE_SUFFIXES):
            raise UnsafeArchive(_nested(entry))
        if info.compress_type not in READABLE_METHODS:
            raise UnsupportedImage(f"The archive entry '{shown(entry)}' uses a compression "
                                   "method this server does not read: use a standard .zip.")
        if info.file_size > max(RATIO_FLOOR, limits.max_ratio * info.compress_size):
            raise UnsafeArchive(f"The archive entry '{shown(entry)}' inflates more than "
                                f"{limits.max_ratio} times its compressed size (a 'zip "
                                "bomb'): the archive was refused.")
        declared += info.file_size
        if declared > limits.max_bytes:
            raise StudyTooLarge(too_many_bytes(limits))
    return to_read


def _inflate(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int,
             limits: Limits) -> bytes:
    """An entry's bytes, read in chunks that stop as soon as the entry gives more than it
    declared or than the study may still hold: declared sizes can lie."""
    chunks, size = [], 0
    lied = UnsafeArchive(f"The archive entry '{shown(info.filename)}' is damaged or does not "
                         "match its declared size: the archive was refused.")
    try:
        with archive.open(info) as stream:
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                if size > info.file_size:
                    raise lied
                if size > budget:
                    raise StudyTooLarge(too_many_bytes(limits))
                chunks.append(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
            NotImplementedError, RuntimeError) as exc:
        raise lied from exc
    if size != info.file_size:
        raise lied
    return b"".join(chunks)


class _Sorter:
    """Sorts files into candidates and skipped ones, and words the notes."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.files: list[StudyFile] = []
        self.skipped: list[str] = []
        self.empty: list[str] = []

    def add(self, name: str, data: bytes) -> None:
        if not data:
            self.empty.append(name)
        elif not _looks_like_image(name, data) or _is_dicom_directory(data):
            self.skipped.append(name)
        else:
            self.files.append(StudyFile(name, data))
            if len(self.files) > self.limits.max_images:
                raise StudyTooLarge(too_many_images(self.limits))

    def finish(self) -> Intake:
        notes = []
        if self.skipped:
            notes.append(_note(self.skipped, "file that is not an image",
                               "files that are not images"))
        if self.empty:
            notes.append(_note(self.empty, "empty file", "empty files"))
        if not self.files:
            raise EmptyStudy("The upload holds no image the app can read (PNG, JPEG, BMP, "
                             "TIFF or DICOM)." + (" " + " ".join(notes) if notes else ""))
        return Intake(self.files, notes)


def display_name(path: str | None, index: int | None = None) -> str:
    """The base name of an upload or entry, safe to show: no folders, no control
    characters, bounded length."""
    base = (path or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = re.sub(r"[\x00-\x1f\x7f]", "", base).strip()[:NAME_CHARS]
    if not base:
        base = f"file {index}" if index is not None else "unnamed file"
    return base


def skipped_by_name(path: str, name: str) -> bool:
    """Folder metadata and indexes, recognised by name (and so never read)."""
    parts = path.replace("\\", "/").split("/")
    return "__MACOSX" in parts or name.startswith(".") or name.lower() in SKIPPED_NAMES


def shown(name: str) -> str:
    """A name quoted in a message, cut so a crafted name cannot flood it."""
    name = re.sub(r"[\x00-\x1f\x7f]", "?", name)
    return name if len(name) <= SHOWN_CHARS else name[:SHOWN_CHARS - 1] + "\u2026"


def _climbs_out(entry: str) -> bool:
    """An absolute name (``/x``, ``C:\\x``, ``\\\\server``) or one with a ``..`` part."""
    path = entry.replace("\\", "/")
    if path.startswith("/") or re.match(r"[A-Za-z]:", path):
        return True
    return ".." in path.split("/")


def _is_archive_data(data: bytes) -> bool:
    if data.startswith(ARCHIVE_MAGIC) or data[257:262] == b"ustar":
        return True
    return data[:3] == b"BZh" and data[3:4].isdigit() and data[4:10] == b"1AY&SY"


def _looks_like_image(name: str, data: bytes) -> bool:
    """A raster signature or DICOM, by content; a ``.dcm`` name admits DICOM without its
    preamble, as decode_image does. Images are not decoded here."""
    return is_dicom(data) or raster_signature(data) or name.lower().endswith(DICOM_SUFFIXES)


def raster_signature(data: bytes) -> bool:
    """PNG, JPEG, TIFF, GIF, WebP or BMP magic bytes."""
    if data.startswith(IMAGE_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return True
    return (data[:2] == b"BM" and len(data) >= 18
            and struct.unpack_from("<I", data, 14)[0] in BMP_HEADER_SIZES)


def _is_dicom_directory(data: bytes) -> bool:
    """A DICOMDIR under another name: an index of a media's files, not an image."""
    if not is_dicom(data):
        return False
    dataset = dicom_header(data, ["SOPClassUID"])
    meta = getattr(dataset, "file_meta", None)
    return str(getattr(meta, "MediaStorageSOPClassUID", "") or "") == MEDIA_STORAGE_DIRECTORY


def dicom_header(data: bytes, keywords: list[str]):
    """Only these attributes of a DICOM file (and its file meta), never its pixels; None
    when it cannot be parsed. Call inside ``warnings.catch_warnings`` when reading values:
    pydicom's warnings may quote them."""
    import pydicom
    from pydicom.errors import BytesLengthException, InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True,
                                   specific_tags=keywords)
    except (*DICOM_READ_ERRORS, InvalidDicomError, BytesLengthException):
        return None


def _nested(entry: str) -> str:
    return (f"The archive holds another archive ('{shown(entry)}'): send the images in one "
            "archive, not nested.")


def _note(names: list[str], one: str, many: str) -> str:
    listed = ", ".join(shown(name) for name in names[:NOTE_NAMES])
    if len(names) > NOTE_NAMES:
        listed += f" and {len(names) - NOTE_NAMES} more"
    return f"Skipped {len(names)} {one if len(names) == 1 else many}: {listed}."


def too_many_images(limits: Limits) -> str:
    return (f"The study holds more than {limits.max_images} images, the most this server "
            "analyses at once: split it into smaller studies.")


def too_many_bytes(limits: Limits) -> str:
    size = limits.max_bytes
    shown_size = f"{size / MiB:.0f} MiB" if size >= MiB else f"{size} bytes"
    return (f"The study's files add up to more than {shown_size} uncompressed, "
            "the most this server takes at once: split it into smaller studies.")
