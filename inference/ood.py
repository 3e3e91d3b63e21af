"""Out-of-distribution check: how far an image lies from a model's training images.

A model answers COVID or Non-COVID for anything, a text page or a photo of a cat
included. A feature profile summarises the model's training images by the
global-average-pooled last feature map (the map the served graph returns anyway, so
the check costs no second pass): their mean and a shrunk covariance, stored as a
whitening matrix ``W`` (``W.T @ W`` is the precision), so an image's Mahalanobis
distance is one matrix-vector product. Beyond the distance that 99 % of held-out images
of the training distribution stay within, the answer carries a warning.

A profile sits beside its model as ``<stem>.profile.npz`` (numpy arrays, read without
pickle) and records the SHA-256 of the model file it was made for: a profile made for
other bytes is never used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .conversion import file_sha256

log = logging.getLogger(__name__)

PROFILE_SUFFIX = ".profile.npz"
FORMAT = 1
_blas_lock = threading.Lock()
_blas_controller = None  # threadpoolctl's, made on first use; False without it


class ProfileError(ValueError):
    """A profile file that cannot be read or does not describe a usable profile."""


@dataclass(frozen=True)
class FeatureProfile:
    mean: np.ndarray  # (d,) mean pooled feature vector of the fitted images
    whitening: np.ndarray  # (d, d): distance = |W (x - mean)|
    threshold: float  # set on the held-out images (training/profile.py's conformal rule)
    count: int  # images the mean and covariance were fitted on
    held_out: int  # images the threshold was measured on
    model_sha256: str
    # At least this share (in %) of new images like the held-out ones is not warned about.
    percentile: float = 99.0
    shrinkage: float = 0.0  # Ledoit-Wolf's, recorded for the curious

    @property
    def feature_size(self) -> int:
        return int(self.mean.size)

    def distances(self, vectors: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``(n, d)`` pooled features."""
        centred = np.asarray(vectors, dtype=np.float32) - self.mean
        return np.linalg.norm(centred @ self.whitening.T, axis=1)

    def distance(self, vector: np.ndarray) -> float:
        """One image's distance: a single matrix-vector product, on one BLAS thread."""
        centred = np.asarray(vector, dtype=np.float32).ravel() - self.mean
        with _blas_lock, _one_blas_thread():
            return float(np.linalg.norm(self.whitening @ centred))


def _one_blas_thread():
    """Limit BLAS to one thread (the caller holds ``_blas_lock``). A matrix-vector
    product is bound by memory: OpenBLAS's threads gain nothing and, waiting for cores
    the model keeps busy, made it 8 ms instead of 0.8 ms for 2048 features."""
    global _blas_controller
    if _blas_controller is None:
        try:
            from threadpoolctl import ThreadpoolController

            _blas_controller = ThreadpoolController()
        except ImportError:  # scikit-learn brings it; without it, BLAS as it is
            _blas_controller = False
    if not _blas_controller:
        return contextlib.nullcontext()
    return _blas_controller.limit(limits=1, user_api="blas")


def pool_features(maps: np.ndarray) -> np.ndarray:
    """``(n, h, w, c)`` feature maps -> ``(n, c)`` averages over h and w (what a
    profile describes); ``(n, c)`` passes through."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim == 4:
        return maps.mean(axis=(1, 2))
    if maps.ndim == 2:
        return maps
    raise ValueError(f"expected (n, h, w, c) feature maps, got shape {maps.shape}")


def profile_path(model_path: str | Path) -> Path:
    """``models/vgg16/VGG16_CT_model.h5`` -> ``models/vgg16/VGG16_CT_model.profile.npz``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + PROFILE_SUFFIX)


