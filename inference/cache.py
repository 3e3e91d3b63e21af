"""Load models lazily, once, and keep a bounded number in memory.

Each model has its own lock, so many first requests for one model load it once while
other models stay usable. The cache holds at most ``max_loaded`` models and drops the
least recently used one when a new one arrives. A model is keyed by its file and its
card, so replacing either takes effect on the next request.

A model is served from its checked ONNX conversion when one exists (``auto``: when it
measured faster; ``onnx``: always), else by the compiled Keras graph; a Keras-served
model switches to ONNX Runtime on the first request after its conversion appears.
Conversions are made elsewhere (``preparation``), never while a request waits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from . import conversion as converter
from .batching import MicroBatcher
from .errors import ModelUnavailable
from .precision import DEFAULT_TOLERANCE, normalize_precision, normalize_tolerance, serve_fp16
from .registry import ModelEntry
from .cards import ModelCard, check_output_width
from .runners import (KerasGraphBackend, ModelLoadError, OnnxBackend, Runner,
                      load_keras_model, normalize_backend, onnx_supported, short_error)
from .runtime import release_freed_memory, resident_memory_mb

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedModel:
    """A model ready to serve: its runner, and its Keras object (loaded on demand).

    ``run_batch`` is what prediction calls; ``keras_model`` is what a heatmap's head
    needs, whichever runner serves.
    """

    entry: ModelEntry
    runner: Runner
    loader: str | None  # "keras" or "tf_keras"; None until the Keras object is loaded
    load_ms: float
    memory_mb: float
    gate: threading.Semaphore = field(default_factory=lambda: threading.BoundedSemaphore(1))
    threads: int = 0
    conversion: converter.ConversionReport | None = None
    card_error: str | None = None  # the card does not fit this model's output
    declined_onnx: object = None  # a conversion auto found slower: not reopened
    _keras_model: object = None
    _keras_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.batcher = MicroBatcher(lambda batch: self.runner.run(batch), self.gate)

    @property
    def card(self) -> ModelCard:
        return self.entry.card

    @property
    def backend_name(self) -> str:
        return self.runner.name

    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        """Model outputs for a preprocessed ``(n, h, w, 3)`` float32 batch."""
        return self.batcher(batch)[0]

    def run_with_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Outputs and the last feature map (None when the runner has none)."""
        return self.batcher(batch)

    @property
    def keras_model(self):
        """The Keras model, read from the ``.h5`` the first time it is needed."""
        if self._keras_model is None:
            with self._keras_lock:
                if self._keras_model is None:
                    before = resident_memory_mb()
                    model, self.loader = load_keras_model(self.entry.path, self.threads)
                    self.memory_mb += max(0.0, resident_memory_mb() - before)
                    self._keras_model = model
        return self._keras_model

    def use_runner(self, runner: Runner, conversion=None) -> None:
        """Switch what serves (an attribute swap: requests in flight finish on the old)."""
        self.runner = runner
        if conversion is not None:
            self.conversion = conversion

    def describe(self) -> dict:
        data = {"backend": self.runner.name, "load_ms": round(self.load_ms, 1),
                "memory_mb": round(self.memory_mb, 1), "loader": self.loader}
        if self.conversion is not None:
            data["conversion"] = {"keras_ms": self.conversion.keras_ms,
                                  "onnx_ms": self.conversion.onnx_ms,
                                  "max_abs_diff": self.conversion.max_abs_diff}
        data["precision"] = getattr(self.runner, "precision", "fp32")
        if getattr(self.runner, "fp16_max_difference", None) is not None:
            data["fp16_max_difference"] = self.runner.fp16_max_difference
        return data


def _probe(runner: Runner, card: ModelCard) -> int:
    """Warm the runner with one zero image; returns the model's output width."""
    outputs, _ = runner.run(np.zeros((1, *card.input_size, 3), dtype=np.float32))
    return int(np.asarray(outputs).reshape(1, -1).shape[1])


