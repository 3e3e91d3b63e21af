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

import numpy as np

from . import conversion as converter
from .errors import ModelUnavailable
from .candidates import choice_path_for
from .loaded import LoadedModel
from .precision import PrecisionPolicy
from .registry import ModelEntry
from .cards import ModelCard, check_output_width
from .runners import (KerasGraphBackend, ModelLoadError, OnnxBackend, Runner,
                      load_keras_model, normalize_backend, onnx_supported, short_error)
from .runtime import release_freed_memory, resident_memory_mb

log = logging.getLogger(__name__)


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
                 concurrency: int = 1, device: str = "cpu",
                 precision: PrecisionPolicy = PrecisionPolicy()):
        self.max_loaded = max(1, int(max_loaded))
        self.threads = threads
        self.backend = normalize_backend(backend)
        self.onnx_cache_dir = onnx_cache_dir or None
        self.jit_compile = jit_compile
        self.device = device  # where ONNX Runtime runs: cpu or cuda
        self.precision = precision  # which runner serves each conversion
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
        return self.precision.serve(runner, entry), report

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
        """Serve with ONNX Runtime once a conversion of this file has appeared, and with
        what this CPU's measurement chose once it has been made (``auto``)."""
        runner = loaded.runner
        if getattr(runner, "choice_pending", False):
            if not self._choice_changed(loaded):
                return
        elif not isinstance(runner, KerasGraphBackend) or not self.uses_onnx:
            return
        elif self.onnx_file(loaded.entry) in (None, loaded.declined_onnx):
            return
        with loaded._keras_lock:
            if loaded.runner is not runner:  # another request upgraded it meanwhile
                return
            new, report = self._open_onnx(loaded.entry)
            if new is None:
                loaded.declined_onnx = self.onnx_file(loaded.entry)
                return
            _probe(new, loaded.card)
            loaded.use_runner(new, report)
            log.info("%s now served with %s %s", loaded.entry.path.name, new.name,
                     getattr(new, "precision", "fp32"))

    @staticmethod
    def _choice_changed(loaded: LoadedModel) -> bool:
        """Whether the measurement file beside the conversion changed since last seen."""
        try:
            stamp = choice_path_for(loaded.runner.path).stat().st_mtime_ns
        except OSError:
            return False
        seen, loaded.choice_stamp = loaded.choice_stamp, stamp
        return stamp != seen

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
