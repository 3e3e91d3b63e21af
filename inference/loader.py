"""Load models lazily, once, and keep a bounded number in memory.

TensorFlow is imported on the first Keras load, not when the app starts (a model
served from its cached ONNX conversion needs no TensorFlow until its Keras object is
asked for, e.g. for Grad-CAM). Each model has its own lock, so many first requests for
one model load it once while other models stay usable. The cache holds at most
``max_loaded`` models and drops the least recently used one when a new one arrives.

Forward passes go through one gate per cache (``concurrency``, default 1): each pass
already uses every core of this process's share, so running two at once only makes
both slower and multiplies the memory in flight. Requests for one model that queue at
the gate are run together as one batch.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import backends
from .backends import (Backend, ConversionRefused, KerasGraphBackend, OnnxBackend,
                       intra_op_threads)
from .errors import ModelUnavailable
from .registry import ModelCard, ModelEntry

log = logging.getLogger(__name__)

_tf_lock = threading.Lock()
MAX_BATCH = 8  # images run together when requests for one model queue up
_tf_configured = False


def import_tensorflow(threads: int = 0):
    """Import TensorFlow once, setting its thread pools before the first op runs."""
    global _tf_configured
    with _tf_lock:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        if not _tf_configured:
            intra = intra_op_threads(threads)
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


def release_freed_memory() -> None:
    """Collect, then hand freed heap pages back to the system (glibc keeps them)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


@dataclass(eq=False)
class LoadedModel:
    """A model ready to serve: its backend, and its Keras object (loaded on demand).

    ``run_batch`` is what prediction calls; ``keras_model`` is what Grad-CAM needs,
    whichever backend serves.
    """

    entry: ModelEntry
    backend: Backend
    loader: str | None  # "keras" or "tf_keras"; None until the Keras object is loaded
    load_ms: float
    memory_mb: float
    gate: threading.Semaphore = field(default_factory=lambda: threading.BoundedSemaphore(1))
    threads: int = 0
    conversion: backends.ConversionReport | None = None
    _keras_model: object = None
    _keras_lock: threading.Lock = field(default_factory=threading.Lock)
    _pending: list = field(default_factory=list)
    _pending_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def card(self) -> ModelCard:
        return self.entry.card

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        """Model outputs for a preprocessed ``(n, h, w, 3)`` float32 batch.

        Requests that queue for the cores while this model is busy are run together
        as one batch by whichever of them gets the gate first: a batch of 8 costs far
        less than 8 single images, so concurrent clients raise throughput instead of
        only waiting.
        """
        done: Future = Future()
        with self._pending_lock:
            self._pending.append((batch, done))
        with self.gate:
            with self._pending_lock:
                work, self._pending = (self._pending[:MAX_BATCH],
                                       self._pending[MAX_BATCH:])
            if work:
                self._run_together(work)
        return done.result()

    def _run_together(self, work: list) -> None:
        try:
            outputs = self.backend.run(work[0][0] if len(work) == 1
                                       else np.concatenate([b for b, _ in work]))
        except BaseException as exc:  # every waiting request gets the error
            for _, done in work:
                done.set_exception(exc)
            return
        start = 0
        for batch, done in work:
            done.set_result(outputs[start:start + len(batch)])
            start += len(batch)

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

    def use_backend(self, backend: Backend, conversion=None) -> None:
        """Switch what serves (an attribute swap: requests in flight finish on the old)."""
        self.backend = backend
        if conversion is not None:
            self.conversion = conversion

    def describe(self) -> dict:
        data = {"backend": self.backend.name, "load_ms": round(self.load_ms, 1),
                "memory_mb": round(self.memory_mb, 1), "loader": self.loader}
        if self.conversion is not None:
            data["conversion"] = {"keras_ms": self.conversion.keras_ms,
                                  "onnx_ms": self.conversion.onnx_ms,
                                  "max_abs_diff": self.conversion.max_abs_diff}
        return data