class ModelCache:
    """Lazily loaded models, one lock per model, least recently used out first.

    ``backend``: ``keras`` always serves the compiled Keras graph; ``onnx`` serves the
    cached ONNX conversion whenever one exists; ``auto`` serves it when the check at
    conversion measured it faster.
    """

    def __init__(self, max_loaded: int = 4, threads: int = 0, backend: str = "auto",
                 onnx_cache_dir: str | None = None, jit_compile: bool = False,
                 concurrency: int = 1, device: str = "cpu", precision: str = "fp32",
                 fp16_tolerance: float = DEFAULT_TOLERANCE):
        self.max_loaded = max(1, int(max_loaded))
        self.threads = threads
        self.backend = normalize_backend(backend)
        self.onnx_cache_dir = onnx_cache_dir or None
        self.jit_compile = jit_compile
        self.device = device  # where ONNX Runtime runs: cpu or cuda
        self.precision = normalize_precision(precision)  # of ONNX graphs
        self.fp16_tolerance = normalize_tolerance(fp16_tolerance)
        self.gate = threading.BoundedSemaphore(max(1, int(concurrency)))
        self._models: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._locks: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()
        self.load_counts: dict[tuple, int] = {}

    @property
    def uses_onnx(self) -> bool:
        return self.backend != "keras" and onnx_supported()

    @staticmethod
    def _cache_key(entry: ModelEntry) -> tuple:
        stat = entry.path.stat()
        return (entry.modality, entry.architecture, str(entry.path), stat.st_mtime_ns,
                stat.st_size, getattr(entry, "card_signature", None))

    def get(self, entry: ModelEntry) -> LoadedModel:
        """The loaded model for ``entry``, loading it on first use."""
        if not entry.available:
            raise ModelUnavailable(
                f"The {entry.display_name} model for {entry.modality} is not installed: "
                f"put {entry.expected_relpath} under the model folder.")
        if entry.card_error:
            raise ModelUnavailable(f"The model card {entry.card_error} is invalid.")
        try:
            key = self._cache_key(entry)
        except OSError as exc:
            raise ModelUnavailable(f"{entry.path.name} cannot be read: {exc.strerror}") from exc
        loaded = self._cached(key)
        if loaded is None:
            loaded = self._load_once(key, entry)
        if loaded.card_error:
            raise ModelUnavailable(loaded.card_error)
        self._upgrade_to_onnx(loaded)
        return loaded

    def _cached(self, key: tuple) -> LoadedModel | None:
        with self._guard:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        return None

    def _load_once(self, key: tuple, entry: ModelEntry) -> LoadedModel:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            loaded = self._cached(key)
            if loaded is not None:
                return loaded
            loaded = self._load(entry)
            with self._guard:
                self._drop_stale(entry)
                self._models[key] = loaded
                self.load_counts[key[:2]] = self.load_counts.get(key[:2], 0) + 1
                self._evict_over_limit()
            return loaded

    def _wants_onnx(self, report) -> bool:
        if self.backend == "onnx":
            return True
        return self.backend == "auto" and (report is None or report.onnx_is_faster)

    def onnx_file(self, entry: ModelEntry):
        """The checked conversion of ``entry``'s current bytes, or None."""
        digest = converter.file_sha256(entry.path)
        return converter.find_verified_onnx(entry.path, digest, self.onnx_cache_dir)

    def _open_onnx(self, entry: ModelEntry):
        """``(runner, report)`` from the conversion, when there is one that should serve."""
        path = self.onnx_file(entry) if self.uses_onnx else None
        if path is None:
            return None, None
        try:
            runner = OnnxBackend(path, self.threads, self.device)
        except Exception as exc:  # noqa: BLE001 - a broken cache file: fall back to Keras
            log.warning("cannot open %s (%s): serving with Keras", path.name, short_error(exc))
            return None, None
        report = converter.report_of(runner)
        if not self._wants_onnx(report):
            return None, None
        if self.precision == "fp16":
            runner = serve_fp16(runner, entry, self.fp16_tolerance, self.threads, self.device)
        return runner, report

    def _load(self, entry: ModelEntry) -> LoadedModel:
        before, started = resident_memory_mb(), time.perf_counter()
        runner, report = self._open_onnx(entry)
        model = loader = None
        try:
            if runner is None:
                model, loader = load_keras_model(entry.path, self.threads)
                runner = KerasGraphBackend(model, entry.card.input_size, self.jit_compile)
            width = _probe(runner, entry.card)
        except ModelLoadError as exc:
            log.warning("model load failed: %s", exc)
            raise ModelUnavailable(str(exc)) from exc
        except (ValueError, TypeError) as exc:  # loads, but does not fit the card
            raise ModelUnavailable(
                f"{entry.path.name} does not accept {entry.card.input_size} RGB input: "
                f"{short_error(exc)}") from exc
        load_ms = (time.perf_counter() - started) * 1000
        memory = max(0.0, resident_memory_mb() - before)
        log.info("loaded %s in %.0f ms (+%.0f MiB), serving with %s", entry.path.name,
                 load_ms, memory, runner.name)
        problem = check_output_width(entry.card, width)
        card_error = entry.misfit(problem) if problem else None
        return LoadedModel(entry, runner, loader, load_ms, memory, gate=self.gate,
                           threads=self.threads, conversion=report, card_error=card_error,
                           _keras_model=model)

    def _upgrade_to_onnx(self, loaded: LoadedModel) -> None:
        """Serve with ONNX Runtime once a conversion of this file has appeared."""
        if isinstance(loaded.runner, OnnxBackend) or not self.uses_onnx:
            return
        path = self.onnx_file(loaded.entry)
        if path is None or path == loaded.declined_onnx:
            return
        with loaded._keras_lock:
            if isinstance(loaded.runner, OnnxBackend):
                return
            runner, report = self._open_onnx(loaded.entry)
            if runner is None:
                loaded.declined_onnx = path
                return
            _probe(runner, loaded.card)
            loaded.use_runner(runner, report)
            log.info("%s now served with ONNX Runtime", loaded.entry.path.name)

    def _drop_stale(self, entry: ModelEntry) -> None:
        """Forget older versions of a file (or card) that was replaced on disk."""
        for key in [k for k in self._models if k[:3] == (entry.modality, entry.architecture,
                                                         str(entry.path))]:
            del self._models[key]

    def _evict_over_limit(self) -> None:
        evicted = False
        while len(self._models) > self.max_loaded:
            key, _ = self._models.popitem(last=False)
            self._locks.pop(key, None)
            log.info("evicted %s/%s from the model cache", key[0], key[1])
            evicted = True
        if evicted:
            release_freed_memory()

    def loaded(self) -> list[LoadedModel]:
        with self._guard:
            return list(self._models.values())

    def loaded_model(self, entry: ModelEntry) -> LoadedModel | None:
        """The loaded version of ``entry``'s file, without loading it."""
        with self._guard:
            for key, loaded in self._models.items():
                if key[:3] == (entry.modality, entry.architecture, str(entry.path)):
                    return loaded
        return None

    def is_loaded(self, entry: ModelEntry) -> bool:
        return self.loaded_model(entry) is not None

    def clear(self) -> None:
        with self._guard:
            self._models.clear()
            self._locks.clear()
        release_freed_memory()
