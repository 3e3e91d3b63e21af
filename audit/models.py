"""The audit trail's tables: the events, and the head of their hash chain.

Each event holds a SHA-256 over its own content and the previous event's hash, so an
edited, removed or reordered row breaks the chain where it happened. The one
``audit_head`` row carries the newest sequence number and hash: a writer takes it (an
UPDATE, which locks it) before adding events, so the chain never forks, and a removed
last row shows too. Triggers (see the migration) refuse UPDATE and DELETE on events.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from extensions import db

GENESIS = "0" * 64  # the hash before the first event
HEAD_ID = 1


class AuditEvent(db.Model):
    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)  # UTC
    actor_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    actor_name: Mapped[str] = mapped_column(String(64))  # an account, or "system"
    actor_role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    actor_method: Mapped[str] = mapped_column(String(16))  # session, token, jwt, cli...
    client: Mapped[str | None] = mapped_column(String(64), nullable=True)  # address
    action: Mapped[str] = mapped_column(String(32), index=True)
    # What it was done to: a study id's prefix, a PACS StudyInstanceUID, counts; never
    # a patient's name.
    target: Mapped[dict] = mapped_column(JSON, default=dict)
    study: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    outcome: Mapped[str] = mapped_column(String(16))  # success, failure, denied
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(db.Model):
    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    hash: Mapped[str] = mapped_column(String(64), default=GENESIS)


class AuditExport(db.Model):
    """How far the Audit Record Repository has read the trail (see ``outbox``)."""

    __tablename__ = "audit_export"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sent_seq: Mapped[int] = mapped_column(Integer, default=0)
    holder: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # While held: when the hold lapses. After a failure: when to try again.
    held_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(200), nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
