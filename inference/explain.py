"""Grad-CAM heatmaps: where in the image a model found evidence for COVID.

``explain(loaded, decoded)`` is the one call the service makes. It finds the model's
last convolutional feature map on its own (VGG16 ``block5_conv3``, VGG19
``block5_conv4``, ResNet50 ``conv5_block3_out``, InceptionV3 ``mixed10``, or whatever
comes last in another network), whether the base network sits flat in the model's
graph or nested as a sub-model, in Keras 3 and in tf_keras models alike. It then
computes Grad-CAM (Selvaraju et al., 2017) for the COVID class and returns the map
overlaid on the upload, at the upload's aspect ratio, as a base64 PNG.

The class score is the COVID log-odds computed from the last layer's logits, not the
softmax probability: a saturated softmax (p = 1.0 in float32) has zero gradient and
would give an empty map.
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

from .preprocess import DecodedImage, prepare

HEATMAP_MAX_SIDE = 512  # pixels on the longer side of the returned PNG
COLORMAP = "jet"  # the usual Grad-CAM palette: blue = no evidence, red = strongest
MAX_OPACITY = 0.55  # overlay opacity where the map peaks; it fades to 0 where it is 0

# Layers whose 4-D output is only a reshaping, a regulariser or a pooling of the
# feature map before them: Grad-CAM on the map they take in has more detail.
_NOT_FEATURE_MAPS = (
    "InputLayer", "MaxPooling2D", "AveragePooling2D", "MaxPool2D", "AvgPool2D",
    "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "ZeroPadding2D",
    "Cropping2D", "Reshape", "Resizing", "Rescaling", "Normalization", "Permute",
    "UpSampling2D", "ActivityRegularization",
)


class ExplainError(Exception):
    """The model has no feature map Grad-CAM can use, or its graph cannot be split."""


@dataclass
class GradCam:
    """A traced function that returns (class activation maps, model output) for a batch."""

    target_path: tuple[str, ...]  # layer names from the outer model down to the map
    run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

    @property
    def target_layer(self) -> str:
        return self.target_path[-1]


def _rank(tensor) -> int | None:
    shape = getattr(tensor, "shape", None)
    try:
        return len(shape) if shape is not None else None
    except TypeError:  # unknown rank
        return None


def _output_of(layer):
    try:
        return layer.output
    except (AttributeError, ValueError, RuntimeError):  # shared layer or never called
        return None


def _is_model(layer) -> bool:
    return hasattr(layer, "layers") and hasattr(layer, "inputs") and \
        type(layer).__name__ != "InputLayer"


def find_target_path(model) -> list:
    """The layers from ``model`` down to its last spatial feature map (outermost first).

    Walks the layers backwards and descends into nested models, so a base network that
    was added as one layer (``Sequential([VGG16(...), Flatten(), Dense(2)])``) works
    like one whose layers sit in the outer graph.
    """
    for layer in reversed(model.layers):
        if _is_model(layer):
            inner = find_target_path(layer)
            if inner:
                return [layer] + inner
            continue
        if type(layer).__name__ in _NOT_FEATURE_MAPS:
            continue
        if _rank(_output_of(layer)) == 4:
            return [layer]
    return []


def _keras_module_for(model):
    """tf_keras models need tf_keras to build new graphs from their tensors."""
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras

        return tf_keras
    import keras

    return keras


def _final_layer(model):
    """The layer that produces the model's (first) output, when it is a direct child."""
    output = model.outputs[0]
    last = model.layers[-1]
    return last if _output_of(last) is output else None


def _logit_source(final_layer) -> str:
    """How to recover logits from the input of the last layer."""
    if final_layer is None:
        return "probabilities"
    kind = type(final_layer).__name__
    activation = getattr(getattr(final_layer, "activation", None), "__name__", "")
    if kind == "Dense" and activation in ("softmax", "sigmoid", "linear"):
        return "dense"
    if kind in ("Activation", "Softmax") and activation in ("softmax", "sigmoid", ""):
        return "identity"
    return "probabilities"


def _split_model(model, path: list, keras_module):
    """A model ``input -> [feature map, input of the last layer, output]``.

    Flat graphs are split with their own tensors. A nested base is split inside, then
    the outer model's layers are called again in order on a fresh input, which holds
    for sequential stacks (the shape of every published head).
    """
    final = _final_layer(model)
    if len(path) == 1:
        pre_final = final.input if final is not None else model.outputs[0]
        return keras_module.Model(model.inputs, [path[0].output, pre_final, model.outputs[0]])
    nested = path[0]
    nested_split = _split_model(nested, path[1:], keras_module)
    inputs = keras_module.Input(tuple(model.inputs[0].shape[1:]))
    x = pre_final = inputs
    maps = None
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        pre_final = x
        if layer is nested:
            maps, _, x = nested_split(x)
        else:
            x = layer(x)
    if maps is None:
        raise ExplainError("the model's feature map is not on its main path")
    return keras_module.Model(inputs, [maps, pre_final, x])


