"""Study files -> reading order: DICOM grouped by series, each series in slice order.

File names say nothing reliable about slice order (``IM10`` sorts before ``IM2``), so
only the DICOM header decides: InstanceNumber, then the position along the slice
normal, then upload order. Only the header attributes below are parsed, never pixels.
Patient ID and name are read for one purpose, to warn when an upload mixes patients:
they are compared as keyed digests that live only inside one call and are never
returned, stored or worded.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import warnings
from dataclasses import dataclass

from inference.anatomy import KEYWORDS as ANATOMY_KEYWORDS
from inference.anatomy import anatomy_warning, body_part
from inference.preprocess import is_dicom

from .intake import (DICOM_READ_ERRORS, DICOM_SUFFIXES, StudyFile, dicom_header,
                     raster_signature)

HEADER_KEYWORDS = ["SeriesInstanceUID", "StudyInstanceUID", "InstanceNumber",
                   "ImagePositionPatient", "ImageOrientationPatient", "Modality",
                   "PatientID", "PatientName", *ANATOMY_KEYWORDS]
UID_CHARS = 64


@dataclass(frozen=True)
class OrderedFile:
    file: StudyFile
    series_uid: str | None  # SeriesInstanceUID; None for other images
    instance_number: int | None  # InstanceNumber; None for other images or when absent
    dicom_modality: str | None  # the Modality attribute (CT, CR, DX...); None otherwise


@dataclass(frozen=True)
class _Header:
    """What ordering needs from one DICOM header, patient digests included: it never
    leaves order_files."""
    series_uid: str | None
    study_uid: str | None
    instance_number: int | None
    position: float | None
    modality: str | None
    patient: tuple[bytes | None, bytes | None]  # keyed digests of PatientID, PatientName
    body_part: str | None  # what the file says it shows


def order_files(files: list[StudyFile]) -> tuple[list[OrderedFile], list[str]]:
    """Files in reading order (DICOM series by first appearance, each in slice order,
    then other images in upload order) and plain-English warnings about the mix."""
    key = secrets.token_bytes(32)  # digests from one call cannot be matched with another's
    headers = [_read_header(file, key) for file in files]
    series: dict[str | None, list[int]] = {}
    others = []
    for index, header in enumerate(headers):
        if header is None:
            others.append(index)
        else:
            series.setdefault(header.series_uid, []).append(index)
    ordered = []
    for indexes in series.values():
        for index in sorted(indexes, key=lambda i: _slice_key(headers[i], i)):
            header = headers[index]
            ordered.append(OrderedFile(files[index], header.series_uid,
                                       header.instance_number, header.modality))
    ordered += [OrderedFile(files[index], None, None, None) for index in others]
    rasters = sum(1 for index in others if _is_raster(files[index]))
    return ordered, _warnings([h for h in headers if h is not None], len(series), rasters)


def _slice_key(header: _Header, index: int) -> tuple:
    """Numbered slices first, by number; then by position (those without last); then
    upload order."""
    number, position = header.instance_number, header.position
    return (number is None, number or 0, position is None, position or 0.0, index)


def _is_raster(file: StudyFile) -> bool:
    """Decided as decode_image decides: DICOM by content, then raster by content, then
    DICOM by a ``.dcm`` name."""
    if is_dicom(file.data):
        return False
    return raster_signature(file.data) or not file.name.lower().endswith(DICOM_SUFFIXES)


def _read_header(file: StudyFile, key: bytes) -> _Header | None:
    """The ordering attributes of a DICOM file; None for other images and for headers
    that cannot be read (decoding reports those files later)."""
    if _is_raster(file):
        return None
    dataset = dicom_header(file.data, HEADER_KEYWORDS)
    if dataset is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings may quote element values
            if not any(keyword in dataset for keyword in HEADER_KEYWORDS):
                return None  # a forced parse of something else, or a broken header
            patient = (_digest(key, _text(dataset, "PatientID")),
                       _digest(key, _text(dataset, "PatientName", person=True)))
            return _Header(
                series_uid=_uid(_text(dataset, "SeriesInstanceUID")),
                study_uid=_uid(_text(dataset, "StudyInstanceUID")),
                instance_number=_instance_number(dataset),
                position=_position(dataset),
                modality=_modality(_text(dataset, "Modality")),
                patient=patient, body_part=body_part(dataset))
    except DICOM_READ_ERRORS:
        return None


def _text(dataset, keyword: str, person: bool = False) -> str:
    """An attribute as stripped text; '' when absent or unreadable."""
    try:
        value = dataset.get(keyword)
    except DICOM_READ_ERRORS:
        return ""
    text = "" if value is None else str(value).strip()
    return text.rstrip("^ ").upper() if person else text


def _digest(key: bytes, text: str) -> bytes | None:
    if not text:
        return None  # blank (anonymised) attributes say nothing about identity
    return hmac.new(key, text.encode("utf-8", "replace"), hashlib.sha256).digest()


def _uid(text: str) -> str | None:
    text = text.replace("\x00", "").strip()[:UID_CHARS]
    return text or None


def _modality(text: str) -> str | None:
    text = re.sub(r"[^A-Z0-9_ ]", "", text.upper()).strip()[:16]
    return text or None


def _instance_number(dataset) -> int | None:
    number = _floats(dataset, "InstanceNumber", 1)
    if number is None or not number[0].is_integer():
        return None
    return int(number[0])


def _position(dataset) -> float | None:
    """Distance along the slice normal (the cross product of the row and column
    direction cosines); the z coordinate when the orientation is missing or invalid."""
    position = _floats(dataset, "ImagePositionPatient", 3)
    if position is None:
        return None
    orientation = _floats(dataset, "ImageOrientationPatient", 6)
    if orientation is not None:
        (rx, ry, rz), (cx, cy, cz) = orientation[:3], orientation[3:]
        normal = (ry * cz - rz * cy, rz * cx - rx * cz, rx * cy - ry * cx)
        if any(abs(component) > 1e-6 for component in normal):
            return sum(n * p for n, p in zip(normal, position))
    return position[2]


def _floats(dataset, keyword: str, count: int) -> list[float] | None:
    """Exactly ``count`` finite numbers, or None."""
    try:
        value = dataset.get(keyword)
        if value is None or value == "":
            return None
        values = list(value) if count > 1 or isinstance(value, (list, tuple)) else [value]
        numbers = [float(item) for item in values]
    except DICOM_READ_ERRORS:
        return None
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        return None
    return numbers


def _warnings(headers: list[_Header], series_count: int, rasters: int) -> list[str]:
    """What the person should know about what was mixed in one upload; no identifiers."""
    notes = []
    if series_count > 1:
        notes.append(f"The upload holds {series_count} series; each is ordered on its own "
                     "and listed in turn.")
    studies = {h.study_uid for h in headers if h.study_uid}
    if len(studies) > 1:
        notes.append(f"The upload holds images from {len(studies)} different studies "
                     "(examinations).")
    if any(len({h.patient[i] for h in headers if h.patient[i]}) > 1 for i in (0, 1)):
        notes.append("The upload holds images of more than one patient.")
    if headers and rasters:
        notes.append("The upload mixes DICOM files with other images (PNG, JPEG...): the "
                     "DICOM series come first, then the other images in upload order.")
    modalities = list(dict.fromkeys(h.modality for h in headers if h.modality))
    if len(modalities) > 1:
        named = ", ".join(modalities[:-1]) + " and " + modalities[-1]
        notes.append(f"The DICOM files are of different modalities: {named}.")
    elsewhere = [h.body_part for h in headers if anatomy_warning(h.body_part)]
    if elsewhere:
        named = ", ".join(dict.fromkeys(elsewhere))
        notes.append(f"{len(elsewhere)} of {len(headers)} DICOM files say they show "
                     f"{named}, not the chest: the models read chest images only.")
    return notes
