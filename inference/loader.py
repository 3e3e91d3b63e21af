"""Load models lazily, once, and keep a bounded number in memory.

TensorFlow is imported on the first load, not when the app starts. Each model has its
own lock, so many first requests for one model load it once while other models stay
usable. The cache holds at most ``max_loaded`` models and drops the least recently
used one when a new one arrives.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ModelUnavailable
from .registry import ModelCard, ModelEntry

log = logging.getLogger(__name__)

_tf_lock = threading.Lock()
_tf_configured = False


def import_tensorflow(threads: int = 0):
    """Import TensorFlow once, setting its thread pools before the first op runs."""
    global _tf_configured
    with _tf_lock:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        if not _tf_configured:
            intra = threads or os.cpu_count() or 1
            try:
                tf.config.threading.set_intra_op_parallelism_threads(intra)
                tf.config.threading.set_inter_op_parallelism_threads(1 if intra <= 2 else 2)
            except RuntimeError:  # already initialised by someone else: keep theirs
                log.debug("TensorFlow threads were already configured")
            _tf_configured = True
        return tf


class ModelLoadError(Exception):
    """A model file that neither Keras 3 nor tf_keras could read."""


def load_keras_model(path: Path, threads: int = 0):
    """Read an ``.h5`` with Keras 3, falling back to tf_keras for Keras 2 files.

    Returns ``(model, loader_name)``. Any library error becomes a ``ModelLoadError``
    that names the file and both reasons.
    """
    import_tensorflow(threads)
    import keras

    try:
        return keras.saving.load_model(str(path), compile=False), "keras"
    except Exception as keras_error:  # noqa: BLE001 - any failure means "try tf_keras"
        try:
            import tf_keras

            return tf_keras.models.load_model(str(path), compile=False), "tf_keras"
        except Exception as tf_keras_error:  # noqa: BLE001
            raise ModelLoadError(
                f"{path.name} could not be read (Keras: {_short(keras_error)}; "
                f"tf_keras: {_short(tf_keras_error)})"
            ) from tf_keras_error


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def resident_memory_mb() -> float:
    """This process's resident set size, from /proc (Linux) or resource (elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class LoadedModel:
    """A model ready to serve: the Keras object and a compiled batch function."""

    entry: ModelEntry
    keras_model: object
    run_batch: Callable[[np.ndarray], np.ndarray]
    loader: str  # "keras" or "tf_keras"
    backend: str  # what serves predictions
    load_ms: float
    memory_mb: float
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def card(self) -> ModelCard:
        return self.entry.card


def compile_keras_runner(model, card: ModelCard) -> Callable[[np.ndarray], np.ndarray]:
    """A graph-compiled forward pass with a fixed input signature, warmed once.

    Keras ``predict()`` on one image costs several times the arithmetic; a traced
    ``tf.function`` does not retrace per call and runs as one graph.
    """
    tf = import_tensorflow()
    height, width = card.input_size
    spec = tf.TensorSpec([None, height, width, 3], tf.float32)

    @tf.function(input_signature=[spec], reduce_retracing=True)
    def forward(batch):
        return model(batch, training=False)

    def run_batch(batch: np.ndarray) -> np.ndarray:
        outputs = forward(tf.convert_to_tensor(batch, dtype=tf.float32))
        if isinstance(outputs, (list, tuple)):
            outputs = outputs[0]
        return np.asarray(outputs)

    run_batch(np.zeros((1, height, width, 3), dtype=np.float32))  # trace + warm
    return run_batch


class ModelCache:
    """Lazily loaded models, one lock per model, least recently used out first."""

    def __init__(self, max_loaded: int = 4, threads: int = 0):
        self.max_loaded = max(1, int(max_loaded))
        self.threads = threads
        self._models: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._locks: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()
        self.load_counts: dict[tuple, int] = {}

    @staticmethod
    def _cache_key(entry: ModelEntry) -> tuple:
        stat = entry.path.stat()
        return (entry.modality, entry.architecture, str(entry.path), stat.st_mtime_ns,
                stat.st_size)

    def get(self, entry: ModelEntry) -> LoadedModel:
        """The loaded model for ``entry``, loading it on first use (503 if impossible)."""
        if not entry.available:
            raise ModelUnavailable(
                f"The {entry.display_name} model for {entry.modality} is not installed: "
                f"put {entry.expected_relpath} under the model folder."
            )
        if entry.card_error:
            raise ModelUnavailable(f"The model card {entry.card_error} is invalid.")
        try:
            key = self._cache_key(entry)
        except OSError as exc:
            raise ModelUnavailable(f"{entry.path.name} cannot be read: {exc.strerror}") from exc
        with self._guard:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                if key in self._models:
                    self._models.move_to_end(key)
                    return self._models[key]
            loaded = self._load(entry)
            with self._guard:
                self._drop_stale(entry)
                self._models[key] = loaded
                self.load_counts[key[:2]] = self.load_counts.get(key[:2], 0) + 1
                self._evict_over_limit()
            return loaded

    def _load(self, entry: ModelEntry) -> LoadedModel:
        before = resident_memory_mb()
        started = time.perf_counter()
        try:
            model, loader = load_keras_model(entry.path, self.threads)
            run_batch = compile_keras_runner(model, entry.card)
        except ModelLoadError as exc:
            log.warning("model load failed: %s", exc)
            raise ModelUnavailable(str(exc)) from exc
        except (ValueError, TypeError) as exc:  # loads, but does not fit the card
            raise ModelUnavailable(
                f"{entry.path.name} does not accept {entry.card.input_size} RGB input: "
                f"{_short(exc)}"
            ) from exc
        load_ms = (time.perf_counter() - started) * 1000
        memory = max(0.0, resident_memory_mb() - before)
        log.info("loaded %s with %s in %.0f ms (+%.0f MiB)", entry.path.name, loader,
                 load_ms, memory)
        return LoadedModel(entry, model, run_batch, loader, "keras-graph", load_ms, memory)

    def _drop_stale(self, entry: ModelEntry) -> None:
        """Forget older versions of a file that was replaced on disk."""
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
            gc.collect()

    def loaded(self) -> list[LoadedModel]:
        with self._guard:
            return list(self._models.values())

    def is_loaded(self, entry: ModelEntry) -> bool:
        with self._guard:
            return any(k[:3] == (entry.modality, entry.architecture, str(entry.path))
                       for k in self._models)

    def clear(self) -> None:
        with self._guard:
            self._models.clear()
            self._locks.clear()
        gc.collect()
