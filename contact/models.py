"""The stored contact message."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import DateTime, Integer, String, Text, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, mapped_column

from extensions import db

CATEGORIES = {
    "bug": "Bug report",
    "content": "Inappropriate content",
    "suggestion": "Suggestion",
    "other": "Other",
}


def utcnow_aware() -> datetime:
    """UTC with its zone: the contact table stores zone-aware times."""
    return datetime.now(timezone.utc)


class ContactMessage(db.Model):
    __tablename__ = "contact_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow_aware,
                                                 index=True)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(254))
    phone: Mapped[str | None] = mapped_column(String(40), nullable=True)
    category: Mapped[str] = mapped_column(String(20))
    subject: Mapped[str] = mapped_column(String(150))
    message: Mapped[str] = mapped_column(Text)
    forwarded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                          nullable=True, index=True)
    forward_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(300), nullable=True)
    # A lease: while it runs, no one else may claim the row. ``claim_token`` holds the
    # queued job's ticket ("q...") or, mid-send, the sender's token; after a failure it
    # is cleared and the lease holds the row until its next retry.
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                           nullable=True)
    claim_token: Mapped[str | None] = mapped_column(String(32), nullable=True)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "name": self.name,
            "email": self.email,
            "phone": self.phone,
            "category": self.category,
            "subject": self.subject,
            "message": self.message,
            "forwarded_at": self.forwarded_at.isoformat() if self.forwarded_at else None,
            "forward_attempts": self.forward_attempts,
        }


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record):
    """SQLite: write-ahead log (readers never block the writer) and wait on locks."""
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")  # first: switching to WAL may wait
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()
