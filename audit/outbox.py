"""The trail's export to the hospital's Audit Record Repository, from a durable outbox.

The outbox is the trail itself: ``audit_export`` holds the last row the repository
read, and each round sends the rows after it, in order, in batches. One sender at a
time holds the cursor row (a conditional UPDATE, as study and mail leases do), sends
with no database lock held, and moves the cursor only once the repository has read the
batch; a failure keeps the cursor and sets when to try again, doubling per failure.
A repository that is down or restarted therefore loses nothing, and a batch is sent a
second time only when this process dies between the repository's read and the
cursor's commit.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select, update

from extensions import db
from jobs.lease import won

from .dicom_message import AuditSource, audit_message, outcome_indicator
from .models import AuditEvent, AuditExport
from .syslog import AuditDeliveryError, SyslogTarget, frame, send
from .trail import utcnow_naive

log = logging.getLogger(__name__)

EXPORT_ID = 1
APP_NAME = "lungscan"


@dataclass(frozen=True)
class ExportSettings:
    target: SyslogTarget | None  # None: no repository, nothing is exported
    source: AuditSource
    interval_s: float  # how often workers look for rows to send
    batch: int  # rows per connection
    lease_s: float  # a sender's hold on the cursor (well above the send's time-out)
    retry_s: float  # the wait after a failed send, doubling per failure...
    retry_max_s: float  # ...up to this


@dataclass(frozen=True)
class Backlog:
    sent_seq: int
    newest_seq: int
    failures: int
    last_error: str | None

    @property
    def waiting(self) -> int:
        return self.newest_seq - self.sent_seq


def default_source(source_id: str, site_id: str | None) -> AuditSource:
    return AuditSource(source_id=source_id, site_id=site_id or None,
                       host=socket.getfqdn() or "localhost")


def deliver(settings: ExportSettings, rounds: int = 50) -> int:
    """Send what the repository has not read yet (up to ``rounds`` batches); the number
    of rows it read. 0 when another worker holds the cursor or a retry is not due;
    ``AuditDeliveryError`` when the repository did not take a batch."""
    if settings.target is None:
        return 0
    holder = secrets.token_hex(8)
    if not take(holder, settings.lease_s):
        return 0
    sent = 0
    try:
        for _ in range(rounds):
            events = unsent(settings.batch)
            if not events:
                break
            send(settings.target, [frame_of(event, settings.source) for event in events])
            advance(holder, events[-1].seq, settings.lease_s)
            sent += len(events)
    except AuditDeliveryError as exc:
        back_off(holder, str(exc), settings)
        raise
    release(holder)
    return sent


def frame_of(event: AuditEvent, source: AuditSource) -> bytes:
    return frame(audit_message(event, source), event.seq, event.at, outcome_indicator(event),
                 source.host, APP_NAME, os.getpid())


def take(holder: str, lease_s: float) -> bool:
    now = utcnow_naive()
    statement = (update(AuditExport)
                 .where(AuditExport.id == EXPORT_ID,
                        or_(AuditExport.held_until.is_(None), AuditExport.held_until <= now))
                 .values(holder=holder, held_until=now + timedelta(seconds=lease_s)))
    if won(statement):
        return True
    if db.session.get(AuditExport, EXPORT_ID) is None:  # a database made by create_all
        db.session.add(AuditExport(id=EXPORT_ID, sent_seq=0, failures=0))
        db.session.commit()
        return won(statement)
    return False


def unsent(batch: int) -> list[AuditEvent]:
    sent_seq = (select(AuditExport.sent_seq).where(AuditExport.id == EXPORT_ID)
                .scalar_subquery())
    events = db.session.scalars(select(AuditEvent).where(AuditEvent.seq > sent_seq)
                                .order_by(AuditEvent.seq).limit(batch)).all()
    db.session.commit()  # no transaction stays open while the batch is on the wire
    return list(events)


def advance(holder: str, seq: int, lease_s: float) -> None:
    now = utcnow_naive()
    if not won(update(AuditExport).where(AuditExport.id == EXPORT_ID,
                                         AuditExport.holder == holder)
               .values(sent_seq=seq, sent_at=now, failures=0, last_error=None,
                       held_until=now + timedelta(seconds=lease_s))):
        # Our hold lapsed and another sender took over: it starts from our last cursor.
        raise AuditDeliveryError("the export's hold lapsed during a send; the next round "
                                 "goes on from the last recorded row")


def back_off(holder: str, error: str, settings: ExportSettings) -> None:
    row = db.session.get(AuditExport, EXPORT_ID)
    wait = min(settings.retry_s * 2 ** min(row.failures, 20), settings.retry_max_s)
    won(update(AuditExport).where(AuditExport.id == EXPORT_ID, AuditExport.holder == holder)
        .values(holder=None, failures=AuditExport.failures + 1, last_error=error[:200],
                held_until=utcnow_naive() + timedelta(seconds=wait)))
    log.warning("audit export: the repository did not take a batch (%s); next try in "
                "%.0f s", error, wait)


def release(holder: str) -> None:
    won(update(AuditExport).where(AuditExport.id == EXPORT_ID, AuditExport.holder == holder)
        .values(holder=None, held_until=None))


def due_now() -> None:
    """Drop a failure's wait before the next try (not another sender's hold)."""
    won(update(AuditExport).where(AuditExport.id == EXPORT_ID, AuditExport.holder.is_(None))
        .values(held_until=None))


def backlog() -> Backlog:
    """What the repository has not read yet, for the admin page and the command."""
    row = db.session.get(AuditExport, EXPORT_ID)
    newest = db.session.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc())
                               .limit(1)) or 0
    if row is None:
        return Backlog(0, newest, 0, None)
    return Backlog(row.sent_seq, newest, row.failures, row.last_error)