def build_gradcam(model, covid_index: int, input_size: tuple[int, int]) -> GradCam:
    """Find the feature map, split the model there and trace Grad-CAM for one class."""
    from .loader import import_tensorflow

    tf = import_tensorflow()
    path = find_target_path(model)
    if not path:
        raise ExplainError("the model has no convolutional feature map")
    keras_module = _keras_module_for(model)
    try:
        split = _split_model(model, path, keras_module)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ExplainError(f"the model's graph cannot be split at {path[-1].name}: {exc}") \
            from exc
    final = _final_layer(model) if len(path) == 1 else model.layers[-1]
    source = _logit_source(final)
    kernel = getattr(final, "kernel", None) if source == "dense" else None
    bias = getattr(final, "bias", None) if source == "dense" else None
    height, width = input_size

    def covid_score(pre_final, output):
        """COVID log-odds: the logit of a sigmoid, z_covid - logsumexp(others) for softmax."""
        if source == "probabilities":
            probabilities = tf.clip_by_value(output, 1e-7, 1.0 - 1e-7)
            if probabilities.shape[-1] == 1:
                p = probabilities[:, 0]
            else:
                p = probabilities[:, covid_index]
            return tf.math.log(p) - tf.math.log1p(-p)
        logits = pre_final
        if kernel is not None:
            logits = tf.matmul(pre_final, tf.convert_to_tensor(kernel))
            if bias is not None:
                logits = logits + tf.convert_to_tensor(bias)
        if logits.shape[-1] == 1:
            return logits[:, 0]
        others = tf.concat([logits[:, :covid_index], logits[:, covid_index + 1:]], axis=1)
        return logits[:, covid_index] - tf.reduce_logsumexp(others, axis=1)

    @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)],
                 reduce_retracing=True)
    def gradcam(batch):
        with tf.GradientTape() as tape:
            maps, pre_final, output = split(batch, training=False)
            tape.watch(maps)
            score = covid_score(pre_final, output)
        gradients = tape.gradient(score, maps)
        channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cams = tf.nn.relu(tf.reduce_sum(maps * channel_weights, axis=-1))
        return cams, output

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cams, output = gradcam(tf.convert_to_tensor(batch, dtype=tf.float32))
        return np.asarray(cams), np.asarray(output)

    run(np.zeros((1, height, width, 3), dtype=np.float32))  # trace once, off the request
    return GradCam(tuple(layer.name for layer in path), run)


_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def gradcam_for(model, covid_index: int, input_size: tuple[int, int]) -> GradCam:
    """The traced Grad-CAM of a model, built once per model object and class."""
    key = (covid_index, tuple(input_size))
    with _cache_lock:
        per_model = _cache.setdefault(model, {})
        if key not in per_model:
            per_model[key] = build_gradcam(model, covid_index, input_size)
        return per_model[key]


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
            colormap: str = COLORMAP, max_opacity: float = MAX_OPACITY) -> np.ndarray:
    """Blend a 0..1 map over the image, stretched back to the image's own aspect ratio.

    The model saw the image resized to a square, so stretching the map to the image's
    size puts every cell back over the pixels it came from. Opacity follows the map,
    so regions without evidence show the image unchanged.
    """
    import cv2
    import matplotlib

    image = fit_within(pixels, max_side).astype(np.float32)
    height, width = image.shape[:2]
    cam = np.clip(cv2.resize(normalise(cam), (width, height),
                             interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    colours = matplotlib.colormaps[colormap](cam)[..., :3].astype(np.float32) * 255.0
    opacity = (max_opacity * cam)[..., None]
    blended = image * (1.0 - opacity) + colours * opacity
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def png_base64(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def explain(loaded, decoded: DecodedImage) -> tuple[str, float]:
    """Grad-CAM of one loaded model on one upload: (base64 PNG, milliseconds).

    The time covers preprocessing, the forward and backward pass, the overlay and the
    PNG encoding: the whole extra cost of a heatmap on a request.
    """
    card = loaded.card
    started = time.perf_counter()
    # The Keras object, even when another backend serves predictions (loaded on demand).
    gradcam = gradcam_for(loaded.keras_model, card.covid_index, tuple(card.input_size))
    batch = prepare(decoded.pixels, card)[None, ...]
    with getattr(loaded, "gate", None) or contextlib.nullcontext():
        cams, _ = gradcam.run(batch)  # as heavy as a forward pass: same concurrency gate
    heatmap = png_base64(overlay(decoded.pixels, cams[0]))
    return heatmap, round((time.perf_counter() - started) * 1000, 2)
