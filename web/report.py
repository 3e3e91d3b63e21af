"""What the result page and its downloadable report show, and the report itself.

Uploads are never stored, so the report cannot be fetched later: it is built here as
one standalone HTML file with its images inline, and travels inside the result page.
"""

from __future__ import annotations

import base64
import functools
import io
import os
from datetime import datetime, timezone

from flask import current_app, render_template
from PIL import Image

from inference.predict import DISCLAIMER
from inference.registry import MODALITIES

REPORT_IMAGE_SIDE = 384  # pixels: sharp on paper, small enough for a download link


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


def result_context(decoded, prediction, entries) -> dict:
    """Everything the result page and its report show, computed once per request.

    ``entries`` are the modality's model slots, whose cards give the test metrics.
    """
    cards = {entry.architecture: entry.card for entry in entries}
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
    """The standalone report (one HTML file, images inline) as a download link target:
    the browser saves it when the link is followed."""
    css = report_css(current_app.static_folder)
    heatmaps = {r.architecture: heatmap_jpeg_uri(r.heatmap_png)
                for r in context["prediction"].results if r.heatmap_png}
    html = render_template("report.html", report_css=css, heatmaps=heatmaps, **context)
    return "data:text/html;charset=utf-8;base64," + \
        base64.b64encode(html.encode("utf-8")).decode("ascii")
