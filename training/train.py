"""``train``: transfer learning in two phases, then the model and its card in the
published layout, where the app finds them.

Phase 1 trains the new head on a frozen base; phase 2 thaws the base's top blocks at a
low learning rate. Each phase stops early on validation loss and keeps its best
weights. The decision threshold is chosen on validation data, the metrics are measured
on the held-out test images, and both go into the card the app reads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from inference.runtime import import_tensorflow
from inference.registry import ARCHITECTURES, MODALITY_ALIASES, model_relpath
from inference.cards import ModelCard

from .datasets import CLASSES, load_dataset, parse_class_map, split_dataset
from .evaluate import score, write_report
from .metrics import choose_threshold, compute_metrics
from .models import BaseBuilder, build_model, freeze_base, trainable_layer_count, unfreeze_top
from .pipeline import augmentation, describe_augmentation, make_dataset
from .profile import write_training_profile
from .quantize import quantize_trained


def class_weights(labels) -> dict[int, float]:
    """Balanced weights, so the smaller class counts as much as the larger one."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    return {int(c): float(w) for c, w in zip(present, weights)}


def merge_history(phases: list[tuple[str, dict]]) -> dict:
    """Keras histories of both phases as one per-epoch record, with each epoch's phase."""
    merged: dict[str, list] = {"phase": []}
    for name, history in phases:
        epochs = len(history.get("loss", []))
        merged["phase"].extend([name] * epochs)
        for key, values in history.items():
            merged.setdefault(key, []).extend(float(v) for v in values)
    return merged


def fit_phase(model, train_batches, val_batches, learning_rate: float, epochs: int,
              initial_epoch: int, weights: dict, patience: int, verbose: int) -> dict:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                         restore_best_weights=True)
    history = model.fit(train_batches, validation_data=val_batches, epochs=epochs,
                        initial_epoch=initial_epoch, class_weight=weights,
                        callbacks=[stop], shuffle=False, verbose=verbose)
    return history.history


def save_atomically(model, card: dict, model_path: Path) -> None:
    """Write beside the target, then rename: the app never reads a half-written file."""
    model_path.parent.mkdir(parents=True, exist_ok=True)
    card_path = model_path.with_suffix(".json")
    partial_model = model_path.with_name(model_path.stem + ".partial.h5")
    partial_card = card_path.with_name(card_path.stem + ".partial.json")
    model.save(str(partial_model), include_optimizer=False)
    partial_card.write_text(json.dumps(card, indent=2), encoding="utf-8")
    os.replace(partial_card, card_path)
    os.replace(partial_model, model_path)


def seeded_tensorflow(seed: int, deterministic: bool):
    """TensorFlow with every seed set; ``deterministic`` also fixes the op order."""
    import keras

    tf = import_tensorflow()
    keras.utils.set_random_seed(seed)
    if deterministic:
        # Seeds alone leave thread timing free to reorder float sums and random draws.
        tf.config.experimental.enable_op_determinism()
    return tf


def run_training(args, base_builder: BaseBuilder | None = None) -> dict:
    """Train as ``args`` say; returns the card written beside the model."""
    import keras

    tf = seeded_tensorflow(args.seed, args.deterministic)
    arch, modality = args.arch, MODALITY_ALIASES[args.modality]
    size = args.input_size or ARCHITECTURES[arch].default_input_size[0]
    card = ModelCard(arch, modality, classes=CLASSES, input_size=(size, size),
                     preprocessing=args.preprocessing, resize=args.resize)

    class_map = parse_class_map(args.map_class)
    split = _load_split(args, class_map)
    train_batches, val_batches, test_batches = _batches(args, split, card, modality)

    model, fine_tune_after = build_model(arch, card.input_size, args.weights, base_builder)
    weights = class_weights(split.train.labels)
    head_epochs = min(args.head_epochs, args.epochs)
    phases, phase_facts = _train_phases(args, model, train_batches, val_batches, weights,
                                        head_epochs, fine_tune_after)

    val_true, val_probability = score(model, val_batches, card)
    threshold, threshold_rule = choose_threshold(args.threshold, val_true, val_probability)
    card.threshold = round(threshold, 6)
    test_true, test_probability = score(model, test_batches, card)
    test_metrics = {"evaluated_on": "test", **compute_metrics(test_true, test_probability,
                                                              card.threshold)}
    validation_metrics = compute_metrics(val_true, val_probability, card.threshold)
    history = merge_history(phases)

    card.metrics = test_metrics
    card.extra = {
        "threshold_rule": threshold_rule,
        "seed": args.seed,
        "split_sizes": split.sizes(),
        "split": _split_facts(args, class_map),
        "validation_metrics": validation_metrics,
        "history": history,
        "training": _training_facts(args, modality, head_epochs, weights, phase_facts,
                                    tf.__version__, keras.__version__),
    }
    model_path = Path(args.output) / model_relpath(arch, modality)
    card_json = card.to_json()
    save_atomically(model, card_json, model_path)
    _write_companions(args, model, card, split, model_path)
    _print_outcome(card, threshold_rule, test_true, test_metrics, model_path)
    if args.report:
        _write_test_report(args, model_path, card_json, test_true, test_probability, history)
    return card_json


def _write_companions(args, model, card: ModelCard, split, model_path: Path) -> None:
    """What serving uses beside the model: the out-of-distribution profile, and the
    INT8 graph calibrated on the validation split (unless ``--no-quantize``)."""
    write_training_profile(model, card, split, model_path, args.batch_size)
    if getattr(args, "quantize", True):
        quantize_trained(model_path, split.validation)


