"""What runs a model's forward pass: a compiled Keras graph or ONNX Runtime.

Keras ``predict()`` and eager calls cost several times the arithmetic on CPU. A traced
``tf.function`` with a fixed input signature removes most of that; ONNX Runtime, whose
fused convolution kernels run ResNet50 and InceptionV3 about 1.5-2x faster again than
TensorFlow on the same cores, removes the rest.

The ONNX file is converted once from the ``.h5`` (tf2onnx), checked against Keras on
real inputs (outputs within ``ONNX_TOLERANCE``, else refused) and cached beside the
model as ``<stem>.<sha256[:16]>.onnx``: a changed ``.h5`` has another hash, so it gets
a new conversion and an old one is never served for it. The check's timings of both
backends travel inside the ONNX file's metadata, so ``auto`` can pick the faster one
without measuring again at every start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

log = logging.getLogger(__name__)

BACKEND_CHOICES = ("auto", "keras", "onnx")
ONNX_TOLERANCE = 1e-4  # largest accepted |ONNX - Keras| on any output
METADATA_KEY = "covid_app.conversion"  # JSON report stored in the ONNX metadata
TIMING_RUNS = 7
KERAS_MARGIN = 1.1  # auto keeps Keras only when it measured >10 % faster


class Backend(Protocol):
    name: str

    def run(self, batch: np.ndarray) -> np.ndarray: ...


def available_cores() -> int:
    """The cores this process may use (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def intra_op_threads(configured: int = 0) -> int:
    """Threads for one forward pass: the configured number, else this process's cores
    (gunicorn.conf.py configures each worker's share)."""
    if configured and configured > 0:
        return int(configured)
    return available_cores()


def normalize_backend(value: str | None) -> str:
    key = (value or "auto").strip().lower()
    if key not in BACKEND_CHOICES:
        raise ValueError(f"INFERENCE_BACKEND must be one of {', '.join(BACKEND_CHOICES)}, "
                         f"not {value!r}")
    return key


def onnx_supported() -> bool:
    """Whether ONNX Runtime can serve here (it is an optional speed-up, not a must)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def conversion_supported() -> bool:
    """Whether this install can convert ``.h5`` files (tf2onnx and onnx present)."""
    try:
        import onnx  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError:
        return False
    return onnx_supported()


# --------------------------------------------------------------------------- Keras


class KerasGraphBackend:
    """The Keras model traced once into a graph with a fixed ``[None, h, w, 3]`` input.

    ``jit_compile`` adds XLA; it is off by default because on this kind of CPU it
    helped InceptionV3 only, slowed ResNet50, and costs seconds at load, while ONNX
    Runtime beat it everywhere.
    """

    def __init__(self, model, input_size: tuple[int, int], jit_compile: bool = False):
        from .loader import import_tensorflow

        tf = import_tensorflow()
        height, width = input_size
        self.input_size = (height, width)
        self.name = "keras-xla" if jit_compile else "keras-graph"
        spec = tf.TensorSpec([None, height, width, 3], tf.float32, name="image")
        self._tf = tf

        @tf.function(input_signature=[spec], jit_compile=jit_compile or None)
        def forward(batch):
            outputs = model(batch, training=False)
            if isinstance(outputs, (list, tuple)):
                outputs = outputs[0]
            return outputs

        self.forward = forward
        self.run(np.zeros((1, height, width, 3), dtype=np.float32))  # trace and warm

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.forward(self._tf.convert_to_tensor(batch, dtype=self._tf.float32)).numpy()


# --------------------------------------------------------------------------- ONNX


class OnnxBackend:
    """An ONNX Runtime session with its thread pool sized for this process."""

    name = "onnx"

    def __init__(self, path: Path, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads sleep instead of spinning: alone it measured the same, but
        # spinning pools of several loaded models (an "All models" request) or of a
        # busy neighbour took the cores from each other, up to 4x slower.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.report = ConversionReport.from_metadata(
            self.session.get_modelmeta().custom_metadata_map)

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run(None, {self.input_name: batch})[0]


@dataclass
class ConversionReport:
    """What the check at conversion found, kept inside the ONNX file."""

    source_sha256: str
    max_abs_diff: float
    keras_ms: float  # fastest single-image time of the compiled Keras graph
    onnx_ms: float  # the same for ONNX Runtime, same process, same threads
    threads: int
    convert_s: float = 0.0

    @property
    def onnx_is_faster(self) -> bool:
        """ONNX unless Keras measured clearly faster: a close call is noise, and ONNX
        Runtime also needs no TensorFlow in the serving process."""
        return self.onnx_ms <= self.keras_ms * KERAS_MARGIN

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_metadata(cls, metadata: dict) -> "ConversionReport | None":
        try:
            return cls(**json.loads(metadata[METADATA_KEY]))
        except (KeyError, TypeError, ValueError):
            return None


class ConversionRefused(Exception):
    """The converted graph's outputs differ from Keras's: the ONNX file is not used."""


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def onnx_path_for(model_path: Path, digest: str, cache_dir: str | Path | None = None) -> Path:
    """``<stem>.<sha256[:16]>.onnx`` beside the model (or in ``cache_dir``)."""
    folder = Path(cache_dir) if cache_dir else Path(model_path).parent
    return folder / f"{Path(model_path).stem}.{digest[:16]}.onnx"


def find_verified_onnx(model_path: Path, digest: str,
                       cache_dir: str | Path | None = None) -> Path | None:
    """The cached conversion of exactly this file's bytes, if one was made and passed."""
    path = onnx_path_for(model_path, digest, cache_dir)
    return path if path.is_file() else None


def median_ms(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray,
              runs: int = TIMING_RUNS) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run(batch)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def interleaved_best(first: Callable, second: Callable, batch: np.ndarray,
                     runs: int = TIMING_RUNS) -> tuple[float, float]:
    """Fastest times of two runners called in turn, so both see the same machine load.

    The minimum, not the median: on a shared machine other work only ever adds time,
    and thread-pool backends suffer from it unequally, so the minimum is the fairest
    estimate of what each costs on the cores it was given.
    """
    times: tuple[list, list] = ([], [])
    for _ in range(runs):
        for run, sink in ((first, times[0]), (second, times[1])):
            started = time.perf_counter()
            run(batch)
            sink.append((time.perf_counter() - started) * 1000)
    return min(times[0]), min(times[1])


def check_inputs(input_size: tuple[int, int], preprocess: Callable | None,
                 seed: int = 0) -> np.ndarray:
    """Two realistic inputs: random images through the model's own preprocessing."""
    rng = np.random.default_rng(seed)
    height, width = input_size
    if preprocess is None:
        return rng.random((2, height, width, 3), dtype=np.float32)
    images = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    return np.stack([preprocess(image) for image in images]).astype(np.float32)


_convert_lock = threading.Lock()  # tf2onnx rewrites global TF graph state


def convert_to_onnx(keras_backend: KerasGraphBackend, model_path: Path, digest: str,
                    cache_dir: str | Path | None = None, threads: int = 0,
                    preprocess: Callable | None = None,
                    tolerance: float = ONNX_TOLERANCE,
                    exclusive=None) -> tuple[Path, ConversionReport]:
    """Convert, check against Keras, time both, and only then publish the file.

    ``exclusive`` (the serving gate) is held while both backends are checked and
    timed, so requests in flight neither skew the timings nor are slowed by them.

    The file appears atomically under its final name, so a reader (another worker, a
    later start) sees either nothing or a checked conversion. Older conversions of
    the same stem are removed. Raises ``ConversionRefused`` when outputs differ.
    """
    import onnx
    import tf2onnx

    with contextlib.suppress(ImportError):  # numpy 2 fixes for tf2onnx, where present
        from keras.src.export.tf2onnx_lib import patch_tf2onnx

        patch_tf2onnx()

    target = onnx_path_for(model_path, digest, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with _convert_lock:
        proto, _ = tf2onnx.convert.from_function(
            keras_backend.forward, input_signature=keras_backend.forward.input_signature,
            output_path=None)
    convert_s = time.perf_counter() - started

    # Named *.onnx so a leftover (a killed process) stays git-ignored; the stale
    # sweep below removes it.
    handle, tmp_name = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.onnx",
                                        dir=target.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        onnx.save(proto, str(tmp))
        candidate = OnnxBackend(tmp, threads)
        batch = check_inputs(keras_backend.input_size, preprocess)
        with exclusive or contextlib.nullcontext():
            expected = keras_backend.run(batch)
            diff = float(np.max(np.abs(candidate.run(batch) - expected)))
            if not diff <= tolerance:  # also refuses NaN
                raise ConversionRefused(
                    f"{Path(model_path).name}: ONNX outputs differ from Keras by "
                    f"{diff:.2e} (> {tolerance:.0e}); serving with Keras")
            one = batch[:1]
            candidate.run(one)  # first-call allocations out of the timing
            keras_ms, onnx_ms = interleaved_best(keras_backend.run, candidate.run, one)
            report = ConversionReport(
                source_sha256=digest, max_abs_diff=diff, keras_ms=round(keras_ms, 3),
                onnx_ms=round(onnx_ms, 3), threads=intra_op_threads(threads),
                convert_s=round(convert_s, 2))
        del candidate
        onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(report.to_json())})
        onnx.save(proto, str(tmp))
        os.chmod(tmp, 0o644)  # readable by a server running as another user, like the .h5
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    for stale in target.parent.glob(f"{Path(model_path).stem}.*.onnx"):
        if stale != target:
            stale.unlink(missing_ok=True)
    log.info("converted %s to %s in %.1f s (max |diff| %.1e, Keras %.1f ms, ONNX %.1f ms)",
             Path(model_path).name, target.name, convert_s, diff, report.keras_ms,
             report.onnx_ms)
    return target, report


@contextlib.contextmanager
def conversion_lock(target: Path):
    """One converter per model folder across processes (gunicorn workers start together).

    Locks the folder itself, so no lock file is left behind.
    """
    import fcntl

    descriptor = os.open(target.parent, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock
