"""Every read and write of study rows, so the claim rules live in one place.

A worker claims a study with one conditional UPDATE that hands it a fresh token and a
lease. Each later write checks that token in the same transaction: a worker that lost
its claim (it stalled, the lease ran out, another worker took over) can write nothing,
so no study is ever answered twice with different results. Images already answered are
never analysed again: a study taken over resumes where the last worker stopped.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import bindparam, delete, func, or_, select, update

from audit import actions, trail
from extensions import db
from jobs.lease import won

from .access import SYSTEM, StudyAccess
from .deidentify import base_name, minimum_dicom
from .errors import StudyNotFound
from .models import (DONE, FAILED, PENDING, QUEUED, RUNNING, STUDY_TABLES, Study, StudyFile,
                     StudyHeatmap, StudyImage, utcnow_naive)
from .ordering import OrderedFile

MAX_IMAGE_INDEX = 2**31 - 1


def new_study_id() -> str:
    """192 random bits, URL-safe: the only key to a study's results. Never starting
    with "-", so that a command line (`flask pacs write-back ID`) takes it as itself
    and not as an option."""
    while (study_id := secrets.token_urlsafe(24)).startswith("-"):
        pass
    return study_id


@dataclass
class ImageOutcome:
    """One analysed image, as the worker hands it over to be stored."""

    index: int
    results: list[dict] = field(default_factory=list)
    combined: dict | None = None
    covid_probability: float | None = None
    positive: bool | None = None
    warnings: list[str] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    heatmaps: dict[str, bytes] = field(default_factory=dict)  # architecture -> PNG
    cams: dict[str, bytes] = field(default_factory=dict)  # architecture -> the map (.npy)

    def columns(self) -> dict:
        """Its values in ``study_images``."""
        return {"status": FAILED if self.error_code else DONE, "results": self.results,
                "combined": self.combined, "covid_probability": self.covid_probability,
                "positive": self.positive, "warnings": self.warnings,
                "error_code": self.error_code, "error_message": self.error_message}


def create_study(study_id: str, modality: str, model: str, explain: bool,
                 files: list[OrderedFile], warnings: list[str],
                 owner_id: int | None = None, source: str = "upload",
                 study_uid: str | None = None) -> str:
    """Store the study, its images in reading order and their bytes; one transaction
    (with its audit event, recorded before)."""
    db.session.add(Study(id=study_id, status=QUEUED, modality=modality, model=model,
                         explain=explain, total=len(files), done=0, warnings=warnings,
                         owner_id=owner_id, source=source, pacs_study_uid=study_uid))
    db.session.flush()
    _add_images(study_id, files)
    db.session.commit()
    return study_id


def _add_images(study_id: str, files: list[OrderedFile]) -> None:
    for index, item in enumerate(files):
        db.session.add(StudyImage(study_id=study_id, index=index,
                                  name=base_name(item.file.name),
                                  series_uid=item.series_uid,
                                  instance_number=item.instance_number))
        db.session.add(StudyFile(study_id=study_id, index=index,
                                 data=minimum_dicom(item.file.data, item.file.name)))


def claim(study_id: str, lease_s: float) -> str | None:
    """Take the study if it is queued, or running under an expired lease; the token."""
    token, now = secrets.token_hex(16), utcnow_naive()
    taken = won(
        update(Study).where(
            Study.id == study_id,
            or_(Study.status == QUEUED,
                (Study.status == RUNNING) & (Study.claimed_until < now)))
        .values(status=RUNNING, claim_token=token, attempts=Study.attempts + 1,
                claimed_until=now + timedelta(seconds=lease_s), updated_at=now,
                started_at=func.coalesce(Study.started_at, now)))
    return token if taken else None


def hold(study_id: str, token: str, lease_s: float, **values):
    """The UPDATE that both renews a lease and proves the claim is still ours."""
    now = utcnow_naive()
    return db.session.execute(
        update(Study).where(Study.id == study_id, Study.claim_token == token,
                            Study.status == RUNNING)
        .values(claimed_until=now + timedelta(seconds=lease_s), updated_at=now, **values))


def pending_indexes(study_id: str) -> list[int]:
    return list(db.session.scalars(
        select(StudyImage.index).where(StudyImage.study_id == study_id,
                                       StudyImage.status == PENDING)
        .order_by(StudyImage.index)))


def file_bytes(study_id: str, indexes: list[int]) -> list[bytes | None]:
    """Those images' bytes (None where gone), in one transaction of its own: an open read
    keeps an old snapshot that a later write of this session cannot build on (WAL)."""
    rows = dict(db.session.execute(select(StudyFile.index, StudyFile.data).where(
        StudyFile.study_id == study_id, StudyFile.index.in_(indexes))).all())
    db.session.commit()
    return [rows.get(index) for index in indexes]


def save_outcomes(study_id: str, token: str, lease_s: float,
                  outcomes: list[ImageOutcome]) -> bool:
    """Store answers, drop those images' bytes and advance progress, all or nothing;
    False (and nothing written) when the claim was lost."""
    if hold(study_id, token, lease_s).rowcount != 1:
        db.session.rollback()
        return False
    images = StudyImage.__table__
    pending = set(db.session.scalars(select(images.c.index).where(images.c.study_id == study_id,
        images.c.status == PENDING, images.c.index.in_([o.index for o in outcomes]))))
    fresh = [outcome for outcome in outcomes if outcome.index in pending]
    if fresh:
        _write_answers(study_id, fresh)
    db.session.add_all(StudyHeatmap(study_id=study_id, index=o.index, architecture=arch,
                                    png=png, cam=o.cams.get(arch))
                       for o in fresh for arch, png in o.heatmaps.items())
    answered = select(func.count()).select_from(StudyImage).where(
        StudyImage.study_id == study_id, StudyImage.status != PENDING).scalar_subquery()
    db.session.execute(update(Study).where(Study.id == study_id).values(done=answered))
    db.session.commit()
    return True


def _write_answers(study_id: str, fresh: list[ImageOutcome]) -> None:
    """One UPDATE run over all (executemany), one DELETE: per-image statements cost
    the forward pass ~1 ms of CPU each. ``new_<column>``: SQLAlchemy owns a column's name."""
    images, files = StudyImage.__table__, StudyFile.__table__
    db.session.execute(
        update(images).where(images.c.study_id == study_id, images.c.status == PENDING,
                             images.c.index == bindparam("at"))
        .values({name: bindparam(f"new_{name}") for name in fresh[0].columns()}),
        [{"at": outcome.index, **{f"new_{name}": value for name, value
                                  in outcome.columns().items()}} for outcome in fresh])
    db.session.execute(delete(files).where(
        files.c.study_id == study_id, files.c.index.in_([o.index for o in fresh])))


