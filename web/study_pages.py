"""Study pages: upload many images, watch progress, read the verdict, plot and table.

The study id in the URL is the only key to the results, so nothing here logs it.
"""

from __future__ import annotations

import base64

from flask import Blueprint, Response, flash, redirect, render_template, url_for

from auth.roles import ANALYST
from extensions import limiter
from inference.errors import ServiceError
from inference.predict import COVID, NON_COVID
from inference.registry import MODALITIES
from pacs.service import NothingToRetry
from studies import service as studies
from studies.errors import StudyNotFound
from studies.plot import probability_plot_png

from .access import current_identity, study_access
from .errors import status_and_code
from .pages import model_slots
from .studies_api import (retry_write_back_from_request, study_config, study_rate_limit,
                          submit_from_request)
from .study_forms import ARCHIVE_ACCEPT, IMAGE_ACCEPT, ButtonForm, StudyForm

bp = Blueprint("study_pages", __name__, url_prefix="/studies")

RUNNING_STATES = ("queued", "running")
FAILED_WRITES = ("retrying", "failed")  # a write-back an analyst may try again


@bp.app_template_filter("image_label")
def image_label(image: dict) -> str:
    """An image's own answer (one model's, or the models' combined), "" if it failed."""
    if image.get("positive") is None:
        return ""
    return COVID if image["positive"] else NON_COVID


@bp.app_template_filter("percent")
def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def series_numbers(images: list[dict]) -> dict:
    """Series UID -> 1, 2, ... by first appearance: a 60-character UID is no column."""
    numbers: dict = {}
    for image in images:
        uid = image.get("series_uid")
        if uid is not None and uid not in numbers:
            numbers[uid] = len(numbers) + 1
    return numbers


def shared_warnings(images: list[dict]) -> list[str]:
    """Warnings every image carries (a 64 x 64 series warns on each slice): said once
    above the table instead of on hundreds of rows."""
    if len(images) < 2:
        return []
    common = set(images[0]["warnings"])
    for image in images[1:]:
        common &= set(image["warnings"])
    return [warning for warning in images[0]["warnings"] if warning in common]


def render_form(form: StudyForm, error: str | None = None) -> str:
    limits = study_config().limits
    return render_template("study_new.html", form=form, error=error, slots=model_slots(),
                           modalities=MODALITIES, image_accept=IMAGE_ACCEPT,
                           archive_accept=ARCHIVE_ACCEPT, max_images=limits.max_images,
                           max_mib=limits.max_bytes // (1024 * 1024))


@bp.get("/")
def mine():
    """The signed-in user's studies, newest first."""
    return render_template("study_list.html",
                           studies=studies.mine(study_config(), current_identity().user_id))


@bp.get("/new")
def new_study():
    return render_form(StudyForm())


@bp.post("/new")
@limiter.limit(study_rate_limit)
def submit():
    form = StudyForm()
    if not form.validate_on_submit():
        return render_form(form), 400
    try:
        study_id = submit_from_request()
    except ServiceError as exc:
        status, _code = status_and_code(exc)
        return render_form(form, error=exc.message), status
    return redirect(url_for(".study", study_id=study_id), code=303)


@bp.get("/<study_id>")
def study(study_id: str):
    view = studies.view(study_config(), study_id, study_access())
    retry = current_identity().has(ANALYST) and \
        view.get("write_back", {}).get("status") in FAILED_WRITES
    return render_template("study.html", study=view, running=view["status"] in RUNNING_STATES,
                           series=series_numbers(view["images"]), delete_form=ButtonForm(),
                           retry_form=ButtonForm() if retry else None,
                           shared=shared_warnings(view["images"]))


@bp.get("/<study_id>/plot.png")
def plot(study_id: str):
    png = probability_plot_png(studies.view(study_config(), study_id, study_access()))
    return Response(png, mimetype="image/png", headers={"Cache-Control": "no-store"})


def image_of(view: dict, index: int) -> dict:
    if not 0 <= index < len(view["images"]):
        raise StudyNotFound("This study has no image with that number.")
    return view["images"][index]


@bp.get("/<study_id>/images/<int:index>")
def image(study_id: str, index: int):
    config = study_config()
    view = studies.view(config, study_id, study_access())
    return render_template("study_image.html", study=view, image=image_of(view, index),
                           heatmaps=studies.heatmaps_of(config, study_id, study_access(), index),
                           series=series_numbers(view["images"]))


@bp.get("/<study_id>/images/<int:index>/heatmap/<architecture>.png")
def heatmap(study_id: str, index: int, architecture: str):
    png = studies.heatmap_png(study_config(), study_id, study_access(), index,
                             architecture)
    return Response(png, mimetype="image/png", headers={"Cache-Control": "no-store"})


@bp.get("/<study_id>/report")
def report(study_id: str):
    view = studies.view(study_config(), study_id, study_access(), export="report")
    if view["status"] != "done":
        raise StudyNotFound("This study has no report yet: it has not finished.")
    plot_uri = "data:image/png;base64," + \
        base64.b64encode(probability_plot_png(view)).decode("ascii")
    return render_template("study_report.html", study=view, plot_uri=plot_uri,
                           series=series_numbers(view["images"]),
                           shared=shared_warnings(view["images"]))


@bp.post("/<study_id>/delete")
def delete(study_id: str):
    studies.delete(study_config(), study_id, study_access())
    flash("Study deleted: its images and results are gone.", "success")
    return redirect(url_for(".new_study"), code=303)


@bp.post("/<study_id>/write-back")
def retry_write_back(study_id: str):
    try:
        retry_write_back_from_request(study_id)
    except NothingToRetry as exc:
        flash(exc.message, "warning")
    else:
        flash("The write-back into the PACS is queued again.", "success")
    return redirect(url_for(".study", study_id=study_id), code=303)