def save_profile(profile: FeatureProfile, path: str | Path) -> Path:
    """Write beside the target, then rename: the app never reads a half-written file."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        np.savez(handle, format=np.int64(FORMAT),
                 mean=profile.mean.astype(np.float32),
                 whitening=profile.whitening.astype(np.float32),
                 threshold=np.float64(profile.threshold),
                 feature_size=np.int64(profile.feature_size),
                 count=np.int64(profile.count), held_out=np.int64(profile.held_out),
                 model_sha256=np.str_(profile.model_sha256),
                 percentile=np.float64(profile.percentile),
                 shrinkage=np.float64(profile.shrinkage))
    os.replace(partial, path)
    return path


def load_profile(path: str | Path) -> FeatureProfile:
    """Read a profile (no pickle); ProfileError names what is wrong with it."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["format"]) != FORMAT:
                raise ProfileError(f"format {int(data['format'])}, expected {FORMAT}")
            profile = FeatureProfile(
                mean=data["mean"].astype(np.float32),
                whitening=data["whitening"].astype(np.float32),
                threshold=float(data["threshold"]), count=int(data["count"]),
                held_out=int(data["held_out"]), model_sha256=str(data["model_sha256"]),
                percentile=float(data["percentile"]), shrinkage=float(data["shrinkage"]))
            size = int(data["feature_size"])
    except ProfileError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ProfileError(f"{Path(path).name} cannot be read: {exc}") from exc
    if profile.mean.shape != (size,) or profile.whitening.shape != (size, size):
        raise ProfileError(f"{Path(path).name} holds arrays that do not fit "
                           f"{size} features")
    return profile


@dataclass(frozen=True)
class OodCheck:
    """What one model's answer says about its input's distance from its training."""

    profiled: bool  # a usable profile was applied
    distance: float | None = None
    threshold: float | None = None
    warnings: tuple[str, ...] = ()


class ProfileStore:
    """Profiles read once per version: keyed by the (mtime, size) of the profile file
    and of its model, so replacing either takes effect on the next request."""

    def __init__(self):
        self._entries: dict[str, tuple[tuple, FeatureProfile | None, str | None]] = {}
        self._lock = threading.Lock()

    def lookup(self, model_path: str | Path) -> tuple[FeatureProfile | None, str | None]:
        """``(profile, None)``, ``(None, None)`` without a profile file, or
        ``(None, why)`` for a profile that exists but cannot be used."""
        model_path = Path(model_path)
        path = profile_path(model_path)
        try:
            stats = (path.stat(), model_path.stat())
        except OSError:
            return None, None
        key = tuple((s.st_mtime_ns, s.st_size) for s in stats)
        with self._lock:
            cached = self._entries.get(str(model_path))
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        profile, problem = self._read(path, model_path)
        with self._lock:
            self._entries[str(model_path)] = (key, profile, problem)
        return profile, problem

    @staticmethod
    def _read(path: Path, model_path: Path) -> tuple[FeatureProfile | None, str | None]:
        try:
            profile = load_profile(path)
        except ProfileError as exc:
            problem = f"its feature profile is unusable ({exc})"
        else:
            if profile.model_sha256 == file_sha256(model_path):
                return profile, None
            problem = (f"its feature profile {path.name} was made for other bytes than "
                       f"{model_path.name} (SHA-256 differs) and is ignored")
        log.warning("%s: %s", model_path.name, problem)
        return None, problem


PROFILES = ProfileStore()


def check(model_path: str | Path, features: np.ndarray | None, model_name: str,
          store: ProfileStore = PROFILES) -> OodCheck:
    """The distance of one pass's feature map from the model's profile, and a warning
    beyond its threshold (or saying why the check could not be made)."""
    profile, problem = store.lookup(model_path)
    if problem:
        return OodCheck(False, warnings=(f"No out-of-distribution check for {model_name}: "
                                         f"{problem}.",))
    if profile is None:
        return OodCheck(False)
    if features is None:
        return OodCheck(False, warnings=(f"No out-of-distribution check for {model_name}: "
                                         f"its runner gives no feature map.",))
    pooled = pool_features(features)
    if pooled.shape[-1] != profile.feature_size:
        return OodCheck(False, warnings=(
            f"No out-of-distribution check for {model_name}: its feature profile "
            f"describes {profile.feature_size} features, the model gives "
            f"{pooled.shape[-1]}.",))
    distance = profile.distance(pooled[0])
    warnings = ()
    if distance > profile.threshold:
        warnings = (f"This image is unlike the images the {model_name} model was trained "
                    f"on: its answer means little.",)
    return OodCheck(True, round(distance, 3), round(profile.threshold, 3), warnings)
