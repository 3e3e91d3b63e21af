"""``evaluate``: score a model file on a dataset and write ``report.json`` and plots.

The model is read the way the app reads it (Keras 3, then tf_keras), with its card or,
for the published files that have none, the published defaults.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from inference.runners import load_keras_model
from inference.cards import covid_probability
from inference.registry import ARCHITECTURES, MODALITY_ALIASES
from inference.cards import ModelCard

from .datasets import CLASSES, Dataset, load_dataset, parse_class_map, split_dataset
from .metrics import classification_text, compute_metrics, predicted_labels
from .pipeline import make_dataset
from .plots import write_plots

_FILE_NAME = re.compile(r"^(?P<arch>[a-z0-9]+)_(?P<tag>ct|cxr)_model$", re.IGNORECASE)


def infer_slot(path: Path, arch: str | None = None, modality: str | None = None
               ) -> tuple[str, str]:
    """Architecture and modality from the published file name, unless given."""
    match = _FILE_NAME.match(path.stem)
    if arch is None and match and match["arch"].lower() in ARCHITECTURES:
        arch = match["arch"].lower()
    if modality is None and match:
        modality = MODALITY_ALIASES[match["tag"].lower()]
    if arch is None or modality is None:
        raise ValueError(f"Cannot tell the architecture and modality of {path.name}: "
                         f"name it <ARCH>_<CT|CXR>_model.h5 or pass --arch and --modality.")
    return arch, MODALITY_ALIASES.get(modality.lower(), modality)


def card_for(path: Path, arch: str | None = None, modality: str | None = None
             ) -> tuple[ModelCard, bool]:
    """The card beside the model file, or the published defaults; and whether one existed."""
    arch, modality = infer_slot(path, arch, modality)
    card_path = path.with_suffix(".json")
    if card_path.is_file():
        return ModelCard.load(card_path, arch, modality), True
    return ModelCard(arch, modality, input_size=ARCHITECTURES[arch].default_input_size), False


def score(model, batches, card: ModelCard) -> tuple[np.ndarray, np.ndarray]:
    """(true labels, COVID probabilities) over a tf.data dataset, each output row read
    as the app reads it."""
    labels, probabilities = [], []
    for images, y in batches:
        outputs = np.asarray(model.predict_on_batch(images))
        probabilities.extend(covid_probability(row, card) for row in outputs)
        labels.extend(np.asarray(y).tolist())
    return np.asarray(labels, dtype=np.int64), np.asarray(probabilities, dtype=np.float64)


def evaluation_subset(dataset: Dataset, card: ModelCard, subset: str) -> tuple[Dataset, str]:
    """``all`` images, or the ``test`` part re-created from the split the card records
    (``auto``: test when the card has one), so training images are not scored twice."""
    split = card.extra.get("split") or {}
    if subset == "auto":
        subset = "test" if split else "all"
    if subset == "all":
        return dataset, "all"
    if not split:
        raise ValueError("--subset test needs a model card that records its split.")
    parts = split_dataset(dataset, split["val_fraction"], split["test_fraction"],
                          int(card.extra.get("seed", split.get("seed", 42))),
                          split.get("group_regex"))
    return parts.test, "test"


def write_report(folder: Path, y_true, probability, threshold: float, history: dict | None,
                 context: dict) -> dict:
    """``report.json`` plus plots in ``folder``; returns the report."""
    folder.mkdir(parents=True, exist_ok=True)
    metrics = compute_metrics(y_true, probability, threshold)
    text = classification_text(y_true, predicted_labels(probability, threshold))
    plots = write_plots(y_true, probability, threshold, history, folder)
    report = {**context, "classes": list(CLASSES), **metrics,
              "classification_report": text, "plots": plots}
    (folder / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return report


def run_evaluate(args) -> dict:
    model_path = Path(args.model)
    if not model_path.is_file():
        raise FileNotFoundError(f"Model file {model_path} not found.")
    card, has_card = card_for(model_path, args.arch, args.modality)
    if args.threshold is not None:
        card.threshold = float(args.threshold)
    split = card.extra.get("split") or {}
    class_map = parse_class_map(args.map_class) if args.map_class else \
        split.get("class_map") or {}
    limit = args.limit_per_class if args.limit_per_class is not None else \
        split.get("limit_per_class")
    dataset, subset = evaluation_subset(load_dataset(args.data, limit, class_map), card,
                                        args.subset)
    print(f"Evaluating {model_path.name} on {len(dataset.samples)} images ({subset}): "
          f"{dataset.counts()}; card: {'yes' if has_card else 'no, published defaults'}")
    model, loader = load_keras_model(model_path)
    batches = make_dataset(dataset.paths, dataset.labels, card, args.batch_size, cache=None)
    started = time.perf_counter()
    y_true, probability = score(model, batches, card)
    elapsed = time.perf_counter() - started
    context = {
        "model": str(model_path), "loader": loader, "data": str(Path(args.data)),
        "subset": subset, "card": card.to_json() if has_card else None,
        "preprocessing": card.preprocessing, "input_size": list(card.input_size),
        "images_per_second": round(len(y_true) / elapsed, 2) if elapsed else None,
    }
    report = write_report(Path(args.report), y_true, probability, card.threshold,
                          card.extra.get("history"), context)
    print(report["classification_report"])
    print(f"ROC AUC {_fmt(report['roc_auc'])}  sensitivity {report['sensitivity']:.4f}  "
          f"specificity {report['specificity']:.4f}  ECE "
          f"{report['expected_calibration_error']:.4f}  threshold {card.threshold:.4f}")
    print(f"Report: {Path(args.report) / 'report.json'}")
    return report


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
