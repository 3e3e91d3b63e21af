"""``profile``: the feature profile the app's out-of-distribution check reads.

Features are computed the serving way: the model traced as the app serves it
(``KerasGraphBackend``), fed images through the app's own decode and ``model_input``, its
last feature map averaged over height and width. The mean and a Ledoit-Wolf shrunk
covariance are fitted on one part of the images; the threshold comes from the distances
of the other part, which the fit never saw, by the conformal rule: the k-th smallest of
those n distances with k = ceil((n + 1)(1 - rate)). For a new image like them the chance
of a warning is then at most 1 - k / (n + 1), whatever the distribution and however few
the images (a plain 99th percentile of 20 distances warns on about 6 % of new images,
not 1 %). With fewer images than the rate needs, k is n (the largest distance) and the
bound 1 / (n + 1) is what the profile records.

``train`` writes a profile after training (fitted on the training split, threshold from
the validation and test splits pooled); ``python -m training profile`` builds one for a
model trained elsewhere from a copy of its dataset.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from inference.ood import FeatureProfile, pool_features, profile_path, save_profile
from inference.conversion import file_sha256
from inference.cards import ModelCard
from inference.runners import KerasGraphBackend, load_keras_model

from .datasets import load_dataset, parse_class_map
from .evaluate import card_for
from .pipeline import load_prepared

FALSE_WARNING_RATE = 0.02  # asked for; the profile records the bound its images give
EIGEN_FLOOR = 1e-6  # relative to the largest variance: keeps the whitening finite


def image_features(backend: KerasGraphBackend, paths: list[str], card: ModelCard,
                   batch_size: int = 32) -> np.ndarray:
    """``(n, d)`` pooled last feature maps of these image files, as served."""
    pooled = []
    for start in range(0, len(paths), batch_size):
        batch = np.stack([load_prepared(p, card) for p in paths[start:start + batch_size]])
        _, maps = backend.run(batch)
        pooled.append(pool_features(maps))
    return np.concatenate(pooled) if pooled else np.zeros((0, 0), np.float32)


def whitening_matrix(covariance: np.ndarray) -> np.ndarray:
    """``W`` with ``W.T @ W`` the inverse of ``covariance`` (eigenvalues floored)."""
    values, vectors = np.linalg.eigh(np.asarray(covariance, dtype=np.float64))
    values = np.maximum(values, EIGEN_FLOOR * max(float(values.max()), 1e-12))
    return (vectors / np.sqrt(values)).T


def conformal_threshold(distances: np.ndarray, rate: float) -> tuple[float, float]:
    """(threshold, coverage): the k-th smallest distance, k = ceil((n + 1)(1 - rate))
    capped at n, and k / (n + 1), the share of new images like these it lets pass at
    least (in expectation over the held-out draw)."""
    ordered = np.sort(np.asarray(distances, dtype=np.float64))
    n = len(ordered)
    k = min(n, int(np.ceil((n + 1) * (1.0 - rate) - 1e-9)))
    return float(ordered[k - 1]), k / (n + 1)


def fit_profile(fit_features: np.ndarray, held_out_features: np.ndarray, model_sha256: str,
                rate: float = FALSE_WARNING_RATE) -> FeatureProfile:
    """Mean and shrunk covariance from ``fit_features``; the threshold from the others
    (``conformal_threshold``), its coverage recorded as ``percentile``."""
    from sklearn.covariance import LedoitWolf

    fit_features = np.asarray(fit_features, dtype=np.float64)
    if len(fit_features) < 2 or len(held_out_features) < 1:
        raise ValueError(f"A feature profile needs at least 2 images to fit and 1 to set "
                         f"its threshold, not {len(fit_features)} and "
                         f"{len(held_out_features)}.")
    estimate = LedoitWolf().fit(fit_features)
    provisional = FeatureProfile(
        mean=estimate.location_.astype(np.float32),
        whitening=whitening_matrix(estimate.covariance_).astype(np.float32),
        threshold=0.0, count=len(fit_features), held_out=len(held_out_features),
        model_sha256=model_sha256, shrinkage=float(estimate.shrinkage_))
    threshold, coverage = conformal_threshold(provisional.distances(held_out_features), rate)
    return replace(provisional, threshold=threshold, percentile=round(100 * coverage, 3))


def build_profile(model, card: ModelCard, fit_paths: list[str], held_out_paths: list[str],
                  model_path: Path, batch_size: int = 32) -> tuple[FeatureProfile, Path]:
    """Fit, measure and save the profile of the model saved at ``model_path``."""
    backend = KerasGraphBackend(model, card.input_size)
    if not backend.has_features:
        raise ValueError(f"{model_path.name} has no convolutional feature map to profile.")
    profile = fit_profile(image_features(backend, fit_paths, card, batch_size),
                          image_features(backend, held_out_paths, card, batch_size),
                          file_sha256(model_path))
    return profile, save_profile(profile, profile_path(model_path))


def write_training_profile(model, card: ModelCard, split, model_path: Path,
                           batch_size: int = 32) -> Path | None:
    """After ``train``: fitted on the training split, the threshold from the validation
    and test splits pooled: more images than validation alone, and the test images
    played no part in choosing the epoch kept, which made validation images look a
    little more typical than new ones."""
    try:
        profile, path = build_profile(model, card, split.train.paths,
                                      [*split.validation.paths, *split.test.paths],
                                      model_path, batch_size)
    except ValueError as exc:
        print(f"No feature profile: {exc}")
        return None
    _print_profile(profile, path)
    return path


def held_out_split(labels: np.ndarray, share: float, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, held out), stratified by class and the same for the same seed."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    return train_test_split(indices, test_size=share, stratify=labels, random_state=seed)


def run_profile(args) -> Path:
    """``python -m training profile``: every image of the dataset's classes, a share
    held out for the threshold."""
    model_path = Path(args.model)
    if not model_path.is_file():
        raise FileNotFoundError(f"Model file {model_path} not found.")
    if not 0.0 < args.held_out < 1.0:
        raise ValueError("--held-out must be between 0 and 1.")
    card, has_card = card_for(model_path, args.arch, args.modality)
    dataset = load_dataset(args.data, args.limit_per_class, parse_class_map(args.map_class))
    fit, held = held_out_split(dataset.labels, args.held_out, args.seed)
    print(f"Profiling {model_path.name} on {len(fit)} images, threshold from {len(held)} "
          f"held out ({dataset.counts()}); card: "
          f"{'yes' if has_card else 'no, published defaults'}")
    model, _ = load_keras_model(model_path)
    paths = dataset.paths
    profile, path = build_profile(model, card, [paths[i] for i in fit],
                                  [paths[i] for i in held], model_path, args.batch_size)
    _print_profile(profile, path)
    return path


def _print_profile(profile: FeatureProfile, path: Path) -> None:
    print(f"Profile: {path} ({profile.feature_size} features from {profile.count} images; "
          f"warns beyond distance {profile.threshold:.2f}, set on {profile.held_out} "
          f"held-out images: at most {100 - profile.percentile:.1f} % of new images like "
          f"them are warned about)")
