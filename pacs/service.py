"""What the web edge and the command line call for the PACS: browse, analyse a study
where it lives (a study job whose images a worker fetches), and retry a write-back
that failed."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from audit import actions, trail
from audit.trail import Actor
from extensions import db
from inference.errors import ServiceError
from inference.registry import normalize_architecture, normalize_modality
from settings import PacsConfig, StudySettings
from studies.access import StudyAccess
from studies.errors import StudyNotFound
from studies.models import DONE, FAILED, Study
from studies.report import write_back_view
from studies.service import check_models
from studies.store import get_study, running_analysis

from . import writeback
from .client import PacsClient
from .fetch import pacs_study, wanted
from .report_sr import SOFTWARE_NAME

PUBLIC_FIELDS = ("study_uid", "date", "description", "modalities", "series", "images")


def browse(client: PacsClient, modality: str | None = None, limit: int = 100,
           with_patient: bool = False, actor: Actor = trail.SYSTEM) -> list[dict]:
    """The PACS's studies, newest first. Patient fields only where a person picks a
    study (the page), never in the API or anything the tool keeps. The query is
    recorded before its answer is handed out."""
    with trail.audited(actions.PACS_QUERY, actor, modality=modality,
                       patient_fields=with_patient):
        found = client.studies(modality.upper() if modality else None, limit=limit)
    if with_patient:
        return found
    return [{key: study.get(key) for key in PUBLIC_FIELDS} for study in found]


def analyse(client: PacsClient, inference, study_uid: str, modality: str | None,
            model: str | None, explain: bool, actor: Actor = trail.SYSTEM) -> tuple[str, bool]:
    """Check the choices and that the PACS study has images of that modality, then
    create the study job: (its id, True) for the caller to queue. While an analysis of
    the study is still queued or running, (that one's id, False): a second report of
    the same images would only confuse the study's readers."""
    running = running_analysis(study_uid) if isinstance(study_uid, str) else None
    if running is not None:
        return running.id, False
    modality_key = normalize_modality(modality)
    architecture = normalize_architecture(model)
    check_models(inference, modality_key, architecture)
    instances = client.instances(study_uid)
    if not instances:
        raise StudyNotFound("The PACS has no study with this UID.")
    if not any(wanted(i, modality_key, SOFTWARE_NAME) for i in instances):
        kinds = sorted({i.get("modality") or "?" for i in instances})
        raise StudyNotFound(f"This PACS study holds no image of the chosen modality "
                            f"(it holds {', '.join(kinds)}).")
    return save_unless_running(pacs_study(study_uid, modality_key, architecture, explain,
                                          actor=actor))


def save_unless_running(study) -> tuple[str, bool]:
    """Save the new analysis, (its id, True), unless another caller's analysis of the
    same PACS study got in first: then (that one's id, False). The database decides
    (a unique index on running analyses' study UID), so callers racing past the check
    in ``analyse`` still start one analysis between them."""
    study_id, study_uid = study.id, study.pacs_study_uid
    db.session.add(study)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()  # drops the study and its audit event together
        running = running_analysis(study_uid)
        if running is None:  # not the index: a real fault
            raise
        return running.id, False
    return study_id, True


class NothingToRetry(ServiceError):
    """A write-back retry asked of a study with no failed write-back to retry."""

    code = "nothing_to_retry"


def retry_refusal(study: Study, config: PacsConfig) -> str | None:
    """Why this study has no failed write-back to retry now; None when it has one."""
    if study.source != "pacs":
        return "This study's images did not come from the PACS: there is nothing to write back."
    if study.status != DONE:
        return ("The analysis failed: there is no answer to write back." if study.status ==
                FAILED else "The analysis is still running: its write-back comes after it.")
    if study.written:
        return "The answer is already written into the PACS study."
    if not config.writes_back:
        return "Write-back into the PACS is switched off on this site (PACS_WRITE_BACK)."
    if not study.write_attempts:
        return ("The write-back is still under way: there is no failure to retry."
                if study.write_after is not None else
                "Write-back was off when this study finished: nothing failed. An operator "
                "can write it with 'flask pacs write-back'.")
    return None


def retry_write_back(study_id: str, access: StudyAccess, config: PacsConfig,
                     study_config: StudySettings) -> dict:
    """Take a failed write-back for one more try (a new round of automatic tries) and
    return its write-back status; the caller queues the write. StudyNotFound for a study
    ``access`` may not open, NothingToRetry when there is no failed write to retry."""
    study = get_study(study_id, study_config.retention_hours, access)
    refusal = retry_refusal(study, config)
    if refusal is not None:
        raise NothingToRetry(refusal)
    if not writeback.restart(study.id, config.write_lease_s):
        raise NothingToRetry("The write-back is already being retried.")
    db.session.refresh(study)
    return write_back_view(study, config.write_max_attempts)
