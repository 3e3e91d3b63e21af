"""An ImageNet CNN from ``keras.applications`` with a new two-class head.

The base's layers stay in the top-level model (no nested sub-model), so Grad-CAM can
reach its last convolution, and the phases can freeze and thaw them by position.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .datasets import CLASSES

HEAD_PREFIX = "head_"


@dataclass(frozen=True)
class BaseSpec:
    application: str  # name in keras.applications
    fine_tune_after: str  # last layer kept frozen when the top blocks are fine-tuned
    min_input: int  # smallest input side the application accepts


BASES = {
    "vgg16": BaseSpec("VGG16", "block4_pool", 32),
    "vgg19": BaseSpec("VGG19", "block4_pool", 32),
    # The top two inception blocks, as in the Keras fine-tuning guide.
    "inceptionv3": BaseSpec("InceptionV3", "mixed8", 75),
    "resnet50": BaseSpec("ResNet50", "conv4_block6_out", 32),
}

# (input_shape, weights) -> (base model, name of the last layer kept frozen)
BaseBuilder = Callable[[tuple, object], tuple[object, str]]


def weights_argument(weights: str):
    """``imagenet`` / ``none`` / a local weights file -> what keras.applications takes."""
    value = (weights or "none").strip()
    if value.lower() == "imagenet":
        return "imagenet"
    if value.lower() == "none":
        return None
    if not Path(value).is_file():
        raise FileNotFoundError(
            f"Weights file {value} not found: pass imagenet, none or the path of a "
            f"weights file for the base without its top (e.g. *_notop.h5).")
    return value


def application_base(arch: str) -> BaseBuilder:
    """A builder for the architecture's keras.applications network without its top."""
    spec = BASES[arch]

    def build(input_shape, weights):
        import keras

        if min(input_shape[:2]) < spec.min_input:
            raise ValueError(f"{spec.application} needs inputs of at least "
                             f"{spec.min_input} x {spec.min_input} pixels.")
        application = getattr(keras.applications, spec.application)
        base = application(include_top=False, weights=weights, input_shape=input_shape)
        return base, spec.fine_tune_after

    return build


def build_model(arch: str, input_size: tuple[int, int], weights: str = "none",
                base_builder: BaseBuilder | None = None, dropout: float = 0.5,
                hidden_units: int = 128):
    """Base + pooling + small dense head + softmax over ``[NonCOVID, COVID]``.

    Returns ``(model, fine_tune_after)``.
    """
    import keras

    builder = base_builder or application_base(arch)
    base, fine_tune_after = builder((*input_size, 3), weights_argument(weights))
    layers = keras.layers
    x = layers.GlobalAveragePooling2D(name=f"{HEAD_PREFIX}pool")(base.output)
    x = layers.Dense(hidden_units, activation="relu", name=f"{HEAD_PREFIX}dense")(x)
    x = layers.Dropout(dropout, name=f"{HEAD_PREFIX}dropout")(x)
    outputs = layers.Dense(len(CLASSES), activation="softmax", name=f"{HEAD_PREFIX}output")(x)
    return keras.Model(base.inputs, outputs, name=f"{arch}_covid"), fine_tune_after


def is_head(layer) -> bool:
    return layer.name.startswith(HEAD_PREFIX)


def freeze_base(model) -> None:
    """Phase 1: only the new head learns, so its random start cannot wreck the base."""
    for layer in model.layers:
        layer.trainable = is_head(layer)


def unfreeze_top(model, fine_tune_after: str | None) -> None:
    """Phase 2: thaw the layers after ``fine_tune_after`` (all when None).

    Batch normalisation stays frozen, in inference mode: updating its statistics on
    small batches of a new domain undoes what the pretrained base learnt.
    """
    import keras

    names = [layer.name for layer in model.layers]
    start = names.index(fine_tune_after) + 1 if fine_tune_after else 0
    for position, layer in enumerate(model.layers):
        thaw = position >= start and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = thaw or is_head(layer)


def trainable_layer_count(model) -> int:
    return sum(1 for layer in model.layers if layer.trainable and layer.weights)
