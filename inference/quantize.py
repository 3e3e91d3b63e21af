"""INT8 for one model: NNCF post-training quantization of its checked conversion,
calibrated on the user's own images and judged on a held-out part of them.

Why: where the CPU has VNNI, an INT8 graph runs 3-4x faster than fp32, but INT8 moves
answers more than bf16 does, and by how much depends on the model and the images. So
the graph is calibrated on images the user labelled (through the card's preprocessing,
the path serving uses), then run beside fp32 on images the calibration never saw: the
share of labels that agree and the largest probability difference are written into the
model card, and a graph whose agreement falls short of ``min_agreement`` is refused
(nothing is published; the card records the refusal with its figures). Where it is
published, ``INFERENCE_PRECISION=auto`` measures it with the other candidates.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .cards import ModelCard
from .candidates import labels
from .openvino_runner import OpenVinoBackend, int8_path_for
from .runners import OnnxBackend

MIN_AGREEMENT = 0.98  # share of held-out labels INT8 must give as fp32 does
HOLD_OUT_FRACTION = 0.3
MIN_IMAGES = 10  # fewer labelled images say nothing about a quantized graph
BATCH = 8


class QuantizationRefused(Exception):
    """The INT8 graph's answers fall short, or there is too little to judge them by."""


@dataclass
class QuantizationReport:
    """What quantization found, as written into the card under ``quantization.int8``."""

    accepted: bool
    calibration_images: int
    held_out_images: int
    label_agreement: float
    max_probability_difference: float
    min_agreement: float
    accuracy_fp32: float | None
    accuracy_int8: float | None
    conversion: str
    quantized_at: str

    def summary(self) -> str:
        accuracy = ("" if self.accuracy_fp32 is None else
                    f"; accuracy fp32 {self.accuracy_fp32:.3f}, int8 {self.accuracy_int8:.3f}")
        return (f"labels agree on {self.label_agreement:.1%} of {self.held_out_images} "
                f"held-out images (at least {self.min_agreement:.1%} needed), largest "
                f"probability difference {self.max_probability_difference:.3f}{accuracy}")


def split_for_calibration(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices to calibrate on and indices to judge on, shuffled with ``seed``."""
    if count < MIN_IMAGES:
        raise QuantizationRefused(f"{count} images are too few to quantize and judge by "
                                  f"(at least {MIN_IMAGES})")
    order = np.random.default_rng(seed).permutation(count)
    held = max(MIN_IMAGES // 2, int(round(count * HOLD_OUT_FRACTION)))
    return order[held:], order[:held]


def _outputs(runner, images: np.ndarray) -> np.ndarray:
    return np.concatenate([runner.run(images[i:i + BATCH])[0]
                           for i in range(0, len(images), BATCH)])


def _accuracy(predicted: np.ndarray, truth: np.ndarray | None) -> float | None:
    return None if truth is None else round(float(np.mean(predicted == truth)), 4)


def _quantized_model(onnx_path: Path, calibration: np.ndarray):
    import nncf
    import openvino

    model = openvino.Core().read_model(str(onnx_path))
    dataset = nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))])
    return nncf.quantize(model, dataset, subset_size=len(calibration))


def judge(onnx_path: Path, int8_xml: Path, card: ModelCard, held_out: np.ndarray,
          truth: np.ndarray | None, calibration_count: int, min_agreement: float,
          threads: int = 0) -> QuantizationReport:
    """INT8 against ONNX Runtime fp32 on images the calibration did not see."""
    want = _outputs(OnnxBackend(onnx_path, threads), held_out)
    got = _outputs(OpenVinoBackend(int8_xml, "int8", threads), held_out)
    want_labels, got_labels = labels(want, card), labels(got, card)
    agreement = float(np.mean(want_labels == got_labels))
    difference = float(np.max(np.abs(got.astype(np.float64) - want)))
    covid = card.covid_index
    truth_labels = None if truth is None else (np.asarray(truth) == covid)
    return QuantizationReport(
        accepted=bool(agreement >= min_agreement), calibration_images=calibration_count,
        held_out_images=len(held_out), label_agreement=round(agreement, 4),
        max_probability_difference=round(difference, 4), min_agreement=min_agreement,
        accuracy_fp32=_accuracy(want_labels, truth_labels),
        accuracy_int8=_accuracy(got_labels, truth_labels), conversion=Path(onnx_path).name,
        quantized_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _publish(folder: Path, target: Path) -> None:
    """Move the saved ``.bin`` then ``.xml`` in place (readers look for the ``.xml``)."""
    target.unlink(missing_ok=True)
    os.replace(folder / "model.bin", target.with_suffix(".bin"))
    os.replace(folder / "model.xml", target)


def quantize(onnx_path: Path, card: ModelCard, images: np.ndarray,
             truth: np.ndarray | None = None, min_agreement: float = MIN_AGREEMENT,
             threads: int = 0, seed: int = 0) -> QuantizationReport:
    """Quantize ``onnx_path`` on part of ``images`` (preprocessed, NHWC), judge it on the
    rest (``truth``: their class indices, for accuracy) and publish it beside the
    conversion when its labels agree enough. Returns the report either way."""
    import openvino

    calibrate, hold = split_for_calibration(len(images), seed)
    quantized = _quantized_model(onnx_path, images[calibrate])
    staging = Path(tempfile.mkdtemp(prefix=".int8-", dir=Path(onnx_path).parent))
    try:
        openvino.save_model(quantized, str(staging / "model.xml"), compress_to_fp16=False)
        report = judge(onnx_path, staging / "model.xml", card, images[hold],
                       None if truth is None else np.asarray(truth)[hold], len(calibrate),
                       min_agreement, threads)
        target = int8_path_for(onnx_path)
        if report.accepted:
            _publish(staging, target)
        else:  # an older graph must not serve beside a card that says "refused"
            target.unlink(missing_ok=True)
            target.with_suffix(".bin").unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def record_in_card(model_path: Path, card: ModelCard, report: QuantizationReport) -> None:
    """Write the report into the model's card (made from ``card`` if the model had
    none), atomically: the server reads cards."""
    card_path = Path(model_path).with_suffix(".json")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = card.to_json()
    data.setdefault("quantization", {})["int8"] = asdict(report)
    tmp = card_path.with_name(f".{card_path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, card_path)
