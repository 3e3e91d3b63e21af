"""What the web edge and the queue call: submit, read, delete and run studies.

Nothing here knows HTTP or the queue: the web edge submits, then hands the id to the
queue; a worker calls ``run``. Settings come in as one ``StudyConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass

from inference.errors import InvalidRequest, ModelUnavailable
from inference.registry import normalize_architecture, normalize_modality
from inference.service import InferenceService

from . import store
from .errors import StudyNotFound
from .intake import Intake, Limits, read_archive, read_uploads
from .ordering import order_files
from .report import study_csv, study_view
from .runner import BATCH, ImageSource, Settings, process_study
from .verdict import StudyRule


@dataclass(frozen=True)
class StudyConfig:
    limits: Limits
    retention_hours: float = 24.0
    lease_s: float = 120.0  # a worker's hold on a study, renewed by every batch
    requeue_after_s: float = 300.0  # queued this long with no taker: queue it again
    max_attempts: int = 3  # workers a study may outlive before it fails
    rule: StudyRule = StudyRule()
    batch: int = BATCH  # images per forward pass

    @classmethod
    def from_mapping(cls, config) -> "StudyConfig":
        return cls(
            limits=Limits(max_images=int(config["MAX_STUDY_IMAGES"]),
                          max_bytes=int(config["MAX_STUDY_BYTES"])),
            retention_hours=float(config["STUDY_RETENTION_HOURS"]),
            lease_s=float(config["STUDY_LEASE_S"]),
            requeue_after_s=float(config["STUDY_REQUEUE_AFTER_S"]),
            max_attempts=int(config["STUDY_MAX_ATTEMPTS"]),
            rule=StudyRule(min_run=int(config["STUDY_MIN_RUN"]),
                           min_share=float(config["STUDY_MIN_SHARE"])),
            batch=max(1, int(config["STUDY_BATCH"])))

    def settings(self) -> Settings:
        return Settings(lease_s=self.lease_s, rule=self.rule, batch=self.batch)


def check_models(inference: InferenceService, modality: str, model: str) -> None:
    """Refuse a study at once when its model is not there (not after it queued)."""
    entries = inference.entries_for(modality)
    chosen = [e for e in entries if model in ("all", e.architecture)]
    usable = [e for e in chosen if e.available and not e.card_error]
    if usable:
        return
    if model == "all" or not chosen:
        wanted = ", ".join(e.expected_relpath for e in entries) or "a model file"
        raise ModelUnavailable(f"No model is installed for this modality: put one of "
                               f"{wanted} under the model folder.")
    entry = chosen[0]
    if entry.card_error:
        raise ModelUnavailable(f"The model card {entry.card_error} is invalid.")
    raise ModelUnavailable(f"The {entry.display_name} model for {modality} is not "
                           f"installed: put {entry.expected_relpath} under the model folder.")


def read_upload(config: StudyConfig, uploads: list[tuple[str | None, bytes]] | None,
                archive: bytes | None) -> Intake:
    if uploads and archive is not None:
        raise InvalidRequest("Send either 'images' or one 'archive', not both.")
    if archive is not None:
        return read_archive(archive, config.limits)
    if not uploads:
        raise InvalidRequest("No file was found: send the images as multipart file fields "
                             "named 'images', or one .zip named 'archive'.")
    return read_uploads(uploads, config.limits)


def submit(inference: InferenceService, config: StudyConfig, modality: str | None,
           model: str | None, explain: bool,
           uploads: list[tuple[str | None, bytes]] | None = None,
           archive: bytes | None = None) -> str:
    """Check everything that can be checked now, store the study; its id."""
    modality_key = normalize_modality(modality)
    architecture = normalize_architecture(model)
    check_models(inference, modality_key, architecture)
    intake = read_upload(config, uploads, archive)
    ordered, warnings = order_files(intake.files)
    return store.create_study(modality_key, architecture, explain, ordered,
                              intake.notes + warnings)


def view(config: StudyConfig, study_id: str, with_images: bool = True) -> dict:
    """The study; without its images (``with_images=False``) for a cheap progress poll."""
    study = store.get_study(study_id, config.retention_hours)
    data = study_view(study, store.images_of(study.id) if with_images else [])
    if not with_images:
        del data["images"]
    return data


def csv_text(config: StudyConfig, study_id: str) -> str:
    return study_csv(view(config, study_id))


def heatmap_png(config: StudyConfig, study_id: str, index: int, architecture: str) -> bytes:
    study = store.get_study(study_id, config.retention_hours)
    png = store.heatmap(study.id, index, architecture)
    if png is None:
        raise StudyNotFound("This study has no heatmap of that image for that model.")
    return png


def heatmaps_of(config: StudyConfig, study_id: str, index: int) -> list[str]:
    study = store.get_study(study_id, config.retention_hours)
    return store.heatmap_architectures(study.id, index)


def delete(config: StudyConfig, study_id: str) -> None:
    study = store.get_study(study_id, config.retention_hours)
    store.delete_study(study.id)


def run(inference: InferenceService, config: StudyConfig, study_id: str,
        source: ImageSource | None = None) -> str:
    return process_study(inference, study_id, config.settings(), source)


def housekeeping(config: StudyConfig) -> tuple[list[str], int]:
    """Studies to queue again (their worker died, or the queue lost them), and how many
    expired studies were purged."""
    purged = store.purge_expired(config.retention_hours)
    return store.stale_studies(config.requeue_after_s, config.max_attempts), purged
