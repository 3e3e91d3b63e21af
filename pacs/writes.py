"""The write-back into the PACS, driven by the database rather than by the queue.

A PACS study is marked when it starts running, and reserved again once it finished
(``write_after`` = now + a lease) before its ``pacs_write_back`` job is queued. The job
records the outcome: ``written``, or one more failed try, the failure in words and the
time of the next try (doubling back-off). Workers' housekeeping (``reserve_due``)
queues again every study whose time came (a failure to retry, a lost job, a worker that
died mid-write), each reserved by one conditional UPDATE so that among several workers
only one queues it. Writing twice is harmless: the instances' UIDs derive from the
study id. A study finished while write-back was off (``write_after`` null) is never
written automatically.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, update

from extensions import db
from inference.errors import ServiceError
from jobs.backoff import doubling_delay
from studies.models import DONE, QUEUED, RUNNING, WRITE_MAX_ATTEMPTS, Study, utcnow

log = logging.getLogger(__name__)

RETRY_CAP_S = 3600.0  # the longest wait between two automatic tries


def wanted():
    """A finished PACS study not written yet."""
    return (Study.source == "pacs", Study.status == DONE, Study.written.is_(None))


def due(now):
    """Wanted, its time came, and automatic tries left."""
    return (*wanted(), Study.write_after.is_not(None), Study.write_after < now,
            Study.write_attempts < WRITE_MAX_ATTEMPTS)


def expect(study_id: str, lease_s: float) -> None:
    """Before a PACS study runs: its write-back is wanted. A worker that stops between
    finishing the study and queueing the write leaves it to housekeeping."""
    db.session.execute(
        update(Study).where(Study.id == study_id, Study.source == "pacs",
                            Study.status.in_((QUEUED, RUNNING)), Study.written.is_(None))
        .values(write_after=utcnow() + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False))
    db.session.commit()


def reserve(study_id: str, lease_s: float) -> bool:
    """Mark a study that just finished for write-back, held for the job about to be
    queued; False when there is nothing to write."""
    now = utcnow()
    result = db.session.execute(
        update(Study).where(Study.id == study_id, *wanted())
        .values(write_after=now + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False))
    db.session.commit()
    return result.rowcount == 1


def due_ids(limit: int = 100) -> list[str]:
    return list(db.session.scalars(select(Study.id).where(*due(utcnow()))
                                   .order_by(Study.write_after).limit(limit)))


def take(study_id: str, lease_s: float) -> bool:
    """Reserve one due study for a job; True only for the caller whose UPDATE won."""
    now = utcnow()
    result = db.session.execute(
        update(Study).where(Study.id == study_id, *due(now))
        .values(write_after=now + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False))
    db.session.commit()
    return result.rowcount == 1


def reserve_due(lease_s: float, limit: int = 100) -> list[str]:
    """The due studies this caller reserved (each needs a job queued)."""
    return [study_id for study_id in due_ids(limit) if take(study_id, lease_s)]


def record_failure(study_id: str, message: str, first_retry_s: float) -> tuple[int, float]:
    """One more failed try, its message and the next try's time; (tries, delay)."""
    db.session.rollback()  # whatever the failure left open
    attempts = db.session.scalar(select(Study.write_attempts).where(Study.id == study_id))
    if attempts is None:
        return 0, 0.0  # the study was deleted or purged meanwhile
    delay = doubling_delay(first_retry_s, attempts + 1, RETRY_CAP_S)
    db.session.execute(
        update(Study).where(Study.id == study_id)
        .values(write_attempts=Study.write_attempts + 1, write_error=message[:300],
                write_after=utcnow() + timedelta(seconds=delay))
        .execution_options(synchronize_session=False))
    db.session.commit()
    return attempts + 1, delay


def attempt(app, study_id: str, software_version: str) -> tuple[bool, str]:
    """Write the study back now, in the caller, and record the outcome: (ok, what
    happened). Run inside an app context."""
    from studies.service import StudyConfig

    from .analysis import deliver
    from .client import client_from_config

    try:
        outcome = deliver(client_from_config(app.config), app.extensions["inference"],
                          StudyConfig.from_mapping(app.config), study_id, software_version)
    except ServiceError as exc:  # PACS errors name only scheme://host:port
        message = exc.message
    except Exception as exc:  # noqa: BLE001 - its text could quote a response: type only
        message = f"The write-back failed ({type(exc).__name__})."
    else:
        return True, outcome
    attempts, delay = record_failure(study_id, message,
                                     float(app.config["PACS_WRITE_RETRY_S"]))
    if attempts >= WRITE_MAX_ATTEMPTS:
        log.warning("study %s...: write-back failed %d times, no more automatic tries "
                    "(flask pacs write-back): %s", study_id[:6], attempts, message)
    elif attempts:
        log.warning("study %s...: write-back failed (try %d), next in %.0f s: %s",
                    study_id[:6], attempts, delay, message)
    return False, message
