"""What auto-analysis remembers of PACS studies: their UID and image count, never a
patient tag. One row per PACS study makes "each study once" hold across workers and
restarts: a worker takes a study by setting ``study_id`` where it is still empty."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from extensions import db
from studies.models import utcnow_naive


class PacsArrival(db.Model):
    __tablename__ = "pacs_arrivals"

    study_uid: Mapped[str] = mapped_column(String(128), primary_key=True)
    modality: Mapped[str] = mapped_column(String(16))  # the tool's key: ct or xray
    images: Mapped[int] = mapped_column(Integer, default=0)
    seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow_naive)
    changed_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow_naive)
    study_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_try_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow_naive)