class ModelCache:
    """Lazily loaded models, one lock per model, least recently used out first.

    ``backend``: ``keras`` always serves the compiled Keras graph; ``onnx`` serves the
    cached ONNX conversion whenever one exists; ``auto`` serves it only when the check
    at conversion measured it faster. Without a conversion the model is served by
    Keras at once and, with ``convert_in_background`` (always for ``onnx``), converted
    in a low-priority thread and switched over when ready: a request never waits for
    a conversion.
    """

    def __init__(self, max_loaded: int = 4, threads: int = 0, backend: str = "auto",
                 convert_in_background: bool = False, onnx_cache_dir: str | None = None,
                 jit_compile: bool = False, concurrency: int = 1):
        self.max_loaded = max(1, int(max_loaded))
        self.threads = threads
        self.backend = backends.normalize_backend(backend)
        self.convert_in_background = convert_in_background
        self.onnx_cache_dir = onnx_cache_dir or None
        self.jit_compile = jit_compile
        self.gate = threading.BoundedSemaphore(max(1, int(concurrency)))
        self._models: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._locks: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()
        self.load_counts: dict[tuple, int] = {}
        self._conversions: dict[tuple, threading.Thread] = {}

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

    def _wants_onnx(self, report) -> bool:
        if self.backend == "onnx":
            return True
        return self.backend == "auto" and (report is None or report.onnx_is_faster)

    def _load(self, entry: ModelEntry) -> LoadedModel:
        before = resident_memory_mb()
        started = time.perf_counter()
        digest = None
        if self.backend != "keras" and backends.onnx_supported():
            digest = backends.file_sha256(entry.path)
            loaded = self._load_onnx(entry, digest, before, started)
            if loaded is not None:
                return loaded
        try:
            model, loader = load_keras_model(entry.path, self.threads)
            runner = KerasGraphBackend(model, entry.card.input_size, self.jit_compile)
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
        log.info("loaded %s with %s in %.0f ms (+%.0f MiB), serving with %s",
                 entry.path.name, loader, load_ms, memory, runner.name)
        loaded = LoadedModel(entry, runner, loader, load_ms, memory, gate=self.gate,
                             threads=self.threads, _keras_model=model)
        if digest and (self.backend == "onnx" or self.convert_in_background) and \
                backends.find_verified_onnx(entry.path, digest, self.onnx_cache_dir) is None:
            self._convert_later(loaded, runner, digest)
        return loaded

    def _load_onnx(self, entry: ModelEntry, digest: str, before: float,
                   started: float) -> LoadedModel | None:
        """Serve from the cached conversion of this exact file, if it should serve."""
        path = backends.find_verified_onnx(entry.path, digest, self.onnx_cache_dir)
        if path is None:
            return None
        try:
            runner = OnnxBackend(path, self.threads)
        except Exception as exc:  # noqa: BLE001 - a broken cache file: fall back to Keras
            log.warning("cannot open %s (%s): serving with Keras", path.name, _short(exc))
            return None
        if not self._wants_onnx(runner.report):
            return None
        runner.run(np.zeros((1, *entry.card.input_size, 3), dtype=np.float32))  # warm
        load_ms = (time.perf_counter() - started) * 1000
        memory = max(0.0, resident_memory_mb() - before)
        log.info("loaded %s in %.0f ms (+%.0f MiB), serving with ONNX Runtime",
                 path.name, load_ms, memory)
        return LoadedModel(entry, runner, None, load_ms, memory, gate=self.gate,
                           threads=self.threads, conversion=runner.report)

    def convert(self, entry: ModelEntry, force: bool = False):
        """Convert ``entry`` to ONNX now (``flask models compile``): path and report.

        Raises ``ConversionRefused`` when the outputs differ from Keras's.
        """
        digest = backends.file_sha256(entry.path)
        target = backends.onnx_path_for(entry.path, digest, self.onnx_cache_dir)
        with backends.conversion_lock(target):
            if target.is_file() and not force:
                existing = OnnxBackend(target, self.threads).report
                if existing is not None:
                    return target, existing, False
            model, _ = load_keras_model(entry.path, self.threads)
            runner = KerasGraphBackend(model, entry.card.input_size, self.jit_compile)
            path, report = backends.convert_to_onnx(
                runner, entry.path, digest, self.onnx_cache_dir, self.threads,
                preprocess=_preprocessor(entry.card), exclusive=self.gate)
        return path, report, True

    def _convert_later(self, loaded: LoadedModel, runner: KerasGraphBackend,
                       digest: str) -> None:
        key = (str(loaded.entry.path), digest)
        with self._guard:
            if key in self._conversions:
                return
            thread = threading.Thread(target=self._convert_job, args=(loaded, runner, digest),
                                      name=f"onnx-convert-{loaded.entry.path.stem}",
                                      daemon=True)
            self._conversions[key] = thread
        thread.start()

    def _convert_job(self, loaded: LoadedModel, runner: KerasGraphBackend,
                     digest: str) -> None:
        """Background conversion; switch over if it should serve."""
        entry = loaded.entry
        target = backends.onnx_path_for(entry.path, digest, self.onnx_cache_dir)
        try:
            with backends.conversion_lock(target):
                if target.is_file():  # another worker made it meanwhile
                    report = OnnxBackend(target, self.threads).report
                else:
                    _, report = backends.convert_to_onnx(
                        runner, entry.path, digest, self.onnx_cache_dir, self.threads,
                        preprocess=_preprocessor(entry.card), exclusive=self.gate)
            if self._wants_onnx(report):
                onnx_runner = OnnxBackend(target, self.threads)
                onnx_runner.run(np.zeros((1, *entry.card.input_size, 3), dtype=np.float32))
                loaded.use_backend(onnx_runner, report)
                log.info("%s now served with ONNX Runtime", entry.path.name)
            else:
                loaded.conversion = report
        except ConversionRefused as exc:
            log.warning("%s", exc)
        except Exception as exc:  # noqa: BLE001 - Keras keeps serving whatever happens
            log.warning("ONNX conversion of %s failed: %s", entry.path.name, _short(exc))

    def wait_for_conversions(self, timeout: float | None = None) -> None:
        """Block until background conversions started so far are done (tests, tools)."""
        with self._guard:
            threads = list(self._conversions.values())
        for thread in threads:
            thread.join(timeout)

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


def _preprocessor(card: ModelCard) -> Callable[[np.ndarray], np.ndarray]:
    """The card's own preprocessing, so the conversion is checked on real inputs."""
    from .preprocess import prepare

    return lambda image: prepare(image, card)
