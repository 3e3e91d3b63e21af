"""What the web edge and the command line call for the PACS: browse, and analyse a
study where it lives (a study job whose images a worker fetches)."""

from __future__ import annotations

from audit import actions, trail
from audit.trail import Actor
from extensions import db
from inference.registry import normalize_architecture, normalize_modality
from studies.errors import StudyNotFound
from studies.service import check_models
from studies.store import running_analysis

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
    study = pacs_study(study_uid, modality_key, architecture, explain, actor=actor)
    db.session.add(study)
    db.session.commit()
    return study.id, True
