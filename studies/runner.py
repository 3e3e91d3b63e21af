"""Analyse one study: stream its images through the models in batches.

Bytes are read one image at a time and decoded by a helper thread a few images ahead
of the models (decoding overlaps inference, and memory holds a bounded window, never
the whole series). Each batch is run through each model's served graph at once and
stored in one transaction with its progress, which also renews the worker's lease.
"""

from __future__ import annotations

import base64
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np
from flask import current_app

from inference.errors import (InvalidRequest, ModelUnavailable, ServiceError,
                              UnsupportedImage, UnusableImage)
from inference.explain import map_bytes
from inference.predict import (COVID, add_heatmap, add_ood_check, combine, image_warnings,
                               run_prepared)
from inference.preprocess import decode_image, model_input
from inference.registry import select_entries
from inference.service import InferenceService
from settings import StudySettings

from . import store
from .verdict import ImageAnswer, study_verdict

log = logging.getLogger(__name__)


@dataclass
class Ready:
    """A decoded image with its input for each model, or why it could not be read."""

    index: int
    decoded: object = None
    inputs: dict | None = None
    error: ServiceError | None = None
    warnings: list[str] | None = None


def decode_ahead(indexes: list[int], read: Callable[[list[int]], list[bytes | None]],
                 decode: Callable[[int, bytes | None], Ready], ahead: int,
                 chunk: int) -> Iterator[Ready]:
    """Yield each image decoded, in order; a helper thread works ``ahead`` images on.
    Bytes are read ``chunk`` images per query."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="study-decode") as pool:
        window: deque[Future] = deque()
        for start in range(0, len(indexes), chunk):
            part = indexes[start:start + chunk]
            for index, data in zip(part, read(part)):
                window.append(pool.submit(decode, index, data))
                if len(window) >= ahead:
                    yield window.popleft().result()
        while window:
            yield window.popleft().result()


def batches(items: Iterator[Ready], size: int) -> Iterator[list[Ready]]:
    batch: list[Ready] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass(frozen=True)
class StudyFacts:
    id: str
    modality: str
    model: str
    explain: bool


class BatchWriter:
    """Stores a batch on its own thread while the next one runs through the models: the
    forward passes, not the database, set the pace. At most one batch waits; a claim
    lost shows at the next ``put`` (the lost write itself stored nothing)."""

    def __init__(self, save: Callable[[list], bool]):
        self.app = current_app._get_current_object()  # the writer needs its own context
        self.save = save
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="study-store")
        self.pending: Future | None = None

    def put(self, outcomes: list) -> bool:
        """Queue this batch once the previous one is stored; False if that one failed."""
        held = self.wait()
        if held:
            self.pending = self.pool.submit(self._save, outcomes)
        return held

    def wait(self) -> bool:
        pending, self.pending = self.pending, None
        return pending.result() if pending is not None else True

    def _save(self, outcomes: list) -> bool:
        with self.app.app_context():
            return self.save(outcomes)

    def __enter__(self) -> "BatchWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.pool.shutdown(wait=True)


class StudyRun:
    """One worker's pass over one claimed study."""

    def __init__(self, service: InferenceService, study, token: str, settings: StudySettings):
        self.service, self.token, self.settings = service, token, settings
        # Plain values, not the database row: the helper threads read them, and a row's
        # attributes reload from its session (this thread's) after every commit.
        self.study = StudyFacts(study.id, study.modality, study.model, bool(study.explain))
        self.models = []  # LoadedModel, in the order chosen
        self.entries = []

    def load_models(self) -> list[str]:
        """Load the chosen models; with ``all``, one that fails is a warning."""
        self.entries = select_entries(self.service.entries(), self.study.modality,
                                      self.study.model)
        warnings = []
        for entry in self.entries:
            try:
                self.models.append(self.service.load(entry))
            except ModelUnavailable as exc:
                if self.study.model != "all":
                    raise
                warnings.append(f"{entry.display_name} skipped: {exc.message}")
        if not self.models:
            raise ModelUnavailable("None of the chosen models could be loaded: "
                                   + " ".join(warnings))
        return warnings

    def decode(self, index: int, data: bytes | None) -> Ready:
        """Decode and preprocess for every model (runs on the helper thread)."""
        if data is None:
            return Ready(index, error=ServiceError("The image's bytes are gone."))
        try:
            decoded = decode_image(data, max_pixels=self.service.max_pixels)
            inputs = {m.entry.architecture: model_input(decoded.pixels, m.card)
                      for m in self.models}
            warnings = image_warnings(decoded, self.study.modality, self.entries)
        except ServiceError as exc:
            return Ready(index, error=exc)
        except Exception:  # noqa: BLE001 - a decoder's own failure: that image only
            return Ready(index, error=UnsupportedImage("The file could not be decoded."))
        return Ready(index, decoded=decoded, inputs=inputs, warnings=warnings)

    def analyse(self, batch: list[Ready]) -> list[store.ImageOutcome]:
        good = [item for item in batch if item.error is None]
        outcomes = {item.index: failed_outcome(item) for item in batch if item.error}
        for item in good:
            outcomes[item.index] = store.ImageOutcome(item.index, warnings=item.warnings)
        for loaded in self.models if good else []:
            architecture = loaded.entry.architecture
            inputs = np.stack([item.inputs[architecture] for item in good])
            for item, (result, features) in zip(good, run_prepared(loaded, inputs)):
                outcome = outcomes[item.index]
                add_ood_check(result, loaded, features, outcome.warnings)
                if self.study.explain:
                    add_heatmap(result, loaded, item.decoded, outcome.warnings, features)
                    if result.heatmap_png:
                        outcome.heatmaps[architecture] = base64.b64decode(result.heatmap_png)
                        outcome.cams[architecture] = map_bytes(result.heatmap_map)
                        result.heatmap_png = result.heatmap_map = None
                outcome.results.append(result)
        for item in good:
            summarise(outcomes[item.index])
        return [outcomes[item.index] for item in batch]

    def run(self) -> bool:
        """Analyse every image still pending; False if the claim was lost on the way."""
        warnings = self.load_models()
        models = [{"architecture": m.entry.architecture, "threshold": m.card.threshold}
                  for m in self.models]
        if not store.set_models(self.study.id, self.token, self.settings.lease_s, models,
                                warnings):
            return False
        pending = store.pending_indexes(self.study.id)
        stream = decode_ahead(pending, lambda part: store.file_bytes(self.study.id, part),
                              self.decode, ahead=2 * self.settings.batch,  # two in flight
                              chunk=self.settings.batch)
        with BatchWriter(self.save) as writer:
            for batch in batches(stream, self.settings.batch):
                if not writer.put(self.analyse(batch)):
                    return False
            if not writer.wait():
                return False
        return store.finish(self.study.id, self.token, self.verdict())

    def save(self, outcomes: list[store.ImageOutcome]) -> bool:
        return store.save_outcomes(self.study.id, self.token, self.settings.lease_s, outcomes)

    def verdict(self) -> dict:
        answers = [ImageAnswer(image.series_uid, image.covid_probability, bool(image.positive))
                   for image in store.images_of(self.study.id)
                   if image.covid_probability is not None]
        return study_verdict(answers, self.study.modality, self.settings.rule)


