"""Starting the analysis of a study the node received, once it is complete.

A study is taken once no instance arrived for ``DICOM_STABLE_S`` seconds, by one
conditional UPDATE on its ``node_arrivals`` row (several workers and restarts start it
once, the rule auto-analysis follows). Its instances become the study's images in
reading order, the way an upload's do, and leave the node's staging.
"""

from __future__ import annotations

import io
from datetime import timedelta

import pydicom
from sqlalchemy import delete, exists, select, update

from audit import actions, trail
from extensions import db
from pacs.fetch import header_only
from studies.intake import StudyFile
from studies.models import Study, utcnow_naive
from studies.ordering import order_files
from studies.store import create_study, new_study_id

from .models import NodeArrival, NodeInstance
from .settings import NodeSettings

SOURCE = "dicom-node"  # Study.source of the studies the node started


def stable(settings: NodeSettings, limit: int = 50) -> list[NodeArrival]:
    quiet_since = utcnow_naive() - timedelta(seconds=settings.stable_s)
    return list(db.session.scalars(
        select(NodeArrival).where(NodeArrival.study_id.is_(None),
                                  NodeArrival.changed_at <= quiet_since,
                                  NodeArrival.images > 0)
        .order_by(NodeArrival.changed_at).limit(limit)))


def start_stable(settings: NodeSettings) -> list[str]:
    """Start every study that stopped growing; the ids of the studies started."""
    started = []
    for arrival in stable(settings):
        rule = next((r for r in settings.rules if r.modality == arrival.modality), None)
        if rule is None:
            continue
        study_id = take(arrival.study_uid)
        if study_id is not None:
            start(study_id, arrival, rule.model, settings.explain,
                  keep_headers=settings.destination is not None)
            started.append(study_id)
    db.session.commit()
    return started


def take(study_uid: str) -> str | None:
    """The new study's id for the caller whose UPDATE won; None for the others."""
    study_id = new_study_id()
    taken = db.session.execute(
        update(NodeArrival).where(NodeArrival.study_uid == study_uid,
                                  NodeArrival.study_id.is_(None))
        .values(study_id=study_id).execution_options(synchronize_session=False))
    if taken.rowcount != 1:
        db.session.rollback()
        return None
    return study_id


def start(study_id: str, arrival: NodeArrival, model: str, explain: bool,
          keep_headers: bool) -> None:
    """The study, its images in reading order, and the staging emptied (down to each
    image's header where a C-STORE report will need them): one commit."""
    rows = db.session.execute(select(NodeInstance.sop_uid, NodeInstance.data)
                              .where(NodeInstance.study_uid == arrival.study_uid)).all()
    ordered, warnings = order_files([StudyFile(sop_uid, data) for sop_uid, data in rows])
    trail.record(actions.ANALYSIS_STARTED, trail.SYSTEM, study_id=study_id,
                 source=SOURCE, pacs_study_uid=arrival.study_uid, modality=arrival.modality,
                 model=model, images=len(ordered), calling_ae=arrival.calling_ae)
    if keep_headers:
        for sop_uid, data in rows:
            db.session.execute(update(NodeInstance).where(NodeInstance.sop_uid == sop_uid)
                               .values(data=header_only(data))
                               .execution_options(synchronize_session=False))
    else:
        db.session.execute(delete(NodeInstance)
                           .where(NodeInstance.study_uid == arrival.study_uid))
    create_study(study_id, arrival.modality, model, explain, ordered, warnings,
                 source=SOURCE, study_uid=arrival.study_uid)  # commits


def forget_purged() -> int:
    """Arrivals whose study was deleted or purged at the end of its retention: nothing
    of them stays (a study sent again after that is a new one)."""
    gone = list(db.session.scalars(
        select(NodeArrival.study_uid).where(
            NodeArrival.study_id.is_not(None),
            ~exists().where(Study.id == NodeArrival.study_id))))
    if gone:
        db.session.execute(delete(NodeInstance).where(NodeInstance.study_uid.in_(gone)))
        db.session.execute(delete(NodeArrival).where(NodeArrival.study_uid.in_(gone)))
    db.session.commit()
    return len(gone)


def patient_of(study_uid: str):
    """The kept patient and study attributes of a node study (None if none kept)."""
    data = db.session.scalar(select(NodeArrival.patient)
                             .where(NodeArrival.study_uid == study_uid))
    return pydicom.dcmread(io.BytesIO(data), force=True) if data else None


def forget_patient(study_uid: str) -> None:
    """Once the report is sent, nothing of the patient stays."""
    db.session.execute(update(NodeArrival).where(NodeArrival.study_uid == study_uid)
                       .values(patient=None).execution_options(synchronize_session=False))
