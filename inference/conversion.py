"""ONNX conversions of the ``.h5`` files: convert, check, time, publish, find.

A conversion is made once per file's bytes (tf2onnx), checked against Keras on real
inputs (outputs within ``ONNX_TOLERANCE``, else refused) and cached beside the model
as ``<stem>.<sha256[:16]>.v<FORMAT>.onnx``: a changed ``.h5`` has another hash, so it
gets a new conversion and an old one is never served for it; a conversion made by an
older version of this code has another format number and is made again. The check's
timings of both runners travel inside the ONNX file's metadata, so ``auto`` can pick
the faster one without measuring again at every start.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .runners import KerasGraphBackend, OnnxBackend, intra_op_threads

log = logging.getLogger(__name__)

FORMAT = 2  # 2: the graph also outputs the last feature map
ONNX_TOLERANCE = 1e-4  # largest accepted |ONNX - Keras| on any output
FEATURE_TOLERANCE = 1e-4  # on the feature map, relative to its peak
METADATA_KEY = "covid_app.conversion"  # JSON report stored in the ONNX metadata
TIMING_RUNS = 7
KERAS_MARGIN = 1.1  # auto keeps Keras only when it measured >10 % faster


@dataclass
class ConversionReport:
    """What the check at conversion found, kept inside the ONNX file."""

    source_sha256: str
    max_abs_diff: float
    keras_ms: float  # fastest single-image time of the compiled Keras graph
    onnx_ms: float  # the same for ONNX Runtime, same process, same threads
    threads: int
    convert_s: float = 0.0
    features: bool = False  # the graph also returns the last feature map

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


def report_of(runner: OnnxBackend) -> ConversionReport | None:
    return ConversionReport.from_metadata(runner.metadata)


class ConversionRefused(Exception):
    """The converted graph's outputs differ from Keras's: the ONNX file is not used."""


_digests: dict[tuple, str] = {}
_digests_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """The file's SHA-256, remembered per (path, size, mtime): big files hash once."""
    stat = os.stat(path)
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _digests_lock:
        if key in _digests:
            return _digests[key]
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    with _digests_lock:
        _digests[key] = digest
    return digest


def onnx_path_for(model_path: Path, digest: str, cache_dir: str | Path | None = None) -> Path:
    """``<stem>.<sha256[:16]>.v<FORMAT>.onnx`` beside the model (or in ``cache_dir``)."""
    folder = Path(cache_dir) if cache_dir else Path(model_path).parent
    return folder / f"{Path(model_path).stem}.{digest[:16]}.v{FORMAT}.onnx"


def find_verified_onnx(model_path: Path, digest: str,
                       cache_dir: str | Path | None = None) -> Path | None:
    """The cached conversion of exactly this file's bytes, if one was made and passed."""
    path = onnx_path_for(model_path, digest, cache_dir)
    return path if path.is_file() else None


