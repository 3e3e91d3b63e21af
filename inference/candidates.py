"""Which runner serves a model on this CPU (``INFERENCE_PRECISION=auto``): measured
here, and checked against fp32.

Why: bf16 and INT8 run 2-4x faster than fp32 where the CPU has the instructions, and
no faster (or not at all) where it does not; and a faster runner is worth nothing if
its answers move. So for each model, the candidates this CPU supports (ONNX Runtime
fp32, OpenVINO fp32 and bf16, OpenVINO INT8 where a quantized graph exists) answer one
seeded probe set through the card's preprocessing and are timed in turn; ``auto``
serves the fastest whose largest probability difference from ONNX Runtime fp32 is
within ``PRECISION_TOLERANCE`` and whose labels all agree. The record (timings, CPU,
differences, the reason a candidate was refused) is kept beside the conversion as
``<conversion stem>.precision.json``, one entry per CPU key, so a model moved to
another machine is measured again there.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .cards import ModelCard, covid_probability
from .conversion import check_inputs, staged, times_in_turn
from .openvino_runner import OpenVinoBackend, int8_path_for, supported_precisions
from .preprocess import model_input
from .runners import OnnxBackend, short_error
from .runtime import cpu_signature, intra_op_threads

log = logging.getLogger(__name__)

REFERENCE = "onnxruntime-fp32"
PROBE_IMAGES = 8
PROBE_SEED = 22
TIMING_ROUNDS = 9
PRECISION_TOLERANCE = 0.02  # largest accepted probability difference (no flip either)


@dataclass(frozen=True)
class Candidate:
    """One way to serve a conversion: a backend, a precision and the graph it reads."""

    backend: str  # "onnxruntime" or "openvino"
    precision: str
    path: Path

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.precision}"

    def open(self, threads: int = 0):
        if self.backend == "onnxruntime":
            return OnnxBackend(self.path, threads)
        return OpenVinoBackend(self.path, self.precision, threads)


def candidates(onnx_path: Path) -> list[Candidate]:
    """What this CPU can run for this conversion, the fp32 reference first."""
    found = [Candidate("onnxruntime", "fp32", Path(onnx_path))]
    supported = supported_precisions()
    found += [Candidate("openvino", p, Path(onnx_path)) for p in ("fp32", "bf16")
              if p in supported]
    int8 = int8_path_for(onnx_path)
    if "int8" in supported and int8.is_file():
        found.append(Candidate("openvino", "int8", int8))
    return found


def cpu_key(threads: int = 0) -> str:
    """The CPU model, its vector instruction flags and the threads one pass gets."""
    return f"{cpu_signature()}|threads={intra_op_threads(threads)}"


def choice_path_for(onnx_path: Path) -> Path:
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f"{onnx_path.stem}.precision.json")


def _inputs_of(onnx_path: Path, tolerance: float) -> dict:
    """What a record depends on besides the CPU: a new INT8 graph or another
    tolerance makes it stale."""
    int8 = int8_path_for(onnx_path)
    return {"tolerance": tolerance,
            "int8_graph": int8.stat().st_mtime_ns if int8.is_file() else None}


def read_choice(onnx_path: Path, tolerance: float, threads: int = 0) -> dict | None:
    """This CPU's record for the conversion, or None when it has not been measured
    (or the record no longer applies)."""
    try:
        records = json.loads(choice_path_for(onnx_path).read_text(encoding="utf-8"))
        record = records[cpu_key(threads)]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(record, dict) or record.get("inputs") != _inputs_of(onnx_path,
                                                                          tolerance):
        return None
    return record


def _write_choice(onnx_path: Path, key: str, record: dict) -> None:
    target = choice_path_for(onnx_path)
    try:
        records = json.loads(target.read_text(encoding="utf-8"))
        records = records if isinstance(records, dict) else {}
    except (OSError, ValueError):
        records = {}
    records[key] = record
    with staged(target) as tmp:
        tmp.write_text(json.dumps(records, indent=1), encoding="utf-8")


def probe_images(card: ModelCard) -> np.ndarray:
    """The seeded probe set every candidate answers, through the card's preprocessing."""
    return check_inputs(card.input_size, lambda image: model_input(image, card),
                        seed=PROBE_SEED, count=PROBE_IMAGES)


def labels(outputs: np.ndarray, card: ModelCard) -> np.ndarray:
    """COVID or not per image, at the card's threshold."""
    return np.array([covid_probability(row, card) >= card.threshold for row in outputs])


def agreement(name: str, got: np.ndarray, want: np.ndarray, card: ModelCard,
              tolerance: float) -> dict:
    """A candidate's answers against fp32's: largest difference, flips, accepted."""
    difference = float(np.max(np.abs(np.asarray(got, np.float64) - want)))
    flips = int(np.sum(labels(got, card) != labels(want, card)))
    row = {"name": name, "max_difference": difference, "label_flips": flips,
           "accepted": bool(difference <= tolerance and flips == 0)}  # NaN: refused
    if not row["accepted"]:
        row["reason"] = (f"{flips} label(s) flipped" if flips else
                         f"probabilities differ by up to {difference:.3g} "
                         f"(tolerance {tolerance:g})")
    return row


def _open_all(found: list[Candidate], threads: int, probe: np.ndarray):
    """The candidates that open and answer, and a refusal row for each that does not."""
    runners, answers, refused = {}, {}, []
    for candidate in found:
        try:
            runner = candidate.open(threads)
            answers[candidate.name] = runner.run(probe)[0]
            runners[candidate.name] = runner
        except Exception as exc:  # noqa: BLE001 - a candidate that fails is refused
            refused.append({"name": candidate.name, "accepted": False,
                            "reason": f"could not run: {short_error(exc)}"})
    return runners, answers, refused


def measure(onnx_path: Path, card: ModelCard, tolerance: float = PRECISION_TOLERANCE,
            threads: int = 0, rounds: int = TIMING_ROUNDS) -> dict:
    """Measure every candidate for this conversion on this CPU, keep the record beside
    it and return it (``chosen``: the fastest accepted one)."""
    probe = probe_images(card)
    runners, answers, rows = _open_all(candidates(onnx_path), threads, probe)
    if REFERENCE not in answers:
        raise RuntimeError("ONNX Runtime cannot run this conversion")
    times = times_in_turn({name: r.run for name, r in runners.items()}, probe[:1], rounds)
    for name in runners:
        row = agreement(name, answers[name], answers[REFERENCE], card, tolerance)
        row["ms"] = round(float(np.median(times[name])), 2)
        row["min_ms"] = round(min(times[name]), 2)
        rows.append(row)
    accepted = [r for r in rows if r["accepted"]]
    chosen = min(accepted, key=lambda r: r["ms"])["name"]
    record = {"cpu": cpu_key(threads), "chosen": chosen, "probe_images": PROBE_IMAGES,
              "timing_rounds": rounds, "inputs": _inputs_of(onnx_path, tolerance),
              "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "candidates": rows}
    _write_choice(onnx_path, record["cpu"], record)
    log.info("%s on this CPU: %s serves (%s)", Path(onnx_path).name, chosen,
             ", ".join(f"{r['name']} {r.get('ms', '-')} ms" for r in rows))
    return record


def chosen_candidate(onnx_path: Path, record: dict) -> Candidate | None:
    """The candidate a record chose, if it is still there to open."""
    return next((c for c in candidates(onnx_path) if c.name == record.get("chosen")), None)
