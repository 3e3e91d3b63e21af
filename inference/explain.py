"""Grad-CAM heatmaps: where in the image a model found evidence for COVID.

``explain(loaded, decoded, features)`` is the one call the service makes. When the
prediction's own pass returned the last feature map (``features``), only the head of
the model (the layers after that map) is differentiated: a heatmap then costs a small
fraction of a forward pass. Otherwise, or when the head is not a simple chain of
layers, the whole model runs again under a gradient tape (Selvaraju et al., 2017).
Both give the same map; tests hold them within 1e-3 of the peak.

The class score is the COVID log-odds computed from the last layer's logits, not the
softmax probability: a saturated softmax (p = 1.0 in float32) has zero gradient and
would give an empty map. The map is overlaid on the upload, at its aspect ratio, and
returned as a base64 PNG.
"""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .graph import (ExplainError, build_head, final_layer, find_target_path,
                    keras_module_for, split_model)
from .image import DecodedImage
from .preprocess import model_input
from .runtime import import_tensorflow

HEATMAP_MAX_SIDE = 512  # pixels on the longer side of the returned PNG
MAX_OPACITY = 0.55  # overlay opacity where the map peaks; it fades to 0 where it is 0


def _logit_source(final) -> str:
    """How to recover logits from the input of the last layer."""
    if final is None:
        return "probabilities"
    kind = type(final).__name__
    activation = getattr(getattr(final, "activation", None), "__name__", "")
    if kind == "Dense" and activation in ("softmax", "sigmoid", "linear"):
        return "dense"
    if kind in ("Activation", "Softmax") and activation in ("softmax", "sigmoid", ""):
        return "identity"
    return "probabilities"


def covid_score_function(final, covid_index: int) -> Callable:
    """``score(pre_final, output)``: the COVID log-odds of each row.

    One sigmoid unit is P(classes[1]) (Keras's binary convention): when COVID is
    ``classes[0]`` its log-odds is minus the unit's logit.
    """
    tf = import_tensorflow()
    source = _logit_source(final)
    kernel = getattr(final, "kernel", None) if source == "dense" else None
    bias = getattr(final, "bias", None) if source == "dense" else None
    sign = 1.0 if covid_index == 1 else -1.0  # only used for one sigmoid unit

    def score(pre_final, output):
        if source == "probabilities":
            p = tf.clip_by_value(output, 1e-7, 1.0 - 1e-7)
            if p.shape[-1] == 1:
                return sign * (tf.math.log(p[:, 0]) - tf.math.log1p(-p[:, 0]))
            p = p[:, covid_index]
            return tf.math.log(p) - tf.math.log1p(-p)
        logits = pre_final
        if kernel is not None:
            logits = tf.matmul(pre_final, tf.convert_to_tensor(kernel))
            if bias is not None:
                logits = logits + tf.convert_to_tensor(bias)
        if logits.shape[-1] == 1:
            return sign * logits[:, 0]
        others = tf.concat([logits[:, :covid_index], logits[:, covid_index + 1:]], axis=1)
        return logits[:, covid_index] - tf.reduce_logsumexp(others, axis=1)

    return score


@dataclass
class GradCam:
    """A traced function that returns (class activation maps, model output) for a batch."""

    target_path: tuple[str, ...]  # layer names from the outer model down to the map
    run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

    @property
    def target_layer(self) -> str:
        return self.target_path[-1]


def build_gradcam(model, covid_index: int, input_size: tuple[int, int]) -> GradCam:
    """The whole model under a gradient tape: ``run(batch) -> (cams, outputs)``."""
    tf = import_tensorflow()
    path = find_target_path(model)
    if not path:
        raise ExplainError("the model has no convolutional feature map")
    try:
        split = split_model(model, path, keras_module_for(model))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ExplainError(f"the model's graph cannot be split at {path[-1].name}: {exc}") \
            from exc
    score = covid_score_function(final_layer(model) if len(path) == 1 else model.layers[-1],
                                 covid_index)
    height, width = input_size

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)],
                 reduce_retracing=True)
    def gradcam(batch):
        with tf.GradientTape() as tape:
            maps, pre_final, output = split(batch, training=False)
            tape.watch(maps)
            value = score(pre_final, output)
        weights = tf.reduce_mean(tape.gradient(value, maps), axis=(1, 2), keepdims=True)
        return tf.nn.relu(tf.reduce_sum(maps * weights, axis=-1)), output

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cams, output = gradcam(tf.convert_to_tensor(batch, dtype=tf.float32))
        return np.asarray(cams), np.asarray(output)

    run(np.zeros((1, height, width, 3), dtype=np.float32))  # trace once, off the request
    return GradCam(tuple(layer.name for layer in path), run)


def build_head_gradcam(model, covid_index: int, input_size: tuple[int, int]
                       ) -> Callable | None:
    """Grad-CAM from a feature map already computed: ``run(maps) -> cams``, or None
    when the head after the map is not a chain of layers that reproduces the model."""
    tf = import_tensorflow()
    path = find_target_path(model)
    if not path:
        return None
    try:
        split = split_model(model, path, keras_module_for(model))
    except (ExplainError, ValueError, TypeError, AttributeError):
        return None
    probe = np.random.default_rng(0).random((1, *input_size, 3), dtype=np.float32)
    maps, _, expected = (np.asarray(t) for t in split(probe, training=False))
    head = build_head(model, path, maps, expected)
    if head is None:
        return None
    score = covid_score_function(head.layers[-1], covid_index)

    @tf.function(input_signature=[tf.TensorSpec([None, *maps.shape[1:]], tf.float32)],
                 reduce_retracing=True)
    def gradcam(features):
        with tf.GradientTape() as tape:
            tape.watch(features)
            pre_final, output = head.run(features)
            value = score(pre_final, output)
        weights = tf.reduce_mean(tape.gradient(value, features), axis=(1, 2), keepdims=True)
        return tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))

    def run(features: np.ndarray) -> np.ndarray:
        return np.asarray(gradcam(tf.convert_to_tensor(features, dtype=tf.float32)))

    run(maps)  # trace once, off the request
    return run