def set_models(study_id: str, token: str, lease_s: float, models: list[dict],
               warnings: list[str]) -> bool:
    """Record which models answer (and any that could not), once they have loaded."""
    study = db.session.get(Study, study_id)
    held = hold(study_id, token, lease_s, models=models,
                 warnings=list(study.warnings or []) + warnings).rowcount == 1
    db.session.commit()
    return held


def finish(study_id: str, token: str, verdict: dict) -> bool:
    now = utcnow_naive()
    done = db.session.execute(
        update(Study).where(Study.id == study_id, Study.claim_token == token,
                            Study.status == RUNNING)
        .values(status=DONE, verdict=verdict, finished_at=now, updated_at=now,
                claim_token=None, claimed_until=None)).rowcount == 1
    db.session.commit()
    return done


def fail(study_id: str, token: str | None, code: str, message: str) -> bool:
    """End the study with an error (only by its claim holder, when a token is given)."""
    now = utcnow_naive()
    condition = [Study.id == study_id, Study.status.in_([QUEUED, RUNNING])]
    if token is not None:
        condition.append(Study.claim_token == token)
    failed = db.session.execute(
        update(Study).where(*condition)
        .values(status=FAILED, error_code=code, error_message=message, finished_at=now,
                updated_at=now, claim_token=None, claimed_until=None)).rowcount == 1
    if failed:  # nothing more will read the pixels
        db.session.execute(delete(StudyFile).where(StudyFile.study_id == study_id))
    db.session.commit()
    return failed


