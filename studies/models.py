"""The tables of a study: the job, its images (with results), pending pixels, heatmaps.

The database is the truth about a study; the queue only wakes workers. Pixels wait in
``study_files`` (so a worker on another machine can read them, no shared disk needed)
and each row is deleted in the same transaction that stores its image's results.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer,
                        LargeBinary, String, Text, text)
from sqlalchemy.orm import Mapped, mapped_column

from extensions import db

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
PENDING = "pending"  # an image not yet analysed
# At most one analysis of a PACS study queued or running at a time: a unique partial
# index (SQLite and PostgreSQL), so that callers racing to start one cannot both insert.
ONE_RUNNING_PER_PACS_STUDY = "ix_studies_one_running_per_pacs_study"
RUNNING_PACS_ANALYSIS = "source = 'pacs' AND status IN ('queued', 'running')"


def utcnow_naive() -> datetime:
    """UTC without a zone: the studies' tables store plain DateTime columns in UTC."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Study(db.Model):
    __tablename__ = "studies"
    __table_args__ = (Index(ONE_RUNNING_PER_PACS_STUDY, "pacs_study_uid", unique=True,
                            sqlite_where=text(RUNNING_PACS_ANALYSIS),
                            postgresql_where=text(RUNNING_PACS_ANALYSIS)),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    modality: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(32))  # an architecture or "all"
    explain: Mapped[bool] = mapped_column(Boolean, default=False)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    models: Mapped[list] = mapped_column(JSON, default=list)  # [{architecture, threshold}]
    warnings: Mapped[list] = mapped_column(JSON, default=list)
    verdict: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow_naive)
    enqueued_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow_naive)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    updated_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # A worker's hold on the study: only the holder of claim_token may write, and
    # after claimed_until passes another worker takes the study over.
    claim_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Where the images came from: "upload", or "pacs" (then the study's UID there, and
    # what was written back into it: [{series_uid, sop_instance_uid, sop_class_uid}]).
    source: Mapped[str] = mapped_column(String(16), default="upload")
    pacs_study_uid: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    written: Mapped[list | None] = mapped_column(JSON, nullable=True)
    # The write-back as the database drives it (pacs/writes.py): when housekeeping may
    # queue it (again), null when none is wanted; failed tries; the last failure, plain.
    write_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    write_after: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, index=True)
    write_error: Mapped[str | None] = mapped_column(String(300), nullable=True)
    # The signed-in account that made the study (auth.models.User.id); None: anonymous.
    owner_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)


class StudyImage(db.Model):
    __tablename__ = "study_images"

    study_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)  # reading order
    name: Mapped[str] = mapped_column(String(255))
    series_uid: Mapped[str | None] = mapped_column(String(128), nullable=True)
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    results: Mapped[list] = mapped_column(JSON, default=list)
    combined: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    covid_probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    positive: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    warnings: Mapped[list] = mapped_column(JSON, default=list)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)


class StudyFile(db.Model):
    """An uploaded image's bytes, kept only until that image is analysed."""

    __tablename__ = "study_files"

    study_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class StudyHeatmap(db.Model):
    """One model's Grad-CAM overlay of one image (PNG), when the study asked for them, and
    the map itself (0..1 float32 ``.npy``; null for heatmaps stored before it was kept),
    which the PACS write-back encodes as values."""

    __tablename__ = "study_heatmaps"

    study_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("studies.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    architecture: Mapped[str] = mapped_column(String(32), primary_key=True)
    png: Mapped[bytes] = mapped_column(LargeBinary)
    cam: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


STUDY_TABLES = (StudyHeatmap, StudyFile, StudyImage)  # children, deleted before the study
