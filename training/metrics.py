"""Binary COVID / Non-COVID metrics, all from scikit-learn but one (calibration error).

Labels follow the models' output order: 0 = NonCOVID, 1 = COVID (the positive class).
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from .datasets import CLASSES, COVID_INDEX

LABELS = list(range(len(CLASSES)))
CALIBRATION_BINS = 10
# Chosen thresholds stay this far inside (0, 1): a model card refuses 0 and 1 (one label
# would be unreachable), and the card stores thresholds rounded to 6 decimals.
THRESHOLD_MARGIN = 1e-6


def predicted_labels(covid_probability, threshold: float) -> np.ndarray:
    """COVID when the probability reaches the threshold, the rule the app applies."""
    return (np.asarray(covid_probability, dtype=np.float64) >= threshold).astype(np.int64)


def expected_calibration_error(y_true, covid_probability, bins: int = CALIBRATION_BINS
                               ) -> float:
    """Mean gap between predicted COVID probability and observed COVID rate, over equal
    width probability bins weighted by their share of images (the bins of
    ``sklearn.calibration.calibration_curve(strategy="uniform")``)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    probability = np.asarray(covid_probability, dtype=np.float64)
    if probability.size == 0:
        return 0.0
    bin_ids = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], probability)
    predicted = np.bincount(bin_ids, weights=probability, minlength=bins)
    observed = np.bincount(bin_ids, weights=y_true, minlength=bins)
    # sum over bins of (n_b / N) * |observed_b / n_b - predicted_b / n_b|
    return float(np.abs(observed - predicted).sum() / probability.size)


def interior_threshold(value: float) -> float:
    """``value`` kept within [THRESHOLD_MARGIN, 1 - THRESHOLD_MARGIN], a threshold that a
    model card accepts even after rounding to 6 decimals."""
    return float(np.clip(value, THRESHOLD_MARGIN, 1.0 - THRESHOLD_MARGIN))


def youden_threshold(y_true, covid_probability) -> float:
    """The ROC point that maximises sensitivity + specificity - 1 (Youden's J), kept
    strictly inside (0, 1): a cut at a probability of 1 (or above every score) becomes
    1 - THRESHOLD_MARGIN."""
    fpr, tpr, thresholds = skm.roc_curve(y_true, covid_probability)
    best = int(np.argmax(tpr - fpr))
    return interior_threshold(thresholds[best])


def choose_threshold(rule: str, y_true, covid_probability) -> tuple[float, str]:
    """``0.5`` / any number / ``youden`` -> (threshold, how it was chosen), the threshold
    strictly inside (0, 1) even after the card rounds it to 6 decimals."""
    if str(rule).lower() == "youden":
        if len(set(np.asarray(y_true).tolist())) < 2:
            return 0.5, "default: validation data has one class only"
        return youden_threshold(y_true, covid_probability), "youden on validation"
    value = float(rule)
    if not 0.0 < value < 1.0:
        raise ValueError(f"threshold must be between 0 and 1, not {value}")
    return interior_threshold(value), "fixed"


def classification_text(y_true, y_pred) -> str:
    """scikit-learn's own text report, with the class names."""
    return skm.classification_report(y_true, y_pred, labels=LABELS, target_names=CLASSES,
                                     digits=4, zero_division=0)


def compute_metrics(y_true, covid_probability, threshold: float) -> dict:
    """Everything ``report.json`` and the model card state about a set of predictions."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probability = np.asarray(covid_probability, dtype=np.float64)
    y_pred = predicted_labels(probability, threshold)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=LABELS, zero_division=0)
    matrix = skm.confusion_matrix(y_true, y_pred, labels=LABELS)
    both_classes = len(np.unique(y_true)) == 2
    report = skm.classification_report(y_true, y_pred, labels=LABELS, target_names=CLASSES,
                                       output_dict=True, zero_division=0)
    return {
        "count": int(y_true.size),
        "threshold": float(threshold),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred))
        if both_classes else None,
        "roc_auc": float(skm.roc_auc_score(y_true, probability)) if both_classes else None,
        "average_precision": float(skm.average_precision_score(y_true, probability))
        if both_classes else None,
        "sensitivity": float(recall[COVID_INDEX]),
        "specificity": float(recall[1 - COVID_INDEX]),
        "expected_calibration_error": expected_calibration_error(y_true, probability),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(CLASSES)
        },
        "macro_avg": {k: float(v) for k, v in report["macro avg"].items()},
        "weighted_avg": {k: float(v) for k, v in report["weighted avg"].items()},
        "confusion_matrix": {"labels": list(CLASSES), "rows": "true", "columns": "predicted",
                             "matrix": matrix.tolist()},
    }
