"""Half precision (``INFERENCE_PRECISION=fp16``): a converted ONNX graph, served only
when it answers like the fp32 one.

Why: on a GPU with tensor cores, fp16 convolutions have a higher peak rate than fp32,
and the weights take half the memory. On an x86 CPU, ONNX Runtime casts back to fp32
around the convolutions (weights rounded to fp16): the same speed, so no gain there
(``bench/precision.py`` measures both), and fp32 stays the default.

The fp16 graph is made from the checked fp32 conversion of the same file's bytes with
ONNX Runtime's own float16 tool, inputs and outputs kept float32 (so preprocessing,
the probabilities and the feature map that heatmaps reuse are unchanged in type), and
cached beside it as ``<fp32 name>.fp16.onnx``: converted once, and removed with the
fp32 file when that is made again. Before a model serves in fp16, both graphs answer a
fixed probe batch on the serving device; a probability off by more than
``FP16_TOLERANCE``, a feature map off by more than ``FEATURE_TOLERANCE`` of its peak
(it would move the heatmap), or an fp16 graph that cannot be made or run keeps that
model on fp32, with a warning: fp16 is a speed-up, never a reason to fail a request.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .conversion import check_inputs, staged
from .preprocess import model_input
from .runners import OnnxBackend, short_error

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
DEFAULT_TOLERANCE = 0.01  # largest accepted |fp16 - fp32| on any output probability
FEATURE_TOLERANCE = 0.01  # on the feature map, relative to its peak
PROBE_IMAGES = 4
PROBE_SEED = 16


def normalize_precision(value) -> str:
    key = str(value or "fp32").strip().lower()
    if key not in PRECISIONS:
        raise ValueError(f"INFERENCE_PRECISION must be one of {', '.join(PRECISIONS)}, "
                         f"not {value!r}")
    return key


def normalize_tolerance(value) -> float:
    try:
        tolerance = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"FP16_TOLERANCE must be a number, not {value!r}") from None
    if not 0.0 <= tolerance <= 1.0:  # also refuses NaN
        raise ValueError(f"FP16_TOLERANCE must be between 0 and 1, not {value!r}")
    return tolerance


def fp16_path_for(fp32_path: Path) -> Path:
    """``<stem>.<sha256[:16]>.v<FORMAT>.fp16.onnx``: the fp32 file's name, marked."""
    fp32_path = Path(fp32_path)
    return fp32_path.with_name(f"{fp32_path.stem}.fp16.onnx")


def convert_to_fp16(fp32_path: Path) -> Path:
    """The cached fp16 graph of ``fp32_path``, made now if it is not there yet.

    Published atomically under its final name (a worker starting meanwhile sees
    nothing or the whole file); a leftover temporary file is named like a stale
    conversion, so the next conversion of the model sweeps it away.
    """
    target = fp16_path_for(fp32_path)
    if target.is_file():
        return target
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    with staged(target) as tmp:
        onnx.save(model, str(tmp))
    log.info("converted %s to fp16 as %s", Path(fp32_path).name, target.name)
    return target


def probe_batch(card) -> np.ndarray:
    """Seeded random images through the model's own preprocessing: the value range a
    real request has (ImageNet modes reach about +-150, where fp16 steps are coarse)."""

    return check_inputs(card.input_size, lambda image: model_input(image, card),
                        seed=PROBE_SEED, count=PROBE_IMAGES)


def differences(reference, candidate, batch: np.ndarray) -> tuple[float, float]:
    """Largest probability difference, and feature-map difference over its peak."""
    want, want_maps = reference.run(batch)
    got, got_maps = candidate.run(batch)
    diff = float(np.max(np.abs(np.asarray(got, np.float32) - want)))
    if want_maps is None:
        return diff, 0.0
    if got_maps is None:
        return diff, float("inf")
    scale = max(1.0, float(np.max(np.abs(want_maps))))
    return diff, float(np.max(np.abs(np.asarray(got_maps, np.float32) - want_maps))) / scale


def serve_fp16(runner: OnnxBackend, entry, tolerance: float, threads: int = 0,
               device: str = "cpu") -> OnnxBackend:
    """The fp16 runner of ``entry`` when it answers like ``runner`` (its fp32 runner),
    else ``runner`` itself, with the reason in the log and the measured difference in
    its ``fp16_max_difference`` (None when the fp16 graph could not be made or run)."""
    name = entry.path.name
    try:
        candidate = OnnxBackend(convert_to_fp16(runner.path), threads, device)
        diff, map_diff = differences(runner, candidate, probe_batch(entry.card))
    except Exception as exc:  # noqa: BLE001 - any failure: serve the fp32 graph
        log.warning("%s: the fp16 graph could not be made or run (%s): serving fp32",
                    name, short_error(exc))
        return runner
    if not (diff <= tolerance and map_diff <= FEATURE_TOLERANCE):  # also refuses NaN
        log.warning("%s: fp16 probabilities differ from fp32 by up to %.2e "
                    "(FP16_TOLERANCE %.2e; feature map %.2e of its peak, limit %.0e): "
                    "serving fp32", name, diff, tolerance, map_diff, FEATURE_TOLERANCE)
        runner.fp16_max_difference = diff
        return runner
    candidate.precision, candidate.fp16_max_difference = "fp16", diff
    log.info("%s serving fp16 (probabilities within %.2e of fp32)", name, diff)
    return candidate
