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
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from extensions import db
from inference.registry import normalize_architecture, normalize_modality
from jobs.backoff import doubling_delay
from studies.models import FAILED, Study, utcnow
from studies.remote import remote_study
from studies.store import new_study_id

from .analysis import IMAGE_MODALITIES
from .client import PacsClient
from .models import PacsArrival

log = logging.getLogger(__name__)

RETRY_CODES = {"pacs_unavailable", "pacs_timeout"}
RETRY_FIRST_S, RETRY_MAX_S = 60, 3600


@dataclass(frozen=True)
class AutoRule:
    modality: str  # ct or xray
    model: str  # an architecture or all


def parse_auto_analyse(text: str | None) -> list[AutoRule]:
    """``"ct:all,xray:resnet50"`` -> rules; a bad entry is an error at start."""
    rules = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        modality, _, model = part.partition(":")
        rules.append(AutoRule(normalize_modality(modality), normalize_architecture(model)))
    return rules


def record(study_uid: str, modality: str, images: int) -> PacsArrival:
    """Remember a listed study; its count changing restarts the stability clock.
    Pollers racing to add the same study: one row wins, the others read it."""
    now = utcnow()
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


def retry_unreachable() -> None:
    """Free arrivals whose analysis failed for want of the PACS, after a delay."""
    rows = db.session.execute(
        select(PacsArrival, Study.error_code).join(Study, Study.id == PacsArrival.study_id)
        .where(Study.status == FAILED)).all()
    now = utcnow()
    for arrival, code in rows:
        if code in RETRY_CODES:
            delay = doubling_delay(RETRY_FIRST_S, arrival.attempts, RETRY_MAX_S)
            arrival.study_id, arrival.next_try_at = None, now + timedelta(seconds=delay)
    db.session.commit()


def start(arrival: PacsArrival, rule: AutoRule, explain: bool) -> str | None:
    """Take the arrival (once across workers) and create its study; the study id."""
    study_id = new_study_id()
    taken = db.session.execute(
        update(PacsArrival).where(PacsArrival.study_uid == arrival.study_uid,
                                  PacsArrival.study_id.is_(None))
        .values(study_id=study_id, attempts=PacsArrival.attempts + 1))
    if taken.rowcount != 1:
        db.session.rollback()
        return None
    db.session.add(remote_study("pacs", arrival.study_uid, rule.modality, rule.model,
                                explain, study_id=study_id))
    db.session.commit()
    return study_id


def poll_once(client: PacsClient, rules: list[AutoRule], stable_s: float,
              explain: bool = False) -> list[str]:
    """One look at the PACS; the ids of the studies started."""
    retry_unreachable()
    started = []
    for rule in rules:
        for dicom_modality in sorted(IMAGE_MODALITIES[rule.modality]):
            for listed in client.studies(dicom_modality, limit=500):
                arrival = record(listed["study_uid"], rule.modality, listed["images"] or 0)
                now = utcnow()
                ready = (arrival.study_id is None and arrival.next_try_at <= now
                         and now - arrival.changed_at >= timedelta(seconds=stable_s))
                if ready and (study_id := start(arrival, rule, explain)):
                    started.append(study_id)
    return started
