"""The inference service one app holds: model folder, cache and limits in one place."""

from __future__ import annotations

from .loader import ModelCache
from .predict import Prediction, predict
from .preprocess import DecodedImage, decode_image
from .registry import (ModelEntry, discover, entries_for, normalize_architecture,
                       normalize_modality)


class InferenceService:
    """Discovers models on each call (so dropped-in files appear) and caches loads."""

    def __init__(self, model_dir: str, max_loaded: int = 4, threads: int = 0,
                 max_pixels: int = 50_000_000, **cache_options):
        self.model_dir = model_dir
        self.max_pixels = max_pixels
        self.cache = ModelCache(max_loaded=max_loaded, threads=threads, **cache_options)

    def entries(self) -> list[ModelEntry]:
        return discover(self.model_dir)

    def entries_for(self, modality: str) -> list[ModelEntry]:
        return entries_for(self.entries(), modality)

    def analyse(self, data: bytes, modality: str | None, model: str | None,
                filename: str | None = None, explain: bool = False
                ) -> tuple[DecodedImage, Prediction]:
        """Validate the choices, decode the bytes and run the model(s), with heatmaps
        when ``explain`` is set."""
        modality_key = normalize_modality(modality)
        architecture = normalize_architecture(model)
        decoded = decode_image(data, max_pixels=self.max_pixels, filename=filename)
        prediction = predict(decoded, modality_key, architecture, self.entries(), self.cache,
                             explain=explain)
        return decoded, prediction

    def describe(self) -> list[dict]:
        """Every model slot, for ``GET /api/v1/models`` and the pages."""
        described = []
        for entry in self.entries():
            card = entry.card
            described.append({
                "modality": entry.modality,
                "architecture": entry.architecture,
                "name": entry.display_name,
                "available": entry.available,
                "loaded": entry.available and self.cache.is_loaded(entry),
                "file": entry.expected_relpath if entry.path is None
                else entry.path.relative_to(self.model_dir).as_posix(),
                "classes": list(card.classes),
                "input_size": list(card.input_size),
                "preprocessing": card.preprocessing,
                "threshold": card.threshold,
                "metrics": card.metrics,
                "card_error": entry.card_error,
                **self._runtime(entry),
            })
        return described

    def _runtime(self, entry: ModelEntry) -> dict:
        """Backend, load time and memory of a loaded model (None while not loaded)."""
        loaded = self.cache.loaded_model(entry) if entry.available else None
        if loaded is None:
            return {"backend": None, "load_ms": None, "memory_mb": None}
        return loaded.describe()
