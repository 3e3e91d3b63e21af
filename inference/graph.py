"""Where a Keras model's last feature map is, and the model split around it.

The served graph returns the model's output and its last convolutional feature map
together, so a heatmap needs no second pass through the convolutional base: Grad-CAM
then only differentiates the head (the layers after the map), which costs a fraction
of a forward pass. This module finds that map on its own (VGG16 ``block5_conv3``,
VGG19 ``block5_conv4``, ResNet50 ``conv5_block3_out``, InceptionV3 ``mixed10``, or
whatever comes last in another network), whether the base network sits flat in the
model's graph or nested as a sub-model, in Keras 3 and tf_keras models alike.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

# Split models are called with a bare tensor whether Keras recorded their input as a
# tensor or a one-element list; both work, and Keras 3 warns about the difference.
warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match",
                        category=UserWarning)

# Layers whose 4-D output is only a reshaping, a regulariser or a pooling of the
# feature map before them: Grad-CAM on the map they take in has more detail.
_NOT_FEATURE_MAPS = (
    "InputLayer", "MaxPooling2D", "AveragePooling2D", "MaxPool2D", "AvgPool2D",
    "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "ZeroPadding2D",
    "Cropping2D", "Reshape", "Resizing", "Rescaling", "Normalization", "Permute",
    "UpSampling2D", "ActivityRegularization",
)
HEAD_TOLERANCE = 1e-4  # the head on the map must reproduce the model's output


class ExplainError(Exception):
    """The model has no feature map Grad-CAM can use, or its graph cannot be split."""


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


def keras_module_for(model):
    """tf_keras models need tf_keras to build new graphs from their tensors."""
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras

        return tf_keras
    import keras

    return keras


def final_layer(model):
    """The layer that produces the model's (first) output, when it is a direct child."""
    output = model.outputs[0]
    last = model.layers[-1]
    return last if _output_of(last) is output else None


def split_model(model, path: list, keras_module):
    """A model ``input -> [feature map, input of the last layer, output]``.

    Flat graphs are split with their own tensors. A nested base is split inside, then
    the outer model's layers are called again in order on a fresh input, which holds
    for sequential stacks (the shape of every published head).
    """
    final = final_layer(model)
    if len(path) == 1:
        pre_final = final.input if final is not None else model.outputs[0]
        return keras_module.Model(model.inputs, [path[0].output, pre_final, model.outputs[0]])
    nested = path[0]
    nested_split = split_model(nested, path[1:], keras_module)
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


def split_for_serving(model):
    """``(split model, target path)``, or ``(None, [])`` when there is no feature map."""
    path = find_target_path(model)
    if not path:
        return None, []
    try:
        return split_model(model, path, keras_module_for(model)), path
    except (ExplainError, ValueError, TypeError, AttributeError):
        return None, []


@dataclass
class Head:
    """The layers after the feature map: ``run(maps) -> (input of last layer, output)``."""

    layers: list
    run: Callable


def _layers_after(model, path: list) -> list:
    """Layers after the map at each level of nesting, innermost first."""
    levels = []
    container = model
    for layer in path:
        names = [item for item in container.layers if type(item).__name__ != "InputLayer"]
        levels.append(names[names.index(layer) + 1:])
        container = layer
    return [layer for level in reversed(levels) for layer in level]


def build_head(model, path: list, maps: np.ndarray, expected: np.ndarray) -> Head | None:
    """The head as a chain of layers, kept only if it reproduces ``expected`` from
    ``maps`` (a head with branches is not a chain: Grad-CAM then runs the whole model).
    """
    layers = _layers_after(model, path)
    if not layers:
        return None

    def run(features):
        x = pre_final = features
        for layer in layers:
            pre_final = x
            x = layer(x, training=False)
        return pre_final, x

    try:
        _, output = run(maps)
        output = np.asarray(output)
    except (ValueError, TypeError, AttributeError):
        return None
    if output.shape != expected.shape or not \
            float(np.max(np.abs(output - expected))) <= HEAD_TOLERANCE:
        return None
    return Head(layers, run)
