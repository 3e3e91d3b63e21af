"""Analyse on arrival: poll the PACS for studies of the chosen modalities and start
each one once, after it has stopped growing.

Any DICOMweb server can be polled (QIDO-RS), so this does not depend on Orthanc's own
change feed. A study is started when its image count has not changed for
``PACS_STABLE_S`` seconds (a series still arriving is not analysed half-way), by one
conditional UPDATE on its ``pacs_arrivals`` row: several workers and restarts start it
once. A study whose analysis failed because the PACS could not be reached is tried
again with a growing delay. Studies this tool wrote (its report and captures) are
never images of a chosen modality, so they never start anything.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from extensions import db
from inference.registry import MODALITIES, ModelChoice
from jobs.retry import doubling_delay
from settings import PacsConfig
from studies.models import FAILED, Study, utcnow_naive
from studies.store import new_study_id

from .client import PacsClient
from .fetch import pacs_study
from .models import PacsArrival

log = logging.getLogger(__name__)

RETRY_CODES = {"pacs_unavailable", "pacs_timeout"}


def record(study_uid: str, modality: str, images: int) -> PacsArrival:
    """Remember a listed study; its count changing restarts the stability clock.
    Pollers racing to add the same study: one row wins, the others read it."""
    now = utcnow_naive()
    row = db.session.get(PacsArrival, study_uid)
    if row is None:
        db.session.add(PacsArrival(study_uid=study_uid, modality=modality, images=images,
                                   seen_at=now, changed_at=now, next_try_at=now))
    elif row.images != images:
        row.images, row.changed_at = images, now
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
    return db.session.get(PacsArrival, study_uid)


def retry_unreachable(config: PacsConfig) -> None:
    """Free arrivals whose analysis failed for want of the PACS, after a delay."""
    rows = db.session.execute(
        select(PacsArrival, Study.error_code).join(Study, Study.id == PacsArrival.study_id)
        .where(Study.status == FAILED)).all()
    now = utcnow_naive()
    for arrival, code in rows:
        if code in RETRY_CODES:
            delay = doubling_delay(config.arrival_retry_s, arrival.attempts,
                                   config.arrival_retry_max_s)
            arrival.study_id, arrival.next_try_at = None, now + timedelta(seconds=delay)
    db.session.commit()


def start(arrival: PacsArrival, rule: ModelChoice, explain: bool) -> str | None:
    """Take the arrival (once across workers) and create its study; the study id."""
    study_id = new_study_id()
    taken = db.session.execute(
        update(PacsArrival).where(PacsArrival.study_uid == arrival.study_uid,
                                  PacsArrival.study_id.is_(None))
        .values(study_id=study_id, attempts=PacsArrival.attempts + 1))
    if taken.rowcount != 1:
        db.session.rollback()
        return None
    db.session.add(pacs_study(arrival.study_uid, rule.modality, rule.model, explain,
                              study_id=study_id))
    try:
        db.session.commit()
    except IntegrityError:  # an analyst's analysis of this study is running: not twice
        db.session.rollback()
        return None
    return study_id


def poll_once(client: PacsClient, config: PacsConfig) -> list[str]:
    """One look at the PACS for studies the auto-analysis rules want; the ids of the
    studies started."""
    retry_unreachable(config)
    started, stable_s = [], config.stable_s
    for rule in config.auto_rules:
        for dicom_modality in sorted(MODALITIES[rule.modality].dicom):
            for listed in client.studies(dicom_modality, limit=500):
                arrival = record(listed["study_uid"], rule.modality, listed["images"] or 0)
                now = utcnow_naive()
                ready = (arrival.study_id is None and arrival.next_try_at <= now
                         and now - arrival.changed_at >= timedelta(seconds=stable_s))
                if ready and (study_id := start(arrival, rule, config.explain)):
                    started.append(study_id)
    return started
