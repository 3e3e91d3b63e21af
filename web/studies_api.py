"""JSON API for studies: submit (202), progress and results, CSV, delete, and an
analyst's retry of a PACS write-back that failed (202)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from extensions import limiter
from inference.errors import InvalidRequest
from pacs import service as pacs
from settings import StudySettings
from studies import service as studies

from .access import actor, study_access
from .api import flag
from .services import inference_service, settings, tasks

bp = Blueprint("studies_api", __name__, url_prefix="/api/v1/studies")


def study_config() -> StudySettings:
    return settings().studies


def study_rate_limit() -> str:
    return study_config().rate_limit


def read_files() -> tuple[list[tuple[str | None, bytes]] | None, bytes | None]:
    """(images, archive) from the multipart body; only ``images`` may repeat."""
    for fields in (request.form, request.files):
        for name in fields:
            if name != "images" and len(fields.getlist(name)) > 1:
                raise InvalidRequest(f"The field '{name[:40]}' was sent more than once: "
                                     "send each field once.")
    # A browser sends a file input left empty as a part with no name and no bytes.
    images = [(f.filename, f.read()) for f in request.files.getlist("images") if f.filename]
    archive = request.files.get("archive")
    archive = archive if archive is not None and archive.filename else None
    return images or None, (archive.read() if archive is not None else None)


def submit_from_request() -> str:
    """Shared by the API and the upload page: store the study and queue it."""
    images, archive = read_files()
    study_id = studies.submit(inference_service(), study_config(),
                              request.form.get("modality"), request.form.get("model"),
                              flag("explain"), uploads=images, archive=archive,
                              actor=actor())
    tasks().queue_study(study_id)
    return study_id


@bp.post("")
@limiter.limit(study_rate_limit)
def submit():
    study_id = submit_from_request()
    url = url_for("studies_api.status", study_id=study_id)
    response = jsonify({"id": study_id, "status": "queued", "url": url})
    response.status_code = 202
    response.headers["Location"] = url
    return response


@bp.get("/<study_id>")
def status(study_id: str):
    with_images = request.args.get("images", "1") != "0"  # images=0: progress only
    return jsonify(studies.view(study_config(), study_id, study_access(), with_images))


@bp.get("/<study_id>/results.csv")
def results_csv(study_id: str):
    text = studies.csv_text(study_config(), study_id, study_access())
    return Response(text, mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="study-{study_id[:8]}.csv"',
        "Cache-Control": "no-store"})


@bp.delete("/<study_id>")
def delete(study_id: str):
    studies.delete(study_config(), study_id, study_access())
    return "", 204


def retry_write_back_from_request(study_id: str) -> dict:
    """Shared by the API and the study page: take the failed write-back for another try
    and queue it, the caller named as who asked; its write-back status."""
    config = settings()
    write_back = pacs.retry_write_back(study_id, study_access(), config.pacs, config.studies)
    current_app.extensions["pacs_tasks"].queue_write(study_id, actor())
    return write_back


@bp.post("/<study_id>/write-back")
def retry_write_back(study_id: str):
    write_back = retry_write_back_from_request(study_id)
    url = url_for("studies_api.status", study_id=study_id)
    response = jsonify({"id": study_id, "url": url, "write_back": write_back})
    response.status_code = 202
    response.headers["Location"] = url
    return response
