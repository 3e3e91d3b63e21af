"""Reduced precision: ``fp16`` (an ONNX graph for GPUs), ``bf16`` and ``int8`` (OpenVINO
on the CPU), each served only when it answers like fp32, and ``auto`` (the fastest
runner whose answers agree, measured on this CPU by ``inference.candidates``).

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .candidates import (PRECISION_TOLERANCE, REFERENCE, agreement, chosen_candidate,
                         probe_images, read_choice)
from .conversion import check_inputs, staged
from .openvino_runner import OpenVinoBackend, int8_path_for
from .preprocess import model_input
from .runners import OnnxBackend, short_error

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "auto")
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


def normalize_tolerance(value, name: str = "FP16_TOLERANCE") -> float:
    try:
        tolerance = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, not {value!r}") from None
    if not 0.0 <= tolerance <= 1.0:  # also refuses NaN
        raise ValueError(f"{name} must be between 0 and 1, not {value!r}")
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


def serve_openvino(runner: OnnxBackend, entry, precision: str, tolerance: float,
                   threads: int = 0):
    """OpenVINO in ``precision`` (bf16, or int8 from ``flask models quantize``) when its
    answers to the probe batch are within ``tolerance`` of ``runner`` (fp32) with no
    label flipped, else ``runner``, with the reason in the log."""
    name = entry.path.name
    path = int8_path_for(runner.path) if precision == "int8" else runner.path
    try:
        if not path.is_file():
            raise FileNotFoundError(f"no INT8 graph: run flask models quantize {entry.modality} "
                                    f"{entry.architecture} --data DIR")
        candidate = OpenVinoBackend(path, precision, threads)
        batch = probe_images(entry.card)  # the probe set auto judges candidates by
        row = agreement(f"openvino-{precision}", candidate.run(batch)[0],
                        runner.run(batch)[0], entry.card, tolerance)
    except Exception as exc:  # noqa: BLE001 - any failure: serve fp32
        log.warning("%s: OpenVINO %s cannot serve (%s): serving fp32", name, precision,
                    short_error(exc))
        return runner
    if not row["accepted"]:
        log.warning("%s: OpenVINO %s refused, %s (PRECISION_TOLERANCE %.2e): serving fp32",
                    name, precision, row["reason"], tolerance)
        return runner
    candidate.max_difference = row["max_difference"]
    log.info("%s serving OpenVINO %s (probabilities within %.2e of fp32)", name, precision,
             row["max_difference"])
    return candidate


def serve_measured(runner: OnnxBackend, entry, tolerance: float, threads: int = 0):
    """What this CPU's measurement chose for the conversion (``auto``); ``runner``
    (ONNX Runtime fp32) until it has been measured, marked ``choice_pending``."""
    record = read_choice(runner.path, tolerance, threads)
    if record is None:
        runner.choice_pending = True
        return runner
    chosen = chosen_candidate(runner.path, record)
    served = runner
    if chosen is not None and chosen.name != REFERENCE:
        try:
            served = chosen.open(threads)
        except Exception as exc:  # noqa: BLE001 - serve the reference instead
            log.warning("%s: %s cannot open (%s): serving ONNX Runtime fp32",
                        entry.path.name, chosen.name, short_error(exc))
    served.choice = record
    return served


@dataclass(frozen=True)
class PrecisionPolicy:
    """``INFERENCE_PRECISION`` and its tolerances: which runner serves a conversion."""

    precision: str = "fp32"
    fp16_tolerance: float = DEFAULT_TOLERANCE
    tolerance: float = PRECISION_TOLERANCE
    threads: int = 0
    device: str = "cpu"

    def serve(self, runner: OnnxBackend, entry):
        """``runner`` (ONNX Runtime fp32), or what replaces it under this policy. GPU
        workers keep ONNX Runtime (CUDA); OpenVINO precisions are for the CPU."""
        if self.precision == "fp16":
            return serve_fp16(runner, entry, self.fp16_tolerance, self.threads, self.device)
        if self.device != "cpu" or self.precision == "fp32":
            return runner
        if self.precision == "auto":
            return serve_measured(runner, entry, self.tolerance, self.threads)
        return serve_openvino(runner, entry, self.precision, self.tolerance, self.threads)


def precision_details(runner) -> dict:
    """What ``/api/v1/models`` says of a runner's precision and how it was chosen."""
    data = {"precision": getattr(runner, "precision", "fp32")}
    for key in ("fp16_max_difference", "max_difference"):
        if getattr(runner, key, None) is not None:
            data[key] = getattr(runner, key)
    if getattr(runner, "choice", None):
        data["precision_choice"] = {k: v for k, v in runner.choice.items() if k != "inputs"}
    elif getattr(runner, "choice_pending", False):
        data["precision_choice"] = "measuring"
    return data
