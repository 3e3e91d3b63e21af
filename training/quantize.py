"""INT8 from labelled images: ``flask models quantize --data DIR`` and the end of
``python -m training train`` (on its validation split) both come here.

The images go through ``training.pipeline.load_prepared`` (the app's decoding and the
card's preprocessing), so the graph is calibrated on exactly what serving feeds it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inference.preparation import convert_entry
from inference.quantize import MIN_AGREEMENT, QuantizationReport, quantize, record_in_card
from inference.registry import ModelEntry, discover

from .datasets import load_dataset
from .pipeline import load_prepared

DEFAULT_LIMIT_PER_CLASS = 150  # 300 images: enough to calibrate, little memory


def quantize_images(entry: ModelEntry, paths: list[str], truth: np.ndarray | None,
                    cache_dir: str | None = None, min_agreement: float = MIN_AGREEMENT,
                    threads: int = 0) -> QuantizationReport:
    """Convert ``entry`` if needed, quantize it on ``paths`` and write the report into
    its card, whether the graph was accepted or refused."""
    onnx_path, _, _ = convert_entry(entry, cache_dir, threads)
    images = np.stack([load_prepared(path, entry.card) for path in paths])
    report = quantize(onnx_path, entry.card, images, truth, min_agreement, threads)
    record_in_card(entry.path, entry.card, report)
    return report


def quantize_folder(entry: ModelEntry, data_dir: str,
                    limit_per_class: int = DEFAULT_LIMIT_PER_CLASS, **options
                    ) -> QuantizationReport:
    """Quantize on a dataset folder (one subfolder per class, as for training)."""
    dataset = load_dataset(data_dir, limit_per_class=limit_per_class)
    return quantize_images(entry, dataset.paths, dataset.labels, **options)


def quantize_trained(model_path: Path, validation, echo=print) -> None:
    """After training: INT8 calibrated and judged on the validation split."""
    entry = next(e for e in discover(Path(model_path).parents[1])
                 if e.available and e.path.resolve() == Path(model_path).resolve())
    try:
        report = quantize_images(entry, validation.paths, validation.labels)
    except Exception as exc:  # noqa: BLE001 - the fp32 model stands; say why INT8 does not
        echo(f"INT8: not made ({type(exc).__name__}: {exc})")
        return
    echo(f"INT8: {'accepted' if report.accepted else 'refused'}: {report.summary()}")
