"""HTML pages: upload form, result (with its downloadable report), about."""

from __future__ import annotations

import base64
import functools
import io
import os
from datetime import datetime, timezone

from flask import Blueprint, current_app, render_template
from PIL import Image

from extensions import limiter
from inference.errors import ServiceError
from inference.predict import DISCLAIMER
from inference.registry import ARCHITECTURES, MODALITIES

from .forms import UploadForm
from .security import PREDICT_LIMIT_SCOPE, predict_limit

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


REPORT_IMAGE_SIDE = 384  # pixels: sharp on paper, small enough for a download link


def inference_service():
    return current_app.extensions["inference"]


def model_slots() -> dict[str, list]:
    service = inference_service()
    return {key: service.entries_for(key) for key in MODALITIES}


def jpeg_data_uri(image: Image.Image, max_side: int = REPORT_IMAGE_SIDE) -> str:
    """An image as a small inline JPEG: shown back to the user, never stored."""
    image = image.convert("RGB")
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnail_data_uri(pixels, max_side: int = REPORT_IMAGE_SIDE) -> str:
    return jpeg_data_uri(Image.fromarray(pixels), max_side)


def heatmap_jpeg_uri(heatmap_png: str) -> str:
    """A heatmap re-encoded as JPEG for the report, which must stay a small download."""
    return jpeg_data_uri(Image.open(io.BytesIO(base64.b64decode(heatmap_png))))


def _fraction(value) -> str | None:
    return f"{value * 100:.1f} %" if isinstance(value, (int, float)) else None


def card_test_metrics(card) -> list[tuple[str, str]]:
    """The model card's test metrics worth a clinician's glance, as (name, value)."""
    metrics = card.metrics if isinstance(card.metrics, dict) else {}
    per_class = metrics.get("per_class") if isinstance(metrics.get("per_class"), dict) else {}
    covid_class = card.classes[card.covid_index] if card.classes else "COVID"
    covid = per_class.get(covid_class) if isinstance(per_class.get(covid_class), dict) else {}
    rows = [
        ("Test images", str(metrics["count"]) if isinstance(metrics.get("count"), int)
         else None),
        ("Accuracy", _fraction(metrics.get("accuracy"))),
        ("Sensitivity", _fraction(metrics.get("sensitivity", covid.get("recall")))),
        ("Specificity", _fraction(metrics.get("specificity"))),
        ("COVID precision", _fraction(covid.get("precision"))),
        ("ROC AUC", f"{metrics['roc_auc']:.3f}"
         if isinstance(metrics.get("roc_auc"), (int, float)) else None),
    ]
    return [(name, value) for name, value in rows if value is not None]


def result_context(decoded, prediction) -> dict:
    """Everything the result page and its report show, computed once per request."""
    cards = {entry.architecture: entry.card
             for entry in inference_service().entries_for(prediction.modality)}
    analysed_at = datetime.now(timezone.utc)
    return {
        "prediction": prediction,
        "modality": MODALITIES[prediction.modality],
        "thumbnail": thumbnail_data_uri(decoded.pixels),
        "source_format": decoded.source_format,
        "image_size": decoded.pixels.shape[1::-1],
        "metrics": {r.architecture: card_test_metrics(cards[r.architecture])
                    for r in prediction.results if r.architecture in cards},
        "analysed_at": analysed_at.strftime("%Y-%m-%d %H:%M UTC"),
        "disclaimer": DISCLAIMER,
        "report_filename": (f"lungscan-report-{prediction.modality}-"
                            f"{analysed_at.strftime('%Y%m%d-%H%M%S')}.html"),
    }


@functools.cache
def report_css(static_folder: str) -> str:
    """The report's own stylesheet, read once: it is inlined into every report."""
    with open(os.path.join(static_folder, "css", "report.css"), encoding="utf-8") as handle:
        return handle.read()


def report_data_uri(context: dict) -> str:
    """The standalone report (one HTML file, images inline) as a download link target.

    Uploads are never stored, so the report cannot be fetched later: it travels inside
    the result page and the browser saves it when the link is followed.
    """
    css = report_css(current_app.static_folder)
    heatmaps = {r.architecture: heatmap_jpeg_uri(r.heatmap_png)
                for r in context["prediction"].results if r.heatmap_png}
    html = render_template("report.html", report_css=css, heatmaps=heatmaps, **context)
    return "data:text/html;charset=utf-8;base64," + \
        base64.b64encode(html.encode("utf-8")).decode("ascii")


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
        return render_template("index.html", form=form, slots=model_slots(),
                               modalities=MODALITIES, error=exc.message), exc.status
    context = result_context(decoded, prediction)
    return render_template("result.html", report_uri=report_data_uri(context), **context)


@bp.get("/about")
def about():
    return render_template("about.html", slots=model_slots(), modalities=MODALITIES,
                           disclaimer=DISCLAIMER)
