"""Keeping what the node receives: each image de-identified in the database as every
staged image is, grouped by study, within the study limits an upload has.

An instance received twice (a study sent again) is kept once. Objects that are not
images the node analyses (reports, presentation states, other modalities) are taken
and not kept, so a router that sends a whole study does not see it fail.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError

from extensions import db
from inference.registry import MODALITIES
from studies.deidentify import minimum_dicom
from studies.intake import Limits, too_many_bytes, too_many_images
from studies.models import utcnow_naive

from .models import NodeArrival, NodeInstance

# What a report sent by C-STORE must carry to be filed with its images (PS3.3 Patient
# and General Study modules); nothing else of the patient is kept.
PATIENT_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                      "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
                      "ReferringPhysicianName", "StudyInstanceUID")
REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


class Refused(Exception):
    """An instance the node will not keep, and why (for the sender's status)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.message, self.status = message, status


@dataclass(frozen=True)
class Received:
    kept: bool  # False: not an image the node analyses, or already kept
    study_uid: str | None


def modality_key(dicom_modality: str | None) -> str | None:
    """ct or xray for an image kind the models read; None for anything else."""
    for key, modality in MODALITIES.items():
        if dicom_modality in modality.dicom:
            return key
    return None


def read(data: bytes) -> pydicom.Dataset:
    """The data set (its pixels not decoded), or ``Refused``."""
    try:
        header = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, ValueError, TypeError, KeyError, EOFError, OSError) as exc:
        raise Refused(f"not a readable DICOM data set ({type(exc).__name__})",
                      0xC210) from exc
    missing = [name for name in REQUIRED if not str(header.get(name, "") or "").strip()]
    if missing:
        raise Refused(f"missing {', '.join(missing)}", 0xA900)
    return header


def patient_part(header: pydicom.Dataset) -> bytes:
    """The patient and study attributes alone, as a small data set."""
    kept = pydicom.Dataset()
    for keyword in PATIENT_ATTRIBUTES:
        if keyword in header:
            setattr(kept, keyword, header.data_element(keyword).value)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, kept, implicit_vr=False, little_endian=True,
                     enforce_file_format=False)
    return buffer.getvalue()


def keep(data: bytes, calling_ae: str, limits: Limits, keep_patient: bool,
         modalities: frozenset[str]) -> Received:
    """Store one received instance (its whole Part 10 bytes); ``Refused`` when it cannot
    be read or its study would outgrow the limits. Instances of a study whose analysis
    started are not kept: each study is analysed once; nor are images of a modality no
    rule analyses (``modalities``: ct, xray). Commits."""
    dataset = read(data)
    study_uid, modality = str(dataset.StudyInstanceUID), modality_key(dataset.get("Modality"))
    if modality not in modalities or "PixelData" not in dataset:
        return Received(False, study_uid)
    arrival = arrival_for(study_uid, modality, calling_ae, dataset if keep_patient else None)
    if (arrival.study_id is not None  # analysed (or being analysed) once already
            or db.session.get(NodeInstance, str(dataset.SOPInstanceUID)) is not None):
        return Received(False, study_uid)
    if arrival.images + 1 > limits.max_images:
        raise Refused(too_many_images(limits), 0xA700)
    if arrival.bytes + len(data) > limits.max_bytes:
        raise Refused(too_many_bytes(limits), 0xA700)
    db.session.add(NodeInstance(sop_uid=str(dataset.SOPInstanceUID), study_uid=study_uid,
                                data=minimum_dicom(data)))
    db.session.execute(update(NodeArrival).where(NodeArrival.study_uid == study_uid)
                       .values(images=NodeArrival.images + 1,
                               bytes=NodeArrival.bytes + len(data),
                               changed_at=utcnow_naive()))
    try:
        db.session.commit()
    except IntegrityError:  # the same instance, kept meanwhile by another association
        db.session.rollback()
        return Received(False, study_uid)
    return Received(True, study_uid)


def arrival_for(study_uid: str, modality: str, calling_ae: str,
                header: pydicom.Dataset | None) -> NodeArrival:
    """The study's row, made on its first instance (associations racing: one wins)."""
    row = db.session.get(NodeArrival, study_uid)
    if row is not None:
        return row
    db.session.add(NodeArrival(study_uid=study_uid, modality=modality,
                               calling_ae=calling_ae[:16], images=0, bytes=0,
                               changed_at=utcnow_naive(),
                               patient=patient_part(header) if header is not None else None))
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
    return db.session.get(NodeArrival, study_uid)
