"""What the node holds while a study arrives: each received instance, de-identified as
every other staged image is, and one row per study that makes "analysed once" hold
across workers and restarts (a worker takes it by setting ``study_id`` where empty)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from extensions import db
from studies.models import utcnow_naive


class NodeArrival(db.Model):
    __tablename__ = "node_arrivals"

    study_uid: Mapped[str] = mapped_column(String(128), primary_key=True)
    modality: Mapped[str] = mapped_column(String(16))  # the tool's key: ct or xray
    calling_ae: Mapped[str] = mapped_column(String(16))
    images: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(Integer, default=0)
    changed_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow_naive)
    study_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The patient and study attributes a report sent by C-STORE must carry to be filed
    # with its images (name, ID, birth date, sex, accession...); kept only while a
    # C-STORE destination waits for the report, and dropped once it is sent.
    patient: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class NodeInstance(db.Model):
    __tablename__ = "node_instances"

    sop_uid: Mapped[str] = mapped_column(String(128), primary_key=True)
    study_uid: Mapped[str] = mapped_column(
        String(128), ForeignKey("node_arrivals.study_uid", ondelete="CASCADE"), index=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)  # de-identified (studies/deidentify)
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow_naive)