def _load_split(args, class_map: dict):
    """The dataset split as ``args`` say, its counts printed."""
    dataset = load_dataset(args.data, args.limit_per_class, class_map)
    split = split_dataset(dataset, args.val_fraction, args.test_fraction, args.seed,
                          args.group_regex)
    sizes = split.sizes()
    print(f"Images: {dataset.counts()} from {dataset.source_counts()}"
          + (f"; ignored folders: {', '.join(dataset.ignored_folders)}"
             if dataset.ignored_folders else ""))
    print(f"Split (seed {args.seed}): " + ", ".join(f"{k} {v}" for k, v in sizes.items()))
    return split


def _batches(args, split, card: ModelCard, modality: str) -> tuple:
    """Training (augmented), validation and test batches."""
    cache = "" if args.cache == "memory" else None if args.cache == "none" else args.cache
    train_batches = make_dataset(split.train.paths, split.train.labels, card, args.batch_size,
                                 training=True, augment=augmentation(modality, args.seed),
                                 cache=_cache_file(cache, "train", split.train.paths, card),
                                 seed=args.seed)
    val_batches = make_dataset(split.validation.paths, split.validation.labels, card,
                               args.batch_size,
                               cache=_cache_file(cache, "validation", split.validation.paths,
                                                 card))
    test_batches = make_dataset(split.test.paths, split.test.labels, card, args.batch_size,
                                cache=None)
    return train_batches, val_batches, test_batches


def _train_phases(args, model, train_batches, val_batches, weights: dict, head_epochs: int,
                  fine_tune_after) -> tuple[list, list]:
    """Phase 1 on the head, then phase 2 on the thawed top blocks when epochs remain:
    the Keras histories and what each phase did."""
    phases, phase_facts = [], []
    freeze_base(model)
    print(f"Phase 1: head only, {head_epochs} epochs at learning rate {args.learning_rate}")
    history = fit_phase(model, train_batches, val_batches, args.learning_rate, head_epochs,
                        0, weights, args.patience, args.verbose)
    phases.append(("head", history))
    phase_facts.append({"name": "head", "epochs": len(history.get("loss", [])),
                        "learning_rate": args.learning_rate,
                        "trainable_layers": trainable_layer_count(model)})
    if args.epochs > head_epochs:
        unfreeze_top(model, None if args.fine_tune == "all" else fine_tune_after)
        done = len(history.get("loss", []))
        print(f"Phase 2: top blocks after {fine_tune_after if args.fine_tune == 'top' else '-'}"
              f", {args.epochs - head_epochs} epochs at {args.fine_tune_learning_rate}")
        history = fit_phase(model, train_batches, val_batches, args.fine_tune_learning_rate,
                            done + args.epochs - head_epochs, done, weights, args.patience,
                            args.verbose)
        phases.append(("fine_tune", history))
        phase_facts.append({"name": "fine_tune", "epochs": len(history.get("loss", [])),
                            "learning_rate": args.fine_tune_learning_rate,
                            "trainable_layers": trainable_layer_count(model),
                            "fine_tune_after": None if args.fine_tune == "all"
                            else fine_tune_after})
    return phases, phase_facts


def _split_facts(args, class_map: dict) -> dict:
    """What it takes to draw the same split again."""
    return {"seed": args.seed, "val_fraction": args.val_fraction,
            "test_fraction": args.test_fraction, "group_regex": args.group_regex,
            "limit_per_class": args.limit_per_class, "class_map": class_map}


def _training_facts(args, modality: str, head_epochs: int, weights: dict,
                    phase_facts: list, tensorflow_version: str, keras_version: str) -> dict:
    """How the model was trained, for the card."""
    return {
        "data": str(Path(args.data)), "weights": args.weights, "epochs": args.epochs,
        "head_epochs": head_epochs, "batch_size": args.batch_size,
        "deterministic": args.deterministic,
        "class_weight": {CLASSES[k]: v for k, v in weights.items()},
        "augmentation": describe_augmentation(modality), "phases": phase_facts,
        "early_stopping": {"monitor": "val_loss", "patience": args.patience,
                           "restore_best_weights": True},
        "tensorflow": tensorflow_version, "keras": keras_version,
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _print_outcome(card: ModelCard, threshold_rule: str, test_true, test_metrics: dict,
                   model_path: Path) -> None:
    print(f"Test ({len(test_true)} images, threshold {card.threshold:.4f} by "
          f"{threshold_rule}): accuracy {test_metrics['accuracy']:.4f}, "
          f"sensitivity {test_metrics['sensitivity']:.4f}, "
          f"specificity {test_metrics['specificity']:.4f}")
    print(f"Model: {model_path}\nCard:  {model_path.with_suffix('.json')}")


def _write_test_report(args, model_path: Path, card_json: dict, test_true, test_probability,
                       history: dict) -> None:
    write_report(Path(args.report), test_true, test_probability, card_json["threshold"],
                 history, {"model": str(model_path), "data": str(Path(args.data)),
                           "subset": "test", "card": card_json})
    print(f"Report: {Path(args.report) / 'report.json'}")


def _cache_file(cache: str | None, part: str, paths: list[str], card: ModelCard
                ) -> str | None:
    """Memory ("") and no cache pass through; a folder gets one file per split part,
    named after its images and preprocessing so another run never reads stale inputs."""
    if not cache:
        return cache
    Path(cache).mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256("\n".join([*paths, repr(card.input_size), card.preprocessing,
                                     card.resize, card.architecture]).encode()).hexdigest()
    return str(Path(cache) / f"{part}-{key[:12]}.tfcache")
