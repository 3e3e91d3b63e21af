"""What the ``flask models install`` and ``remove`` tests share: tiny saved Keras models
(``files``: one per architecture's layer names, one with three outputs, one of about
1 MiB), a Keras-only app, and small readers of the model folder and its cards."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from app import create_app

from .conftest import testing_config
from .model_factory import tiny_model

LAYER_NAMES = {  # block names keras.applications gives each network
    "vgg16": ("block5_conv3",),
    "vgg19": ("block5_conv3", "block5_conv4"),
    "inceptionv3": ("mixed9", "mixed10"),
    "resnet50": ("conv4_block6_out", "conv5_block3_out"),
}


def named_model(names, outputs: int = 2, nested: bool = False):
    """A tiny CNN whose convolutions carry ``names``; optionally inside a base model."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = inputs
    for name in names:
        x = keras.layers.Conv2D(2, 3, padding="same", name=name)(x)
    if nested:
        base = keras.Model(inputs, x, name="base")
        inputs = keras.Input((32, 32, 3))
        x = base(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(outputs, activation="softmax")(x)
    return keras.Model(inputs, out)


def big_model():
    """About 1 MiB of weights: a download of it spans many chunks."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.Dense(2, activation="softmax")(
        keras.layers.Dense(64)(keras.layers.Flatten()(x)))
    return keras.Model(inputs, x)


@pytest.fixture(scope="module", name="files")
def files_fixture(tmp_path_factory) -> dict[str, Path]:
    """Saved models: ``two`` (2 classes), ``three`` (3 outputs), one per architecture's
    layer names, and an InceptionV3-like one nested in a base model."""
    root = tmp_path_factory.mktemp("sources")
    models = {"two": tiny_model(), "three": tiny_model(outputs=3, seed=1),
              "other": tiny_model(seed=2), "big": big_model(),
              "nested-inceptionv3": named_model(LAYER_NAMES["inceptionv3"], nested=True)}
    models.update({arch: named_model(names) for arch, names in LAYER_NAMES.items()})
    paths = {}
    for key, model in models.items():
        paths[key] = root / f"{key}.h5"
        model.save(str(paths[key]))
    return paths


@pytest.fixture(name="app")
def app_fixture(tmp_path, instance_path):
    return create_app(testing_config(tmp_path, INFERENCE_BACKEND="keras"))


def run(app, *args):
    return app.test_cli_runner().invoke(args=["models", *args])


def model_dir(app) -> Path:
    return Path(app.config["MODEL_DIR"])


def tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def card(app, relpath: str) -> dict:
    path = model_dir(app) / relpath
    return json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))


def assert_nothing_written(app):
    folder = model_dir(app)
    assert not folder.exists() or tree(folder) == []
    assert not (Path(app.instance_path) / "downloads").exists()
