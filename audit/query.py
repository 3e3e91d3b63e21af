"""Reading the trail: the admin page's filters, the CSV export, and the full walk that
``flask audit verify`` checks."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select

from extensions import db

from .chain import Verdict, verify
from .models import GENESIS, HEAD_ID, AuditEvent, AuditHead

CSV_COLUMNS = ("seq", "at", "actor_id", "actor_name", "actor_role", "actor_method",
               "client", "action", "study", "target", "outcome", "prev_hash", "hash")
PAGE = 200


@dataclass(frozen=True)
class Filters:
    user: str | None = None  # an account name
    action: str | None = None
    study: str | None = None  # a study id (or its start) or a PACS StudyInstanceUID
    since: datetime | None = None
    until: datetime | None = None

    def where(self):
        clauses = []
        if self.user:
            clauses.append(AuditEvent.actor_name == self.user)
        if self.action:
            clauses.append(AuditEvent.action == self.action)
        if self.study:
            clauses.append(or_(AuditEvent.study == self.study,
                               AuditEvent.study == self.study[:8]))
        if self.since:
            clauses.append(AuditEvent.at >= self.since)
        if self.until:
            clauses.append(AuditEvent.at < self.until)
        return clauses


def events(filters: Filters, limit: int | None = PAGE) -> list[AuditEvent]:
    """The newest matching events first."""
    query = select(AuditEvent).where(*filters.where()).order_by(AuditEvent.seq.desc())
    return list(db.session.scalars(query.limit(limit) if limit else query))


def events_csv(filters: Filters) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for event in events(filters, limit=None):
        row = [getattr(event, column) for column in CSV_COLUMNS]
        row[1] = event.at.isoformat(timespec="microseconds") + "Z"
        row[9] = json.dumps(event.target, sort_keys=True)
        writer.writerow([safe_cell(value) for value in row])
    return out.getvalue()


def safe_cell(value) -> str:
    """A CSV cell that no spreadsheet reads as a formula (CSV injection), for every
    export of names people typed: the audit trail's and a study's."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def in_order(batch: int = 1000) -> Iterator[AuditEvent]:
    """Every event by sequence number, a batch at a time (the trail may be long)."""
    after = None
    while True:
        query = select(AuditEvent).order_by(AuditEvent.seq).limit(batch)
        if after is not None:
            query = query.where(AuditEvent.seq > after)
        rows = list(db.session.scalars(query))
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1].seq
        db.session.expunge_all()


def check_trail() -> Verdict:
    head = db.session.get(AuditHead, HEAD_ID)
    seq, head_hash = (head.seq, head.hash) if head else (0, GENESIS)
    return verify(in_order(), seq, head_hash)
