"""The PACS page: its studies (patient names shown to pick one, never kept), a
modality filter, and an Analyse button that starts a study job and opens its page."""

from __future__ import annotations

from flask import Blueprint, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from wtforms import BooleanField, HiddenField, RadioField, SelectField

from extensions import limiter
from inference.errors import ServiceError
from inference.registry import MODALITIES
from pacs import service as pacs
from studies.models import Study

from .access import actor
from .errors import status_and_code
from .forms import MODEL_CHOICES
from .pacs_api import pacs_client, start_analysis
from .studies_api import study_rate_limit

bp = Blueprint("pacs_pages", __name__)

MODALITY_FILTERS = [("", "All"), ("CT", "CT"), ("CR", "CR"), ("DX", "DX")]


class AnalyseForm(FlaskForm):
    study_uid = HiddenField()
    modality = RadioField("Image type", choices=[(m.key, m.label) for m in MODALITIES.values()],
                          default="ct")
    model = SelectField("Model", choices=MODEL_CHOICES, default="all")
    explain = BooleanField("Heatmaps", default=False)


def analyses_of(study_uids: list[str]) -> dict[str, Study]:
    """The latest analysis of each listed PACS study, for a link to its result."""
    if not study_uids:
        return {}
    rows = Study.query.filter(Study.pacs_study_uid.in_(study_uids)).order_by(
        Study.created_at).all()
    return {row.pacs_study_uid: row for row in rows}


def render_list(error: str | None = None, status: int = 200):
    modality = (request.values.get("filter") or "").strip().upper()
    studies, problem = [], error
    try:
        studies = pacs.browse(pacs_client(), modality or None, with_patient=True,
                              actor=actor())
    except ServiceError as exc:
        problem, status = exc.message, status_and_code(exc)[0]
    return render_template(
        "pacs.html", studies=studies, filters=MODALITY_FILTERS, chosen=modality,
        form=AnalyseForm(), error=problem,
        analyses=analyses_of([s["study_uid"] for s in studies])), status


@bp.get("/pacs")
def pacs_list():
    return render_list()


@bp.post("/pacs/analyse")
@limiter.limit(study_rate_limit)
def analyse():
    form = AnalyseForm()
    if not form.validate_on_submit():
        return render_list("The form expired or was incomplete: try again.", 400)
    try:
        study_id = start_analysis(form.study_uid.data or "")
    except ServiceError as exc:
        return render_list(exc.message, status_and_code(exc)[0])
    return redirect(url_for("study_pages.study", study_id=study_id), 303)
