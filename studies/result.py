"""A study's answer as typed values, built from its rows: what the PACS writers (the
report and the heatmap captures) are fed, rather than the web's JSON view."""

from __future__ import annotations

from dataclasses import dataclass

from inference.predict import DISCLAIMER

from .models import Study, StudyImage


@dataclass(frozen=True)
class ImageResult:
    index: int
    name: str
    series_uid: str | None
    instance_number: int | None
    status: str  # done, failed or pending
    results: tuple[dict, ...]  # each model's: architecture, label, covid_probability, threshold
    covid_probability: float | None  # the image's own answer (one model's, or combined)
    positive: bool | None
    error_code: str | None = None


@dataclass(frozen=True)
class StudyResult:
    id: str
    study_uid: str | None  # the PACS study it came from
    status: str
    modality: str
    explain: bool
    models: tuple[dict, ...]  # architecture, threshold: in the order they ran
    images: tuple[ImageResult, ...]  # in reading order
    verdict: dict | None  # studies.verdict.study_verdict's, once done
    warnings: tuple[str, ...]
    written: tuple[dict, ...] | None  # what was written back into the PACS
    owner_id: int | None = None  # the account that started it; None: auto-analysis
    disclaimer: str = DISCLAIMER


def image_result(image: StudyImage) -> ImageResult:
    return ImageResult(index=image.index, name=image.name, series_uid=image.series_uid,
                       instance_number=image.instance_number, status=image.status,
                       results=tuple(image.results or ()),
                       covid_probability=image.covid_probability, positive=image.positive,
                       error_code=image.error_code)


def study_result(study: Study, images: list[StudyImage]) -> StudyResult:
    return StudyResult(id=study.id, study_uid=study.pacs_study_uid, status=study.status,
                       modality=study.modality, explain=bool(study.explain),
                       models=tuple(study.models or ()),
                       images=tuple(image_result(image) for image in images),
                       verdict=study.verdict, warnings=tuple(study.warnings or ()),
                       written=tuple(study.written) if study.written is not None else None,
                       owner_id=study.owner_id)
