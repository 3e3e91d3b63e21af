"""HTML pages: upload form, result, about."""

from __future__ import annotations

import base64
import io

from flask import Blueprint, current_app, render_template
from PIL import Image

from extensions import limiter
from inference.errors import ServiceError
from inference.predict import DISCLAIMER
from inference.registry import MODALITIES

from .forms import UploadForm

bp = Blueprint("pages", __name__)


def inference_service():
    return current_app.extensions["inference"]


def model_slots() -> dict[str, list]:
    service = inference_service()
    return {key: service.entries_for(key) for key in MODALITIES}


def thumbnail_data_uri(pixels, max_side: int = 384) -> str:
    """The upload as a small inline JPEG: shown back to the user, never stored."""
    image = Image.fromarray(pixels)
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def predict_limit() -> str:
    return current_app.config["PREDICT_RATE_LIMIT"]


@bp.get("/")
def index():
    return render_template("index.html", form=UploadForm(), slots=model_slots(),
                           modalities=MODALITIES)


@bp.post("/")
@limiter.limit(predict_limit)
def analyse():
    form = UploadForm()
    if not form.validate_on_submit():
        return render_template("index.html", form=form, slots=model_slots(),
                               modalities=MODALITIES), 400
    upload = form.image.data
    try:
        decoded, prediction = inference_service().analyse(
            upload.read(), form.modality.data, form.model.data, filename=upload.filename)
    except ServiceError as exc:
        return render_template("index.html", form=form, slots=model_slots(),
                               modalities=MODALITIES, error=exc.message), exc.status
    return render_template("result.html", prediction=prediction,
                           modality=MODALITIES[prediction.modality],
                           thumbnail=thumbnail_data_uri(decoded.pixels),
                           disclaimer=DISCLAIMER)


@bp.get("/about")
def about():
    return render_template("about.html", slots=model_slots(), modalities=MODALITIES,
                           disclaimer=DISCLAIMER)
