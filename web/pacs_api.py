"""JSON API for the PACS: list its studies, analyse one where it lives (202)."""

from __future__ import annotations

from flask import Blueprint, jsonify, request, url_for

from extensions import limiter
from pacs import service as pacs

from .access import actor
from .api import flag
from .services import inference_service, settings, tasks
from .studies_api import study_rate_limit

bp = Blueprint("pacs_api", __name__, url_prefix="/api/v1/pacs")


def pacs_client():
    """The configured server: no request can name another."""
    return settings().pacs.client()


def start_analysis(study_uid: str) -> str:
    """Shared by the API and the page: create the study job and queue it (or the
    analysis of this study that is still running)."""
    study_id, new = pacs.analyse(pacs_client(), inference_service(), study_uid,
                                 request.form.get("modality"), request.form.get("model"),
                                 flag("explain"), actor=actor())
    if new:
        tasks().queue_study(study_id)
    return study_id


@bp.get("/studies")
def studies():
    modality = (request.args.get("modality") or "").strip() or None
    return jsonify({"studies": pacs.browse(pacs_client(), modality, actor=actor())})


@bp.post("/studies/<study_uid>/analyses")
@limiter.limit(study_rate_limit)
def analyse(study_uid: str):
    study_id = start_analysis(study_uid)
    url = url_for("studies_api.status", study_id=study_id)
    response = jsonify({"id": study_id, "status": "queued", "url": url})
    response.status_code = 202
    response.headers["Location"] = url
    return response
