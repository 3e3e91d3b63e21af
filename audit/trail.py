"""Recording an event: in the same transaction as the action it records.

``record`` holds the event on the database session until that session commits; just
before the commit the events are numbered and chained under the head row's lock, so
an action and its record are written together or not at all. ``record_now`` commits at
once: a read of patient data records itself before anything is shown, and a read that
cannot be recorded fails instead.
"""

from __future__ import annotations

import getpass
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import event, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from extensions import db

from .chain import link
from .models import GENESIS, HEAD_ID, AuditEvent, AuditHead

log = logging.getLogger(__name__)

PENDING = "audit_pending"
SUCCESS, FAILURE, DENIED = "success", "failure", "denied"
STUDY_PREFIX = 8  # characters of a study id kept: enough to find it, not to open it


@dataclass(frozen=True)
class Actor:
    """Who did it, as the trail records them."""

    user_id: int | None
    name: str
    role: str | None
    method: str
    client: str | None = None


SYSTEM = Actor(None, "system", None, "system")


def command_line() -> Actor:
    """Whoever runs a ``flask`` command: the operating system's user."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no passwd entry
        user = str(os.getuid())
    return Actor(None, f"cli:{user}"[:64], None, "cli")


def utcnow_naive() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def study_ref(study_id: str | None) -> str | None:
    return study_id[:STUDY_PREFIX] if study_id else None


def record(action: str, actor: Actor, outcome: str = SUCCESS, study_id: str | None = None,
           **target) -> None:
    """Hold the event until the session's next commit (which is the action's)."""
    study = study_ref(study_id) or target.get("pacs_study_uid")
    session = db.session()
    if not session.in_transaction():
        session.begin()  # so that a rollback before the commit drops the event too
    session.info.setdefault(PENDING, []).append(AuditEvent(
        at=utcnow_naive(), actor_id=actor.user_id, actor_name=actor.name[:64],
        actor_role=actor.role, actor_method=actor.method,
        client=(actor.client or None) and actor.client[:64], action=action,
        target={key: value for key, value in target.items() if value is not None},
        study=study, outcome=outcome))


def record_now(action: str, actor: Actor, outcome: str = SUCCESS,
               study_id: str | None = None, **target) -> None:
    """Record and commit: the caller goes on only once the event is stored."""
    record(action, actor, outcome, study_id, **target)
    db.session.commit()


@contextmanager
def audited(action: str, actor: Actor, study_id: str | None = None, **target):
    """Record ``action`` with whatever the block commits (or alone, after it, when it
    commits nothing). A block that raises did not happen: its event is dropped and a
    failure is recorded instead."""
    record(action, actor, SUCCESS, study_id, **target)
    try:
        yield
    except Exception:
        db.session.rollback()
        record_now(action, actor, FAILURE, study_id, **target)
        raise
    if db.session.info.get(PENDING):
        db.session.commit()


def lifecycle(action: str, process: str) -> None:
    """A web or queue worker process started or stopped (in an app context). A start
    goes on when the database cannot take the record: it holds no patient data."""
    try:
        record_now(action, SYSTEM, process=process, pid=os.getpid())
    except SQLAlchemyError:
        db.session.rollback()
        log.warning("could not record %s of this %s process in the audit trail", action,
                    process)


def _write_pending(session: Session) -> None:
    pending = session.info.pop(PENDING, None)
    if not pending:
        return
    # The UPDATE takes the head row's lock until this transaction ends: one writer at a
    # time extends the chain, on SQLite and PostgreSQL alike.
    taken = session.execute(update(AuditHead).where(AuditHead.id == HEAD_ID)
                            .values(seq=AuditHead.seq + len(pending)))
    if taken.rowcount == 0:  # a database made by create_all, not by the migration
        session.add(AuditHead(id=HEAD_ID, seq=len(pending), hash=GENESIS))
        session.flush()
    seq, head_hash = session.execute(
        select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == HEAD_ID)).one()
    seq, head_hash = link(pending, seq - len(pending), head_hash)
    session.add_all(pending)
    session.execute(update(AuditHead).where(AuditHead.id == HEAD_ID).values(hash=head_hash))
    session.flush()


def _drop_pending(session: Session, _transaction=None) -> None:
    session.info.pop(PENDING, None)


def install() -> None:
    """Chain held events into every commit; forget them on a rollback."""
    if not event.contains(Session, "before_commit", _write_pending):
        event.listen(Session, "before_commit", _write_pending)
        event.listen(Session, "after_soft_rollback", _drop_pending)
