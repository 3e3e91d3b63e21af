"""A study as the API, the pages and the CSV show it: built from its rows, nothing else."""

from __future__ import annotations

import csv
import io

from audit.query import safe_cell
from inference.predict import DISCLAIMER

from .models import DONE, FAILED, QUEUED, RUNNING, Study, StudyImage


def image_view(image: StudyImage) -> dict:
    data = {
        "index": image.index,
        "name": image.name,
        "series_uid": image.series_uid,
        "instance_number": image.instance_number,
        "status": image.status,
        "results": list(image.results or []),
        "covid_probability": image.covid_probability,
        "positive": image.positive,
        "warnings": list(image.warnings or []),
    }
    if image.combined:
        data["combined"] = image.combined
    if image.error_code:
        data["error"] = {"code": image.error_code, "message": image.error_message}
    return data


def study_view(study: Study, images: list[StudyImage], write_max_attempts: int) -> dict:
    """The contract's ``GET /api/v1/studies/<id>`` body."""
    data = {
        "id": study.id,
        "status": study.status,
        "progress": {"done": study.done, "total": study.total},
        "modality": study.modality,
        "model": study.model,
        "explain": bool(study.explain),
        "models": list(study.models or []),
        "created_at": _iso(study.created_at),
        "started_at": _iso(study.started_at),
        "finished_at": _iso(study.finished_at),
        "images": [image_view(image) for image in images],
        "warnings": list(study.warnings or []),
        "disclaimer": DISCLAIMER,
    }
    if study.source != "upload":
        data["source"] = study.source
        data["study_uid"] = study.pacs_study_uid
        data["written"] = list(study.written or [])
        data["write_back"] = write_back_view(study, write_max_attempts)
    if study.status == DONE:
        data["verdict"] = study.verdict
    if study.status == FAILED:
        data["error"] = {"code": study.error_code, "message": study.error_message}
    return data


def write_back_view(study: Study, max_attempts: int) -> dict:
    """Where the answer's write-back into the PACS stands: written, pending (the study
    is still running, or its write is queued), retrying after a failure, failed (no
    automatic tries left) or off (the study finished while write-back was off)."""
    attempts = study.write_attempts or 0
    if study.written:
        status = "written"
    elif attempts >= max_attempts:
        status = "failed"
    elif study.status in (QUEUED, RUNNING):
        status = "pending"
    elif study.status == DONE and study.write_after is not None:
        status = "retrying" if attempts else "pending"
    else:
        status = "off"
    return {"status": status, "attempts": attempts, "error": study.write_error,
            "next_try": _iso(study.write_after) if status == "retrying" else None}


def _iso(moment) -> str | None:
    return moment.isoformat(timespec="seconds") + "Z" if moment else None


CSV_COLUMNS = ["index", "name", "series_uid", "instance_number", "status", "architecture",
               "label", "covid_probability", "threshold", "image_covid_probability",
               "image_positive", "warnings"]


def study_csv(view: dict) -> str:
    """One row per image and model (one row for an image that failed)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for image in view["images"]:
        base = [image["index"], safe_cell(image["name"]), safe_cell(image["series_uid"]),
                image["instance_number"] if image["instance_number"] is not None else "",
                image["status"]]
        notes = safe_cell(" | ".join(image["warnings"]
                                 + ([image["error"]["message"]] if "error" in image else [])))
        tail = [_number(image["covid_probability"]),
                "" if image["positive"] is None else int(image["positive"]), notes]
        for result in image["results"] or [{}]:
            writer.writerow(base + [result.get("architecture", ""), result.get("label", ""),
                                    _number(result.get("covid_probability")),
                                    _number(result.get("threshold"))] + tail)
    return out.getvalue()


def _number(value) -> str:
    return "" if value is None else f"{value:.6f}"
