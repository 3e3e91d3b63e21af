"""HTML pages: upload form, result (with the report from ``web.report``), about."""

from __future__ import annotations

from flask import Blueprint, render_template

from extensions import limiter
from inference.errors import ServiceError
from inference.predict import DISCLAIMER
from inference.registry import ARCHITECTURES, MODALITIES

from .errors import status_and_code
from .forms import UploadForm
from .report import report_data_uri, result_context
from .security import PREDICT_LIMIT_SCOPE, predict_limit
from .services import inference_service

bp = Blueprint("pages", __name__)


@bp.app_template_filter("ms")
def milliseconds(value: float | None) -> str:
    """``212.4`` -> ``212 ms``, ``0.43`` -> ``0.4 ms``: sub-millisecond runs are not 0."""
    if value is None:
        return "-"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


@bp.app_template_filter("arch_name")
def arch_name(key: str) -> str:
    """``inceptionv3`` -> ``InceptionV3``: the name people know the network by."""
    architecture = ARCHITECTURES.get(key)
    return architecture.name if architecture else key


def model_slots() -> dict[str, list]:
    service = inference_service()
    return {key: service.entries_for(key) for key in MODALITIES}


@bp.get("/")
def index():
    return render_template("index.html", form=UploadForm(), slots=model_slots(),
                           modalities=MODALITIES)


@bp.post("/")
@limiter.shared_limit(predict_limit, scope=PREDICT_LIMIT_SCOPE)
def analyse():
    form = UploadForm()
    if not form.validate_on_submit():
        return render_template("index.html", form=form, slots=model_slots(),
                               modalities=MODALITIES), 400
    upload = form.image.data
    try:
        decoded, prediction = inference_service().analyse(
            upload.read(), form.modality.data, form.model.data, filename=upload.filename,
            explain=bool(form.explain.data))
    except ServiceError as exc:
        status, _code = status_and_code(exc)
        return render_template("index.html", form=form, slots=model_slots(),
                               modalities=MODALITIES, error=exc.message), status
    context = result_context(decoded, prediction,
                             inference_service().entries_for(prediction.modality))
    return render_template("result.html", report_uri=report_data_uri(context), **context)


@bp.get("/about")
def about():
    return render_template("about.html", slots=model_slots(), modalities=MODALITIES,
                           disclaimer=DISCLAIMER)