def get_study(study_id: str, retention_hours: float, access: StudyAccess = SYSTEM) -> Study:
    """The study, or StudyNotFound when it is unknown, deleted, past its retention or
    not one that ``access`` may open."""
    study = db.session.get(Study, study_id) if isinstance(study_id, str) else None
    if study is None or _expired(study, retention_hours) or not access.may_open(study):
        raise StudyNotFound("No study has this id: it may have expired or been deleted.")
    return study


def studies_of(owner_id: int, retention_hours: float, limit: int = 200) -> list[Study]:
    """The account's studies that are still kept, newest first."""
    kept_since = utcnow_naive() - timedelta(hours=retention_hours)
    return list(db.session.scalars(
        select(Study).where(Study.owner_id == owner_id, Study.created_at >= kept_since)
        .order_by(Study.created_at.desc()).limit(limit)))


def running_analysis(pacs_study_uid: str) -> Study | None:
    """An analysis of this PACS study that is still queued or running."""
    return db.session.scalar(select(Study).where(
        Study.pacs_study_uid == pacs_study_uid, Study.status.in_((QUEUED, RUNNING)))
        .order_by(Study.created_at.desc()).limit(1))


def study_row(study_id: str) -> Study | None:
    """The study as stored, expired or not (a worker finishing a long study)."""
    return db.session.get(Study, study_id)


def _expired(study: Study, retention_hours: float) -> bool:
    ended = study.finished_at or study.created_at
    return ended < utcnow_naive() - timedelta(hours=retention_hours)


def images_of(study_id: str) -> list[StudyImage]:
    return list(db.session.scalars(select(StudyImage).where(StudyImage.study_id == study_id)
                                   .order_by(StudyImage.index)))


def is_index(index: int) -> bool:
    """Whether an image number from a URL can name an image: the databases' integers
    end at 2**31 - 1 (SQLite would raise on a larger one rather than find nothing)."""
    return 0 <= index <= MAX_IMAGE_INDEX


def heatmap(study_id: str, index: int, architecture: str) -> bytes | None:
    return db.session.scalar(select(StudyHeatmap.png).where(
        StudyHeatmap.study_id == study_id, StudyHeatmap.index == index,
        StudyHeatmap.architecture == architecture))


def heatmap_architectures(study_id: str, index: int) -> list[str]:
    return list(db.session.scalars(select(StudyHeatmap.architecture).where(
        StudyHeatmap.study_id == study_id, StudyHeatmap.index == index)
        .order_by(StudyHeatmap.architecture)))


def delete_study(study_id: str) -> bool:
    """Remove the study and every row that belongs to it."""
    for table in STUDY_TABLES:
        db.session.execute(delete(table).where(table.study_id == study_id))
    deleted = db.session.execute(delete(Study).where(Study.id == study_id)).rowcount == 1
    db.session.commit()
    return deleted


def purge_expired(retention_hours: float) -> int:
    """Delete studies whose results are past their retention time; how many."""
    cutoff = utcnow_naive() - timedelta(hours=retention_hours)
    ids = list(db.session.scalars(select(Study.id).where(
        func.coalesce(Study.finished_at, Study.created_at) < cutoff,
        or_(Study.status.in_([DONE, FAILED]), Study.claimed_until.is_(None),
            Study.claimed_until < utcnow_naive()))))
    for study_id in ids:
        trail.record(actions.DELETED, trail.SYSTEM, study_id=study_id, reason="retention")
        delete_study(study_id)
    return len(ids)


def stale_studies(requeue_after_s: float, max_attempts: int) -> list[str]:
    """Studies to hand to the queue again: running under an expired lease (a worker
    died), or queued for long with nobody taking them (the queue lost the message).
    Those that wore out ``max_attempts`` workers fail instead of looping."""
    now = utcnow_naive()
    expired = (Study.status == RUNNING) & (Study.claimed_until < now)
    waiting = (Study.status == QUEUED) & (
        Study.enqueued_at < now - timedelta(seconds=requeue_after_s))
    ids = []
    for study in db.session.scalars(select(Study).where(or_(expired, waiting))):
        if study.status == RUNNING and study.attempts >= max_attempts:
            fail(study.id, study.claim_token, "worker_lost",
                 f"The study stopped {study.attempts} times without finishing.")
            continue
        db.session.execute(update(Study).where(Study.id == study.id,
                                               Study.status == study.status)
                           .values(enqueued_at=now))
        ids.append(study.id)
    db.session.commit()
    return ids
