"""Metrics equal scikit-learn's, and ``evaluate`` scores a published model like the app."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from inference.preprocess import decode_image, model_input
from inference.cards import ModelCard
from training.__main__ import main
from training.datasets import load_dataset
from training.metrics import (choose_threshold, compute_metrics,
                              expected_calibration_error)

from .model_factory import install, tiny_model
from .training_data import ct_dataset


def sklearn_view(y_true, probability, threshold):
    """The expected numbers, straight from scikit-learn."""
    y_pred = (probability >= threshold).astype(int)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=[0, 1], zero_division=0)
    return {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "roc_auc": skm.roc_auc_score(y_true, probability),
        "sensitivity": skm.recall_score(y_true, y_pred, pos_label=1),
        "specificity": skm.recall_score(y_true, y_pred, pos_label=0),
        "matrix": skm.confusion_matrix(y_true, y_pred, labels=[0, 1]).tolist(),
        "per_class": {name: {"precision": precision[i], "recall": recall[i], "f1": f1[i],
                             "support": int(support[i])}
                      for i, name in enumerate(["NonCOVID", "COVID"])},
    }


def assert_matches(report: dict, expected: dict):
    for key in ("accuracy", "roc_auc", "sensitivity", "specificity"):
        assert report[key] == pytest.approx(expected[key], abs=1e-12), key
    assert report["confusion_matrix"]["matrix"] == expected["matrix"]
    assert report["per_class"].keys() == expected["per_class"].keys()
    for name, values in expected["per_class"].items():
        for key, value in values.items():
            assert report["per_class"][name][key] == pytest.approx(value, abs=1e-12)


def test_metrics_equal_scikit_learn():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 2, 200)
    probability = np.clip(0.3 * y_true + rng.uniform(0, 0.7, 200), 0, 1)
    report = compute_metrics(y_true, probability, 0.45)
    assert_matches(report, sklearn_view(y_true, probability, 0.45))
    assert report["count"] == 200 and report["threshold"] == 0.45


def test_expected_calibration_error_uses_calibration_curve_bins():
    rng = np.random.default_rng(5)
    probability = rng.uniform(0, 1, 500)
    y_true = (rng.uniform(0, 1, 500) < probability ** 2).astype(int)
    observed, predicted = calibration_curve(y_true, probability, n_bins=10)
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], probability),
                         minlength=10)
    expected = np.sum(counts[counts > 0] / 500 * np.abs(observed - predicted))
    assert expected_calibration_error(y_true, probability) == pytest.approx(expected)
    assert expected_calibration_error([0, 1, 1, 0], [0.0, 1.0, 1.0, 0.0]) == 0.0


def test_youden_threshold_is_the_best_roc_point():
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    probability = np.array([0.1, 0.2, 0.3, 0.7, 0.6, 0.8, 0.9, 0.95])
    threshold, rule = choose_threshold("youden", y_true, probability)
    fpr, tpr, thresholds = skm.roc_curve(y_true, probability)
    assert threshold == pytest.approx(thresholds[np.argmax(tpr - fpr)])
    assert rule.startswith("youden")
    assert choose_threshold("0.5", y_true, probability) == (0.5, "fixed")


@pytest.mark.parametrize("y_true, probability", [
    ([0, 0, 1, 1], [0.2, 0.4, 1.0, 1.0]),  # best cut at a probability of exactly 1
    ([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]),  # inverted scores: best cut above every score
    ([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0]),  # scores of exactly 0 and 1
])
def test_youden_threshold_stays_inside_what_a_card_accepts(tmp_path, y_true, probability):
    threshold, _ = choose_threshold("youden", y_true, probability)
    assert 0.0 < round(threshold, 6) < 1.0  # run_training writes it rounded
    card_path = tmp_path / "card.json"
    card_path.write_text(json.dumps({"threshold": round(threshold, 6)}), encoding="utf-8")
    card = ModelCard.load(card_path, "vgg16", "ct")
    labels = (np.asarray(probability) >= card.threshold).astype(int)
    fpr, tpr, thresholds = skm.roc_curve(y_true, probability)
    expected = (np.asarray(probability) >= min(thresholds[np.argmax(tpr - fpr)], 1.0))
    assert labels.tolist() == expected.astype(int).tolist()  # the same cut


def test_fixed_threshold_survives_rounding_into_the_card():
    threshold, rule = choose_threshold("0.9999999", [0, 1], [0.2, 0.8])
    assert rule == "fixed" and 0.0 < round(threshold, 6) < 1.0


def test_evaluate_a_published_model_without_card(tmp_path, capsys):
    """No card: the published defaults (224 x 224, pixel / 255, threshold 0.5)."""
    data = ct_dataset(tmp_path / "data", per_class=6)
    model = tiny_model(input_size=(224, 224), seed=4)
    model_path = install(model, tmp_path / "models", "vgg16", "ct")
    report_dir = tmp_path / "report"
    code = main(["evaluate", "--data", str(data), "--model", str(model_path),
                 "--report", str(report_dir), "--batch-size", "5"])
    assert code == 0
    report = json.loads((report_dir / "report.json").read_text())

    dataset = load_dataset(data)
    card = ModelCard("vgg16", "ct")
    inputs = np.stack([model_input(decode_image(p.read_bytes()).pixels, card)
                       for p in (s.path for s in dataset.samples)])
    probability = model.predict(inputs, verbose=0)[:, 1]
    assert report["subset"] == "all" and report["card"] is None
    assert report["count"] == 12 and report["threshold"] == 0.5
    assert_matches(report, sklearn_view(dataset.labels, probability, 0.5))
    printed = capsys.readouterr().out
    expected_text = skm.classification_report(
        dataset.labels, (probability >= 0.5).astype(int), labels=[0, 1],
        target_names=["NonCOVID", "COVID"], digits=4, zero_division=0)
    assert expected_text in printed
    assert report["classification_report"] == expected_text
    for name in ("confusion_matrix.png", "roc.png", "precision_recall.png",
                 "calibration.png"):
        assert name in report["plots"]
        assert (report_dir / name).read_bytes()[:4] == b"\x89PNG"


def test_evaluate_needs_a_recognisable_model_name(tmp_path, capsys):
    data = ct_dataset(tmp_path / "data", per_class=2)
    path = tmp_path / "mystery.h5"
    path.write_bytes(b"")
    assert main(["evaluate", "--data", str(data), "--model", str(path),
                 "--report", str(tmp_path / "r")]) == 2
    assert "--arch and --modality" in capsys.readouterr().err
