"""The inference service one app holds: model folder, cache, preparation and limits.

Pages, the API and the command line all go through this object; none of them reaches
into the cache or the converter directly.
"""

from __future__ import annotations

from pathlib import Path

from .cache import LoadedModel, ModelCache
from .conversion import folder_lock
from .image import DecodedImage
from .ood import profile_path
from .precision import (DEFAULT_TOLERANCE, PRECISION_TOLERANCE, PrecisionPolicy,
                        normalize_precision)
from .predict import Prediction, predict
from .preparation import Preparer, convert_entry
from .preprocess import decode_image
from .registry import (
    ModelEntry,
    discover,
    entries_for,
    normalize_architecture,
    normalize_modality,
)
from .sources import public_source


class InferenceService:
    """Discovers models on each call (so dropped-in files appear) and caches loads."""

    def __init__(self, model_dir: str, max_loaded: int = 4, threads: int = 0,
                 max_pixels: int = 50_000_000, backend: str = "auto",
                 onnx_cache_dir: str | None = None, jit_compile: bool = False,
                 concurrency: int = 1, device: str = "cpu", precision: str = "fp32",
                 fp16_tolerance: float = DEFAULT_TOLERANCE,
                 precision_tolerance: float = PRECISION_TOLERANCE):
        self.model_dir = model_dir
        self.max_pixels = max_pixels
        self.threads = threads
        self.onnx_cache_dir = onnx_cache_dir or None
        self.policy = PrecisionPolicy(normalize_precision(precision), fp16_tolerance,
                                      precision_tolerance, threads, device)
        self.cache = ModelCache(max_loaded=max_loaded, threads=threads, backend=backend,
                                onnx_cache_dir=onnx_cache_dir, jit_compile=jit_compile,
                                concurrency=concurrency, device=device,
                                precision=self.policy)
        self.preparer = Preparer(model_dir, self.onnx_cache_dir, threads,
                                 precision=self.policy)

    def start_preparation(self) -> None:
        """Convert models for ONNX Runtime in the background, as soon as they appear."""
        if self.cache.uses_onnx:
            self.preparer.start()

    def entries(self) -> list[ModelEntry]:
        return discover(self.model_dir)

    def entries_for(self, modality: str) -> list[ModelEntry]:
        return entries_for(self.entries(), modality)

    def load(self, entry: ModelEntry) -> LoadedModel:
        """The model ready to serve (loaded now if it was not)."""
        return self.cache.get(entry)

    def convert(self, entry: ModelEntry, force: bool = False):
        """Convert one model now, after any conversion in progress elsewhere (the same
        folder lock as background preparation: one conversion at a time)."""
        with folder_lock(Path(self.model_dir)):
            return convert_entry(entry, self.onnx_cache_dir, self.threads, force)

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
        return [self._describe(entry) for entry in self.entries()]

    def _describe(self, entry: ModelEntry) -> dict:
        card = entry.card
        return {
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
            "source": public_source(card.extra.get("source")),
            "sha256": card.extra.get("sha256"),
            "card_error": entry.card_error or self._fit_error(entry),
            "ood_profile": entry.available and profile_path(entry.path).is_file(),
            "preparation": self._preparation(entry),
            **self._runtime(entry),
        }

    def _fit_error(self, entry: ModelEntry) -> str | None:
        loaded = self.cache.loaded_model(entry) if entry.available else None
        return loaded.card_error if loaded is not None else None

    def _preparation(self, entry: ModelEntry) -> str | None:
        """``ready`` (converted), ``converting``, ``waiting`` or ``failed: ...``."""
        if not entry.available or entry.card_error or not self.cache.uses_onnx:
            return None
        try:
            return self.preparer.status(entry)
        except OSError:
            return None

    def _runtime(self, entry: ModelEntry) -> dict:
        """Backend, precision, load time and memory of a loaded model (None while not
        loaded)."""
        loaded = self.cache.loaded_model(entry) if entry.available else None
        if loaded is None:
            return {"backend": None, "load_ms": None, "memory_mb": None, "precision": None}
        return loaded.describe()
