"""Rows of studies whose images a worker fetches (from a PACS) instead of an upload.

The fetch happens under the worker's claim like every other write: bytes are staged
in fetch order while they arrive (memory holds one image), then given their reading
order once every header is known.
"""

from __future__ import annotations

from sqlalchemy import delete, func, select, update

from extensions import db

from .models import QUEUED, Study, StudyFile, StudyHeatmap, StudyImage
from .ordering import OrderedFile
from .store import hold, new_study_id


def remote_study(source: str, remote_uid: str, modality: str, model: str, explain: bool,
                 study_id: str | None = None) -> Study:
    """A new study whose images a worker will fetch (``source``: "pacs"), unsaved."""
    return Study(id=study_id or new_study_id(), status=QUEUED, modality=modality,
                 model=model, explain=explain, total=0, done=0, warnings=[], source=source,
                 pacs_study_uid=remote_uid)


def create_remote_study(source: str, remote_uid: str, modality: str, model: str,
                        explain: bool) -> str:
    study = remote_study(source, remote_uid, modality, model, explain)
    db.session.add(study)
    db.session.commit()
    return study.id


STAGING = -1_000_000  # fetched bytes wait under index STAGING + k until ordered


def stage_file(study_id: str, token: str, lease_s: float, k: int, data: bytes) -> bool:
    """Keep one fetched image's bytes (in fetch order) while the rest arrive."""
    if hold(study_id, token, lease_s).rowcount != 1:
        db.session.rollback()
        return False
    db.session.add(StudyFile(study_id=study_id, index=STAGING + k, data=data))
    db.session.commit()
    return True


def clear_staged(study_id: str) -> None:
    """Drop bytes a stopped worker fetched but never ordered."""
    db.session.execute(delete(StudyFile).where(StudyFile.study_id == study_id,
                                               StudyFile.index < 0))
    db.session.commit()


def attach_staged(study_id: str, token: str, lease_s: float,
                  ordered: list[tuple[int, OrderedFile]], warnings: list[str]) -> bool:
    """Give staged images (fetch position k, header) their reading order, under the
    claim: the study then looks like an uploaded one."""
    study = db.session.get(Study, study_id)
    if hold(study_id, token, lease_s, total=len(ordered),
             warnings=list(study.warnings or []) + warnings).rowcount != 1:
        db.session.rollback()
        return False
    for index, (k, item) in enumerate(ordered):
        db.session.execute(update(StudyFile).where(StudyFile.study_id == study_id,
                                                   StudyFile.index == STAGING + k)
                           .values(index=index))
        db.session.add(StudyImage(study_id=study_id, index=index, name=item.file.name[:255],
                                  series_uid=item.series_uid,
                                  instance_number=item.instance_number))
    db.session.commit()
    return True


def all_heatmaps(study_id: str):
    """(index, architecture, PNG) of every stored heatmap, one row at a time."""
    return db.session.execute(select(StudyHeatmap.index, StudyHeatmap.architecture,
                                     StudyHeatmap.png)
                              .where(StudyHeatmap.study_id == study_id)
                              .order_by(StudyHeatmap.index, StudyHeatmap.architecture))


def has_images(study_id: str) -> bool:
    return db.session.scalar(select(func.count()).select_from(StudyImage)
                             .where(StudyImage.study_id == study_id)) > 0


def set_written(study_id: str, written: list[dict]) -> None:
    """Written back: no further try is wanted, and the last failure is history."""
    db.session.execute(update(Study).where(Study.id == study_id)
                       .values(written=written, write_after=None, write_error=None))
    db.session.commit()
