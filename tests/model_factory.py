"""Real Keras models for the tests, built with ``weights=None`` (no download)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from inference.registry import model_relpath

APPLICATIONS = {
    "vgg16": "VGG16",
    "vgg19": "VGG19",
    "inceptionv3": "InceptionV3",
    "resnet50": "ResNet50",
}


def full_size_model(arch: str, input_size=(224, 224), seed: int = 0):
    """The published shape: ImageNet CNN without its top, Flatten, softmax over 2 classes."""
    import keras

    keras.utils.set_random_seed(seed)
    base = getattr(keras.applications, APPLICATIONS[arch])(
        include_top=False, weights=None, input_shape=(*input_size, 3))
    x = keras.layers.Flatten()(base.output)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    return keras.Model(base.input, outputs, name=f"{arch}_covid")


def tiny_model(input_size=(32, 32), outputs: int = 2, seed: int = 0, keras_module=None):
    """A few-layer CNN: fast to build, load and run. ``outputs=1`` gives a sigmoid head."""
    if keras_module is None:
        import keras as keras_module
    keras_module.utils.set_random_seed(seed)
    layers = keras_module.layers
    inputs = keras_module.Input((*input_size, 3))
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    activation = "softmax" if outputs > 1 else "sigmoid"
    out = layers.Dense(outputs, activation=activation,
                       kernel_initializer="glorot_uniform", bias_initializer="zeros")(x)
    return keras_module.Model(inputs, out)


def constant_model(probability: float, outputs: int = 2, input_size=(32, 32)):
    """A tiny model whose answer ignores the image: the last Dense has a zero kernel and
    a bias chosen so that the last output unit is ``probability`` (softmax or sigmoid)."""
    model = tiny_model(input_size=input_size, outputs=outputs)
    head = model.layers[-1]
    kernel, _ = head.get_weights()
    bias = np.zeros(outputs, dtype=np.float32)
    logit = float(np.log(probability / (1.0 - probability)))
    if outputs == 1:
        bias[0] = logit
    else:  # softmax: the last unit against the others, all of them at zero
        bias[-1] = logit + float(np.log(outputs - 1))
    head.set_weights([np.zeros_like(kernel), bias])
    return model


def install(model, model_dir: Path, arch: str, modality: str, card: dict | None = None) -> Path:
    """Save ``model`` under ``model_dir`` in the published layout, with an optional card."""
    path = Path(model_dir) / model_relpath(arch, modality)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path))
    if card is not None:
        path.with_suffix(".json").write_text(json.dumps(card), encoding="utf-8")
    return path


def png_bytes(array: np.ndarray | None = None, size=(64, 64), mode="RGB", seed=0) -> bytes:
    import io

    from PIL import Image

    if array is None:
        rng = np.random.default_rng(seed)
        array = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def scan_like_png(size=(256, 256), seed=0) -> bytes:
    """A gray image with two dark 'lungs' in a brighter body: passes the sanity checks."""
    rng = np.random.default_rng(seed)
    height, width = size
    y, x = np.mgrid[0:height, 0:width]
    body = ((x - width / 2) / (width * 0.45)) ** 2 + ((y - height / 2) / (height * 0.45)) ** 2 < 1
    image = np.where(body, 170.0, 10.0)
    for centre in (0.32, 0.68):
        lung = (((x - width * centre) / (width * 0.14)) ** 2
                + ((y - height / 2) / (height * 0.3)) ** 2) < 1
        image = np.where(lung, 50.0, image)
    image = np.clip(image + rng.normal(0, 12, size), 0, 255).astype(np.uint8)
    return png_bytes(np.stack([image] * 3, axis=-1))
