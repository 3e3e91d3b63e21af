"""Fetch a PACS study's images into the study being run (the runner's ``ImageSource``).

The fetch happens under the worker's claim like every other write: bytes are staged
in fetch order while they arrive (memory holds one image), then given their reading
order once every header is known, so the study then looks like an uploaded one.
"""

from __future__ import annotations

import io

import pydicom
from sqlalchemy import delete, func, select, update

from audit import actions, trail
from audit.trail import Actor
from extensions import db
from inference.registry import modality_of_dicom
from studies.deidentify import minimum_dicom
from studies.errors import EmptyStudy, StudyTooLarge
from studies.intake import Limits, StudyFile, too_many_bytes, too_many_images
from studies.models import QUEUED, Study, StudyImage
from studies.models import StudyFile as StoredFile
from studies.ordering import OrderedFile, order_files
from studies.store import hold, new_study_id

from .client import PacsClient

STAGING = -1_000_000  # fetched bytes wait under index STAGING + k until ordered


def pacs_study(study_uid: str, modality: str, model: str, explain: bool,
               study_id: str | None = None, actor: Actor = trail.SYSTEM) -> Study:
    """A new study whose images a worker will fetch from the PACS, unsaved; its audit
    event goes with the commit that saves it."""
    study = Study(id=study_id or new_study_id(), status=QUEUED, modality=modality,
                  model=model, explain=explain, total=0, done=0, warnings=[], source="pacs",
                  pacs_study_uid=study_uid, owner_id=actor.user_id)
    trail.record(actions.ANALYSIS_STARTED, actor, study_id=study.id, source="pacs",
                 pacs_study_uid=study_uid, modality=modality, model=model)
    return study


def wanted(instance: dict, modality: str, own_name: str) -> bool:
    """An image of the chosen modality that this tool did not write itself."""
    return (modality_of_dicom(instance.get("modality"), modality)
            and instance.get("manufacturer") != own_name)


def header_only(data: bytes) -> bytes:
    """The instance without its pixels: enough to order it, a few kilobytes."""
    dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


class PacsSource:
    """Fetches a PACS study's images into the study being run (``ImageSource``), within
    the limits an upload has; ``write_back`` says whether its answer is to be written
    back once it is done."""

    def __init__(self, client: PacsClient, own_name: str, write_back: bool, limits: Limits):
        self.client, self.own_name, self.write_back = client, own_name, write_back
        self.limits = limits

    def fetch(self, study, token: str, lease_s: float) -> bool:
        if has_images(study.id):
            return True  # a worker taking over resumes; the images are there
        clear_staged(study.id)
        listed = self.client.instances(study.pacs_study_uid)
        instances = [i for i in listed if wanted(i, study.modality, self.own_name)]
        if not instances:
            raise EmptyStudy("The PACS study holds no image of the chosen modality.")
        if len(instances) > self.limits.max_images:
            raise StudyTooLarge(too_many_images(self.limits))
        headers, position, fetched = [], {}, 0
        for k, instance in enumerate(instances):
            data = self.client.retrieve(study.pacs_study_uid, instance["series_uid"],
                                        instance["sop_instance_uid"])
            fetched += len(data)
            if fetched > self.limits.max_bytes:
                raise StudyTooLarge(too_many_bytes(self.limits))
            if not stage_file(study.id, token, lease_s, k, data):
                return False
            headers.append(StudyFile(instance["sop_instance_uid"], header_only(data)))
            position[instance["sop_instance_uid"]] = k
        ordered, warnings = order_files(headers)
        skipped = len(listed) - len(instances)
        if skipped:
            warnings.append(f"Skipped {skipped} instances of other modalities or written "
                            f"by this tool.")
        return attach_staged(study.id, token, lease_s,
                             [(position[item.file.name], item) for item in ordered], warnings)


def stage_file(study_id: str, token: str, lease_s: float, k: int, data: bytes) -> bool:
    """Keep one fetched image's bytes (in fetch order) while the rest arrive."""
    if hold(study_id, token, lease_s).rowcount != 1:
        db.session.rollback()
        return False
    db.session.add(StoredFile(study_id=study_id, index=STAGING + k, data=minimum_dicom(data)))
    db.session.commit()
    return True


def clear_staged(study_id: str) -> None:
    """Drop bytes a stopped worker fetched but never ordered."""
    db.session.execute(delete(StoredFile).where(StoredFile.study_id == study_id,
                                                StoredFile.index < 0))
    db.session.commit()


def attach_staged(study_id: str, token: str, lease_s: float,
                  ordered: list[tuple[int, OrderedFile]], warnings: list[str]) -> bool:
    """Give staged images (fetch position k, header) their reading order, under the
    claim: the study then looks like an uploaded one."""
    study = db.session.get(Study, study_id)
    trail.record(actions.PACS_STUDY_OPENED, trail.SYSTEM, study_id=study_id,
                 pacs_study_uid=study.pacs_study_uid, images=len(ordered))
    if hold(study_id, token, lease_s, total=len(ordered),
            warnings=list(study.warnings or []) + warnings).rowcount != 1:
        db.session.rollback()
        return False
    for index, (k, item) in enumerate(ordered):
        db.session.execute(update(StoredFile).where(StoredFile.study_id == study_id,
                                                    StoredFile.index == STAGING + k)
                           .values(index=index))
        db.session.add(StudyImage(study_id=study_id, index=index, name=item.file.name[:255],
                                  series_uid=item.series_uid,
                                  instance_number=item.instance_number))
    db.session.commit()
    return True


def has_images(study_id: str) -> bool:
    return db.session.scalar(select(func.count()).select_from(StudyImage)
                             .where(StudyImage.study_id == study_id)) > 0
