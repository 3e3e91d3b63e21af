"""DICOM kept for processing holds only what analysis and ordering need.

Uploaded and PACS-fetched files wait in ``study_files`` until their image is analysed.
Before they are stored, every attribute is dropped except the pixel module and the few
that ordering and the report need (the list below): an allow-list, so that the patient,
physician, institution, accession, date and device attributes that PS3.15's Basic
Application Level Confidentiality Profile lists are all gone, private tags and
sequences included, along with anything that profile does not name. Raster images
(PNG, JPEG...) are stored as sent: they carry no DICOM attributes.
"""

from __future__ import annotations

import io
import warnings
from pathlib import PurePosixPath

from inference.preprocess import is_dicom

from .intake import DICOM_READ_ERRORS, DICOM_SUFFIXES

KEPT_KEYWORDS = frozenset({
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
    "SeriesInstanceUID", "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient",
    "SliceLocation", "SliceThickness", "Modality", "BodyPartExamined", "AnatomicRegionSequence",
})
PIXEL_GROUPS = (0x0028, 0x7FE0)  # image pixel, palette, rescale, window, VOI; pixel data
KEPT_META = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")


def kept(element) -> bool:
    tag = element.tag
    if tag.is_private:
        return False
    return tag.group in PIXEL_GROUPS or element.keyword in KEPT_KEYWORDS


def minimum_dicom(data: bytes, name: str = "") -> bytes:
    """The file with only the kept attributes; raster images unchanged. A DICOM file
    that cannot be parsed is not kept at all (b""): its image then fails as unreadable,
    which it would have anyway."""
    if not (is_dicom(data) or name.lower().endswith(DICOM_SUFFIXES)):
        return data
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.errors import BytesLengthException, InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings may quote values
            source = pydicom.dcmread(io.BytesIO(data), force=True)
            target = Dataset()
            for element in source:
                if kept(element):
                    target.add(element)
            source_meta = getattr(source, "file_meta", None) or FileMetaDataset()
            meta = FileMetaDataset()
            for keyword in KEPT_META:
                if keyword in source_meta:
                    setattr(meta, keyword, source_meta.get(keyword))
            if "TransferSyntaxUID" not in meta:  # no file meta: pydicom read it implicit
                meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
            target.file_meta = meta
            target.preamble = b"\0" * 128
            buffer = io.BytesIO()
            target.save_as(buffer, enforce_file_format=False)
            return buffer.getvalue()
    except (*DICOM_READ_ERRORS, InvalidDicomError, BytesLengthException):
        return b""


def base_name(name: str | None) -> str:
    """A file's own name, without the folders (a zip's or a browser's) it came in."""
    return PurePosixPath((name or "").replace("\\", "/")).name[:255]
