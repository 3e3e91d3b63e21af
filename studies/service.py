"""What the web edge and the queue call: submit, read, delete and run studies.

Nothing here knows HTTP or the queue: the web edge submits, then hands the id to the
queue; a worker calls ``run``. Settings come in as one ``StudyConfig``.
"""

from __future__ import annotations

from audit import actions, trail
from audit.trail import Actor
from inference.errors import InvalidRequest
from inference.registry import check_usable, normalize_architecture, normalize_modality
from inference.service import InferenceService
from settings import StudySettings

from . import store
from .access import SYSTEM, StudyAccess
from .errors import StudyNotFound
from .intake import Intake, read_archive, read_uploads
from .models import DONE
from .ordering import order_files
from .report import study_csv, study_view
from .result import StudyResult, study_result
from .runner import ImageSource, process_study


def check_models(inference: InferenceService, modality: str, model: str) -> None:
    """Refuse a study at once when its model is not there (not after it queued)."""
    check_usable(inference.entries(), modality, model)


def read_upload(config: StudySettings, uploads: list[tuple[str | None, bytes]] | None,
                archive: bytes | None) -> Intake:
    if uploads and archive is not None:
        raise InvalidRequest("Send either 'images' or one 'archive', not both.")
    if archive is not None:
        return read_archive(archive, config.limits)
    if not uploads:
        raise InvalidRequest("No file was found: send the images as multipart file fields "
                             "named 'images', or one .zip named 'archive'.")
    return read_uploads(uploads, config.limits)


def submit(inference: InferenceService, config: StudySettings, modality: str | None,
           model: str | None, explain: bool,
           uploads: list[tuple[str | None, bytes]] | None = None,
           archive: bytes | None = None, actor: Actor = trail.SYSTEM) -> str:
    """Check everything that can be checked now, store the study (and its audit
    event, in the same transaction); its id."""
    modality_key = normalize_modality(modality)
    architecture = normalize_architecture(model)
    check_models(inference, modality_key, architecture)
    intake = read_upload(config, uploads, archive)
    ordered, warnings = order_files(intake.files)
    study_id = store.new_study_id()
    trail.record(actions.ANALYSIS_STARTED, actor, study_id=study_id, source="upload",
                 modality=modality_key, model=architecture, images=len(ordered))
    return store.create_study(study_id, modality_key, architecture, explain, ordered,
                              intake.notes + warnings, actor.user_id)


def opened(study, access: StudyAccess, action: str = actions.STUDY_VIEWED, **what) -> None:
    """Record that ``access``'s reader saw the study's results, before they are shown."""
    trail.record_now(action, access.actor, study_id=study.id,
                     pacs_study_uid=study.pacs_study_uid, **what)


def view(config: StudySettings, study_id: str, access: StudyAccess,
         with_images: bool = True, export: str | None = None) -> dict:
    """The study; without its images (``with_images=False``) for a cheap progress poll.
    ``export`` names the download it is read for (the trail records an export)."""
    study = store.get_study(study_id, config.retention_hours, access)
    if export:
        opened(study, access, actions.EXPORTED, format=export)
    elif with_images or study.status == DONE:  # a running study's poll shows no result
        opened(study, access)
    data = study_view(study, store.images_of(study.id) if with_images else [],
                      config.write_max_attempts)
    if not with_images:
        del data["images"]
    return data


def result(config: StudySettings, study_id: str) -> StudyResult:
    """The study's answer as typed values (for the writers that are not the web)."""
    study = store.get_study(study_id, config.retention_hours, SYSTEM)
    return study_result(study, store.images_of(study.id))


def mine(config: StudySettings, owner_id: int) -> list[dict]:
    """The account's studies, newest first, without their images."""
    return [study_view(study, [], config.write_max_attempts)
            for study in store.studies_of(owner_id, config.retention_hours)]


def csv_text(config: StudySettings, study_id: str, access: StudyAccess) -> str:
    return study_csv(view(config, study_id, access, export="csv"))


def heatmap_png(config: StudySettings, study_id: str, access: StudyAccess, index: int,
                architecture: str) -> bytes:
    study = store.get_study(study_id, config.retention_hours, access)
    png = store.heatmap(study.id, index, architecture) if store.is_index(index) else None
    if png is None:
        raise StudyNotFound("This study has no heatmap of that image for that model.")
    opened(study, access, part="heatmap", image=index)
    return png


def heatmaps_of(config: StudySettings, study_id: str, access: StudyAccess,
                index: int) -> list[str]:
    study = store.get_study(study_id, config.retention_hours, access)
    return store.heatmap_architectures(study.id, index) if store.is_index(index) else []


def delete(config: StudySettings, study_id: str, access: StudyAccess) -> None:
    study = store.get_study(study_id, config.retention_hours, access)
    trail.record(actions.DELETED, access.actor, study_id=study.id,
                 pacs_study_uid=study.pacs_study_uid)
    store.delete_study(study.id)


def run(inference: InferenceService, config: StudySettings, study_id: str,
        source: ImageSource | None = None) -> str:
    return process_study(inference, study_id, config, source)


def housekeeping(config: StudySettings) -> tuple[list[str], int]:
    """Studies to queue again (their worker died, or the queue lost them), and how many
    expired studies were purged."""
    purged = store.purge_expired(config.retention_hours)
    return store.stale_studies(config.requeue_after_s, config.max_attempts), purged