_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def _memoised(model, kind: str, covid_index: int, input_size, build):
    key = (kind, covid_index, tuple(input_size))
    with _cache_lock:
        per_model = _cache.setdefault(model, {})
        if key not in per_model:
            per_model[key] = build(model, covid_index, tuple(input_size))
        return per_model[key]


def gradcam_for(model, covid_index: int, input_size: tuple[int, int]) -> GradCam:
    """The whole-model Grad-CAM of a model, traced once per model object and class."""
    return _memoised(model, "full", covid_index, input_size, build_gradcam)


def head_gradcam_for(model, covid_index: int, input_size: tuple[int, int]):
    """The head-only Grad-CAM of a model (or None), traced once per model and class."""
    return _memoised(model, "head", covid_index, input_size, build_head_gradcam)


def normalise(cam: np.ndarray) -> np.ndarray:
    """Scale a map to 0..1 by its peak (an all-zero map stays zero: no COVID evidence)."""
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(cam.max()) if cam.size else 0.0
    return cam / peak if peak > 0 else np.zeros_like(cam)


def fit_within(pixels: np.ndarray, max_side: int = HEATMAP_MAX_SIDE) -> np.ndarray:
    """Downscale (never upscale) to ``max_side`` on the longer side, keeping the aspect."""
    import cv2

    height, width = pixels.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale >= 1.0:
        return pixels
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def overlay(pixels: np.ndarray, cam: np.ndarray, max_side: int = HEATMAP_MAX_SIDE,
            max_opacity: float = MAX_OPACITY) -> np.ndarray:
    """Blend a 0..1 map over the image, stretched back to the image's own aspect ratio.

    The model saw the image resized to a square, so stretching the map to the image's
    size puts every cell back over the pixels it came from. Opacity follows the map,
    so regions without evidence show the image unchanged. OpenCV's jet palette and
    8-bit blending keep this to a few milliseconds at 512 x 512.
    """
    import cv2

    image = fit_within(pixels, max_side)
    height, width = image.shape[:2]
    cam = np.clip(cv2.resize(normalise(cam), (width, height),
                             interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    level = np.rint(cam * 255.0).astype(np.uint8)
    colours = np.ascontiguousarray(cv2.applyColorMap(level, cv2.COLORMAP_JET)[..., ::-1])
    opacity = (max_opacity * cam).astype(np.float32)
    return cv2.blendLinear(np.ascontiguousarray(image), colours, 1.0 - opacity, opacity)


def png_base64(pixels: np.ndarray) -> str:
    """RGB -> base64 PNG. Sub filter and Huffman-only coding: on scan-like images about
    4x faster to write than Pillow's PNG at level 1 (a heatmap is written per request),
    for about 10 % more bytes."""
    import cv2

    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_SUB,
              cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(pixels[..., ::-1]), params)
    if not ok:  # pragma: no cover - OpenCV writes any 8-bit RGB array
        raise ExplainError("the heatmap could not be encoded")
    return base64.b64encode(encoded.tobytes()).decode("ascii")


def class_activation_map(loaded, decoded: DecodedImage,
                         features: np.ndarray | None = None) -> np.ndarray:
    """The (h', w') Grad-CAM of one image, from ``features`` when the head allows."""
    card = loaded.card
    # The Keras object, even when ONNX Runtime serves predictions (loaded on demand).
    model = loaded.keras_model
    if features is not None:
        head = head_gradcam_for(model, card.covid_index, card.input_size)
        if head is not None:
            return head(features[:1])[0]
    gradcam = gradcam_for(model, card.covid_index, card.input_size)
    batch = model_input(decoded.pixels, card)[None, ...]
    with getattr(loaded, "gate", None) or contextlib.nullcontext():
        cams, _ = gradcam.run(batch)  # as heavy as a forward pass: same concurrency gate
    return cams[0]


def explain_with_map(loaded, decoded: DecodedImage, features: np.ndarray | None = None
                     ) -> tuple[str, np.ndarray, float]:
    """Grad-CAM of one loaded model on one upload: (base64 PNG, the 0..1 map the PNG
    shows, milliseconds); the map is kept for writers that encode values, not colours.

    The time covers what the heatmap adds to the request: the gradient, the overlay
    and the PNG encoding (and, without ``features``, a second forward pass).
    """
    started = time.perf_counter()
    cam = normalise(class_activation_map(loaded, decoded, features))
    heatmap = png_base64(overlay(decoded.pixels, cam))
    return heatmap, cam, round((time.perf_counter() - started) * 1000, 2)


def explain(loaded, decoded: DecodedImage, features: np.ndarray | None = None
            ) -> tuple[str, float]:
    """Grad-CAM of one loaded model on one upload: (base64 PNG, milliseconds)."""
    heatmap, _, elapsed = explain_with_map(loaded, decoded, features)
    return heatmap, elapsed


def map_bytes(cam: np.ndarray) -> bytes:
    """A map as stored: float32 ``.npy`` (shape and type travel with the values)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(cam, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def map_from_bytes(data: bytes) -> np.ndarray:
    """A stored map back as a 2-D float32 array (never unpickles)."""
    cam = np.load(io.BytesIO(data), allow_pickle=False)
    if cam.ndim != 2:
        raise ExplainError("a stored heatmap is not a 2-D map")
    return cam.astype(np.float32, copy=False)
