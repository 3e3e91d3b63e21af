"""PNG plots of an evaluation, drawn by scikit-learn's displays on matplotlib's Agg."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402
from sklearn.calibration import CalibrationDisplay  # noqa: E402

from .datasets import CLASSES  # noqa: E402
from .metrics import CALIBRATION_BINS, LABELS, predicted_labels  # noqa: E402


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def confusion_matrix_plot(y_true, y_pred, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(4.5, 4))
    skm.ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=LABELS, display_labels=CLASSES, cmap="Blues", ax=axes,
        colorbar=False)
    axes.set_title("Confusion matrix")
    return _save(figure, path)


def roc_plot(y_true, probability, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(4.5, 4))
    skm.RocCurveDisplay.from_predictions(y_true, probability, name="COVID", ax=axes)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    axes.set_title("ROC curve")
    return _save(figure, path)


def precision_recall_plot(y_true, probability, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(4.5, 4))
    skm.PrecisionRecallDisplay.from_predictions(y_true, probability, name="COVID", ax=axes)
    axes.set_title("Precision-recall curve")
    return _save(figure, path)


def calibration_plot(y_true, probability, path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(4.5, 4))
    CalibrationDisplay.from_predictions(y_true, probability, n_bins=CALIBRATION_BINS,
                                        name="COVID", ax=axes)
    axes.set_title("Calibration")
    return _save(figure, path)


def training_curves_plot(history: dict, path: Path) -> Path | None:
    """Loss and accuracy per epoch, with the start of fine-tuning marked."""
    if not history or not history.get("loss"):
        return None
    epochs = np.arange(1, len(history["loss"]) + 1)
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(9, 3.6))
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            values = history.get(prefix + metric)
            if values:
                axes.plot(epochs[:len(values)], values, marker="o", label=label)
        phases = history.get("phase") or []
        if "fine_tune" in phases:
            axes.axvline(phases.index("fine_tune") + 0.5, color="grey", linestyle=":",
                         label="fine-tuning starts")
        axes.set_xlabel("epoch")
        axes.set_title(metric)
        axes.legend()
    return _save(figure, path)


def write_plots(y_true, probability, threshold: float, history: dict | None,
                folder: Path) -> list[str]:
    """Every plot the data allows; returns the file names written."""
    folder.mkdir(parents=True, exist_ok=True)
    y_pred = predicted_labels(probability, threshold)
    written = [confusion_matrix_plot(y_true, y_pred, folder / "confusion_matrix.png")]
    if len(np.unique(y_true)) == 2:
        written.append(roc_plot(y_true, probability, folder / "roc.png"))
        written.append(precision_recall_plot(y_true, probability,
                                             folder / "precision_recall.png"))
        written.append(calibration_plot(y_true, probability, folder / "calibration.png"))
    curves = training_curves_plot(history or {}, folder / "training_curves.png")
    if curves is not None:
        written.append(curves)
    return [p.name for p in written]