# Error codes a study stores (for an image or the whole study), by domain error class.
ERROR_CODES = {UnsupportedImage: "unsupported_image", UnusableImage: "unusable_image",
               ModelUnavailable: "model_unavailable", InvalidRequest: "invalid_request"}


def error_code_of(exc: ServiceError) -> str:
    """A stable code for a domain error: its own ``code``, else by its class."""
    if getattr(exc, "code", None):
        return exc.code
    for cls in type(exc).__mro__:
        if cls in ERROR_CODES:
            return ERROR_CODES[cls]
    return "error"


def failed_outcome(item: Ready) -> store.ImageOutcome:
    """An image that could not be read: reported on its own, the others still answer."""
    return store.ImageOutcome(item.index, error_code=error_code_of(item.error),
                              error_message=item.error.message)


def summarise(outcome: store.ImageOutcome) -> None:
    """The image's own answer: one model's, or the mean margin rule over several."""
    results = outcome.results
    ensemble = combine(results)
    if ensemble is not None:
        outcome.combined = {"label": ensemble.label,
                            "covid_probability": ensemble.covid_probability,
                            "margin": ensemble.margin, "agreement": ensemble.agreement}
        label, probability = ensemble.label, ensemble.covid_probability
    else:
        label, probability = results[0].label, results[0].covid_probability
    outcome.covid_probability, outcome.positive = probability, label == COVID
    outcome.results = [r.to_json() for r in results]


class ImageSource(Protocol):
    """Where a study's images come from when they were not uploaded (a PACS)."""

    def fetch(self, study, token: str, lease_s: float) -> bool:
        """Store the study's images (once, under the claim); False if the claim was lost."""


def process_study(service: InferenceService, study_id: str, settings: StudySettings,
                  source: ImageSource | None = None) -> str:
    """Claim and analyse a study; what happened, for the log (never patient data)."""
    token = store.claim(study_id, settings.lease_s)
    if token is None:
        return "not claimable (done, failed, deleted, or held by another worker)"
    try:
        study = store.study_row(study_id)
        if source is not None and not source.fetch(study, token, settings.lease_s):
            return "claim lost to another worker"
        finished = StudyRun(service, study, token, settings).run()
    except ServiceError as exc:
        store.fail(study_id, token, error_code_of(exc), exc.message)
        return f"failed: {type(exc).__name__}"
    except Exception:  # noqa: BLE001 - a bug must end the study, not leave it running
        log.exception("study %s failed", study_id[:6])
        store.fail(study_id, token, "internal_error",
                   "The analysis failed on our side. The error was logged.")
        return "failed: internal error"
    return "done" if finished else "claim lost to another worker"