def median_ms(run: Callable, batch: np.ndarray, runs: int = TIMING_RUNS) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run(batch)
        times.append((time.perf_counter() - started) * 1000)
    return sorted(times)[len(times) // 2]


def times_in_turn(runs: dict[str, Callable], batch: np.ndarray,
                  rounds: int = TIMING_RUNS) -> dict[str, list[float]]:
    """Milliseconds of each run on ``batch``, called in turn ``rounds`` times, so all
    see the same machine load."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run(batch)
            times[name].append((time.perf_counter() - started) * 1000)
    return times


def interleaved_best(first: Callable, second: Callable, batch: np.ndarray,
                     runs: int = TIMING_RUNS) -> tuple[float, float]:
    """Fastest times of two runners called in turn, so both see the same machine load.

    The minimum, not the median: on a shared machine other work only ever adds time,
    and thread-pool backends suffer from it unequally, so the minimum is the fairest
    estimate of what each costs on the cores it was given.
    """
    times = times_in_turn({"first": first, "second": second}, batch, runs)
    return min(times["first"]), min(times["second"])


def check_inputs(input_size: tuple[int, int], preprocess: Callable | None,
                 seed: int = 0, count: int = 2) -> np.ndarray:
    """Realistic inputs: random images through the model's own preprocessing."""
    rng = np.random.default_rng(seed)
    height, width = input_size
    if preprocess is None:
        return rng.random((count, height, width, 3), dtype=np.float32)
    images = rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
    return np.stack([preprocess(image) for image in images]).astype(np.float32)


def compare(keras_backend: KerasGraphBackend, candidate: OnnxBackend, batch: np.ndarray,
            name: str, tolerance: float) -> float:
    """Largest output difference; refuses outputs or feature maps that disagree."""
    expected, expected_maps = keras_backend.run(batch)
    got, got_maps = candidate.run(batch)
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= tolerance:  # also refuses NaN
        raise ConversionRefused(f"{name}: ONNX outputs differ from Keras by {diff:.2e} "
                                f"(> {tolerance:.0e}); serving with Keras")
    if expected_maps is not None:
        scale = max(1.0, float(np.max(np.abs(expected_maps))))
        map_diff = float(np.max(np.abs(got_maps - expected_maps))) / scale
        if not map_diff <= FEATURE_TOLERANCE:
            raise ConversionRefused(f"{name}: ONNX feature maps differ from Keras by "
                                    f"{map_diff:.2e} of their peak; serving with Keras")
    return diff


_convert_lock = threading.Lock()  # tf2onnx rewrites global TF graph state


def _to_proto(keras_backend: KerasGraphBackend):
    import tf2onnx

    with contextlib.suppress(ImportError):  # numpy 2 fixes for tf2onnx, where present
        from keras.src.export.tf2onnx_lib import patch_tf2onnx

        patch_tf2onnx()
    with _convert_lock:
        proto, _ = tf2onnx.convert.from_function(
            keras_backend.forward, input_signature=keras_backend.forward.input_signature,
            output_path=None)
    return proto


def convert_to_onnx(keras_backend: KerasGraphBackend, model_path: Path, digest: str,
                    cache_dir: str | Path | None = None, threads: int = 0,
                    preprocess: Callable | None = None,
                    tolerance: float = ONNX_TOLERANCE) -> tuple[Path, ConversionReport]:
    """Convert, check against Keras, time both, and only then publish the file.

    The file appears atomically under its final name, so a reader (another worker, a
    later start) sees either nothing or a checked conversion. Older conversions of
    the same stem are removed. Raises ``ConversionRefused`` when outputs differ.
    """
    import onnx

    target = onnx_path_for(model_path, digest, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    proto = _to_proto(keras_backend)
    convert_s = time.perf_counter() - started
    with staged(target) as tmp:
        onnx.save(proto, str(tmp))
        candidate = OnnxBackend(tmp, threads)
        batch = check_inputs(keras_backend.input_size, preprocess)
        diff = compare(keras_backend, candidate, batch, Path(model_path).name, tolerance)
        one = batch[:1]
        candidate.run(one)  # first-call allocations out of the timing
        keras_ms, onnx_ms = interleaved_best(keras_backend.run, candidate.run, one)
        report = ConversionReport(
            source_sha256=digest, max_abs_diff=diff, keras_ms=round(keras_ms, 3),
            onnx_ms=round(onnx_ms, 3), threads=intra_op_threads(threads),
            convert_s=round(convert_s, 2), features=keras_backend.has_features)
        del candidate
        onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(report.to_json())})
        onnx.save(proto, str(tmp))
    remove_stale(model_path, target)
    log.info("converted %s to %s in %.1f s (max |diff| %.1e, Keras %.1f ms, ONNX %.1f ms)",
             Path(model_path).name, target.name, convert_s, diff, report.keras_ms,
             report.onnx_ms)
    return target, report


@contextlib.contextmanager
def staged(target: Path):
    """A temporary file beside ``target`` to write; published under ``target``'s name
    in one rename when the block ends normally, removed when it raises.

    Readers (another worker, a later start) see nothing or the whole file. The name
    ends in .onnx so a leftover (a killed process) stays git-ignored; ``remove_stale``
    sweeps it away.
    """
    handle, tmp_name = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.onnx",
                                        dir=target.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # readable by a server running as another user, like the .h5
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


# What is made from a model's bytes, beside it: conversions (and their fp16 graphs and
# leftover temporary files), failure notes, INT8 graphs and precision measurements.
DERIVED_PATTERNS = (".*.onnx", ".*.failed", ".*.int8.xml", ".*.int8.bin", ".*.precision.json")


def derived_files(model_path: Path, folder: Path) -> list[Path]:
    """Everything in ``folder`` that was made from a model file of this name."""
    stem = glob.escape(Path(model_path).stem)
    return sorted(p for pattern in DERIVED_PATTERNS for p in Path(folder).glob(stem + pattern))


def remove_stale(model_path: Path, keep: Path) -> None:
    """Once a conversion is made, what was derived before is never served: older
    conversions (other bytes, older format), their fp16 and INT8 graphs and precision
    measurements, and failure notes of other bytes (a file seen half-copied)."""
    for stale in derived_files(model_path, keep.parent):
        if stale != keep:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def folder_lock(folder: Path, blocking: bool = True):
    """An exclusive lock on a folder across processes (no lock file is left behind).

    Yields whether it was taken: with ``blocking=False`` a busy lock yields False.
    """
    import fcntl

    descriptor = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)  # closing releases the lock
