"""One call that turns a decoded image into verdicts: used by pages, API and CLI."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import ood
from .anatomy import anatomy_warning
from .cache import LoadedModel, ModelCache
from .cards import ModelCard, covid_probability
from .errors import ModelUnavailable
from .explain import ExplainError, explain_with_map
from .image import DecodedImage
from .preprocess import model_input
from .registry import MODALITIES, ModelEntry, modality_of_dicom, select_entries
from .sanity import sanity_warnings

log = logging.getLogger(__name__)

DISCLAIMER = (
    "Research and teaching tool, not a medical device: do not use it to diagnose, "
    "treat or triage anyone."
)
COVID, NON_COVID = "COVID", "Non-COVID"
ENSEMBLE_RULE = "mean_margin"
ENSEMBLE_RULE_DESCRIPTION = (
    "COVID when the models' probabilities are, on average, at or above their own "
    "thresholds (mean of probability - threshold >= 0)."
)


@dataclass
class ModelResult:
    architecture: str
    label: str
    covid_probability: float
    confidence: float
    inference_ms: float
    threshold: float = 0.5
    heatmap_png: str | None = None
    heatmap_map: np.ndarray | None = field(default=None, repr=False, compare=False)  # 0..1
    explain_ms: float | None = None
    ood_distance: float | None = None  # from the training images' features (no 2nd pass)
    ood_threshold: float | None = None  # beyond it the answer carries a warning
    ood_profile: bool | None = None  # whether the model has a usable feature profile

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("heatmap_map")  # the PNG shows it; the PACS write-back reads the store
        return {k: v for k, v in data.items() if v is not None}


@dataclass
class Ensemble:
    label: str
    covid_probability: float  # the mean, shown; the label follows ``margin``
    agreement: float  # share of models that agree with the combined label
    agreeing: int
    total: int
    margin: float  # mean over models of (probability - that model's threshold)
    rule: str = ENSEMBLE_RULE
    rule_description: str = ENSEMBLE_RULE_DESCRIPTION


@dataclass
class Prediction:
    modality: str
    results: list[ModelResult]
    ensemble: Ensemble | None
    warnings: list[str] = field(default_factory=list)
    disclaimer: str = DISCLAIMER

    def to_json(self) -> dict:
        data = {
            "modality": self.modality,
            "results": [r.to_json() for r in self.results],
            "warnings": list(self.warnings),
            "disclaimer": self.disclaimer,
        }
        if self.ensemble is not None:
            data["ensemble"] = asdict(self.ensemble)
        return data


def verdict(probability: float, threshold: float) -> tuple[str, float]:
    """Label and the confidence in that label."""
    if probability >= threshold:
        return COVID, probability
    return NON_COVID, 1.0 - probability


def model_result(architecture: str, output: np.ndarray, card: ModelCard,
                 inference_ms: float = 0.0) -> ModelResult:
    """One model's output row read as a verdict, with the card's threshold."""
    probability = covid_probability(output, card)
    label, confidence = verdict(probability, card.threshold)
    return ModelResult(
        architecture=architecture,
        label=label,
        covid_probability=round(probability, 6),
        confidence=round(confidence, 6),
        inference_ms=round(inference_ms, 2),
        threshold=card.threshold,
    )


def run_prepared(loaded: LoadedModel, batch: np.ndarray
                 ) -> list[tuple[ModelResult, np.ndarray | None]]:
    """Run a preprocessed ``(n, h, w, 3)`` batch: per image, its result and its slice of
    the last feature map (for a heatmap or the OOD check; None when the runner has
    none). A single image and a study's batches go through this one path."""
    card = loaded.card
    started = time.perf_counter()
    outputs, features = loaded.run_with_features(batch)
    per_image_ms = (time.perf_counter() - started) * 1000 / max(1, len(batch))
    try:
        return [(model_result(loaded.entry.architecture, outputs[i], card, per_image_ms),
                 None if features is None else features[i:i + 1])
                for i in range(len(batch))]
    except ValueError as exc:  # a card that does not fit its model: that model is out
        raise ModelUnavailable(loaded.entry.misfit(str(exc))) from exc


def run_model(loaded: LoadedModel, decoded: DecodedImage
              ) -> tuple[ModelResult, np.ndarray | None]:
    """Preprocess for this model's card and run it on one image."""
    return run_prepared(loaded, model_input(decoded.pixels, loaded.card)[None, ...])[0]


def combine(results: list[ModelResult]) -> Ensemble | None:
    """The combined verdict by the mean margin rule (each model measured against its own
    threshold, so models whose thresholds differ are weighed fairly), the mean COVID
    probability, and how many models agree."""
    if len(results) < 2:
        return None
    mean = float(np.mean([r.covid_probability for r in results]))
    margin = float(np.mean([r.covid_probability - r.threshold for r in results]))
    # Rounded before comparing so float noise on an exact tie does not flip the label.
    label = COVID if round(margin, 9) >= 0 else NON_COVID
    agreeing = sum(1 for r in results if r.label == label)
    return Ensemble(label, round(mean, 6), round(agreeing / len(results), 4), agreeing,
                    len(results), round(margin, 6) + 0.0)


def modality_warnings(decoded: DecodedImage, modality: str) -> list[str]:
    """Warn (never reject) when a DICOM file says it is another modality."""
    found = decoded.dicom_modality
    if not found:
        return []
    if modality_of_dicom(found, modality):
        return []
    return [f"The DICOM file says its modality is {found}, but {MODALITIES[modality].label} "
            f"was chosen: check the choice."]


def image_warnings(decoded: DecodedImage, modality: str, chosen: list[ModelEntry]
                   ) -> list[str]:
    """What to tell about an image before any model runs: decoding notes, a DICOM of
    another modality, and an image that does not look like a chest image."""
    largest_input = max((e.card.input_size for e in chosen), key=lambda size: size[0] * size[1])
    anatomy = anatomy_warning(decoded.body_part)
    return (list(decoded.warnings) + modality_warnings(decoded, modality)
            + ([anatomy] if anatomy else []) + sanity_warnings(decoded, modality, largest_input))


def add_heatmap(result: ModelResult, loaded: LoadedModel, decoded: DecodedImage,
                warnings: list[str], features: np.ndarray | None = None) -> None:
    """Attach a Grad-CAM heatmap (from the prediction's own feature map when there is
    one); a model that cannot be explained still answers."""

    try:
        result.heatmap_png, result.heatmap_map, result.explain_ms = explain_with_map(
            loaded, decoded, features)
    except ExplainError as exc:
        log.warning("no heatmap for %s: %s", loaded.entry.display_name, exc)
        warnings.append(f"No heatmap for {loaded.entry.display_name}: {exc}.")


def add_ood_check(result: ModelResult, loaded: LoadedModel, features: np.ndarray | None,
                  warnings: list[str]) -> None:
    """How far this pass's pooled feature map lies from the model's training images,
    with a warning beyond its profile's threshold; ``ood_profile`` false without one."""
    check = ood.check(loaded.entry.path, features, loaded.entry.display_name)
    result.ood_profile = check.profiled
    result.ood_distance, result.ood_threshold = check.distance, check.threshold
    warnings.extend(check.warnings)


def predict(decoded: DecodedImage, modality: str, architecture: str,
            entries: list[ModelEntry], cache: ModelCache, explain: bool = False
            ) -> Prediction:
    """Run the chosen model (or every installed one) on an image.

    With ``all``, a model that fails to load becomes a warning and the others answer.
    ``explain`` adds each model's Grad-CAM heatmap (base64 PNG) and its cost.
    """
    chosen = select_entries(entries, modality, architecture)
    warnings = image_warnings(decoded, modality, chosen)
    results = []
    for entry in chosen:
        try:
            loaded = cache.get(entry)
            result, features = run_model(loaded, decoded)
        except ModelUnavailable as exc:
            if architecture != "all":
                raise
            warnings.append(f"{entry.display_name} skipped: {exc.message}")
            continue
        add_ood_check(result, loaded, features, warnings)
        if explain:
            add_heatmap(result, loaded, decoded, warnings, features)
        results.append(result)
    if not results:
        raise ModelUnavailable("None of the installed models could be loaded: "
                               + " ".join(warnings))
    return Prediction(modality, results, combine(results), warnings)
