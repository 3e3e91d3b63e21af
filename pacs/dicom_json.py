"""Reading QIDO-RS answers (DICOM JSON) into the plain dicts the app uses; anything
that is not DICOM JSON raises ValueError, which the client reports as garbage."""

from __future__ import annotations

import re

from pydicom.datadict import tag_for_keyword

_TAG = re.compile(r"[0-9A-Fa-f]{8}")  # DICOM JSON keys


def items(found) -> list[dict]:
    """The QIDO answer, if it is a list of DICOM JSON datasets (ValueError: garbage)."""
    if not isinstance(found, list) or not all(
            isinstance(item, dict) and all(map(_TAG.fullmatch, item)) for item in found):
        raise ValueError("not DICOM JSON")
    return found


def element_values(item: dict, keyword: str) -> list:
    element = item.get(f"{tag_for_keyword(keyword):08X}")
    if element is None:
        return []
    values = element.get("Value", []) if isinstance(element, dict) else None
    if not isinstance(values, list):
        raise ValueError("not a DICOM JSON element")
    return values


def text(item: dict, keyword: str, required: bool = False) -> str | None:
    found = element_values(item, keyword)
    value = found[0] if found else None
    if isinstance(value, dict):  # a person name: {"Alphabetic": "..."}
        value = value.get("Alphabetic")
    if required and value in (None, ""):
        raise ValueError(f"no {keyword}")
    return None if value in (None, "") else str(value)


def number(item: dict, keyword: str) -> int | None:
    try:
        return int(text(item, keyword))
    except (TypeError, ValueError):
        return None


def da_date(value: str | None) -> str | None:
    """DICOM DA (YYYYMMDD) as YYYY-MM-DD."""
    match = re.fullmatch(r"(\d{4})(\d\d)(\d\d)", value or "")
    return "-".join(match.groups()) if match else None


def tm_time(value: str | None) -> str | None:
    """DICOM TM (HH[MM[SS[.F]]]) as HH[:MM[:SS]]."""
    match = re.fullmatch(r"(\d\d)(\d\d)?(\d\d)?(?:\.\d+)?", value or "")
    return ":".join(part for part in match.groups() if part) if match else None


def study_fields(item: dict) -> dict:
    return {"study_uid": text(item, "StudyInstanceUID", True),
            "date": da_date(text(item, "StudyDate")),
            "time": tm_time(text(item, "StudyTime")),
            "description": text(item, "StudyDescription"),
            "modalities": [str(v) for v in element_values(item, "ModalitiesInStudy")],
            "series": number(item, "NumberOfStudyRelatedSeries"),
            "images": number(item, "NumberOfStudyRelatedInstances"),
            "accession": text(item, "AccessionNumber"),
            "patient_name": text(item, "PatientName"),
            "patient_id": text(item, "PatientID")}


def instance_fields(item: dict) -> dict:
    return {"series_uid": text(item, "SeriesInstanceUID", True),
            "sop_instance_uid": text(item, "SOPInstanceUID", True),
            "sop_class_uid": text(item, "SOPClassUID"),
            "modality": text(item, "Modality"),
            "instance_number": number(item, "InstanceNumber"),
            "series_description": text(item, "SeriesDescription"),
            "manufacturer": text(item, "Manufacturer")}
