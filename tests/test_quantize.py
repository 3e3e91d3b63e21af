"""INT8: ``python -m training train`` quantizes on its validation split, ``flask models
quantize MODALITY ARCH --data DIR`` on the user's images; both judge the graph on images
its calibration did not see, write the figures into the card, publish the graph only
when labels agree, and a model that quantizes badly is refused with its figures. Run on
a model the training tool trained on the synthetic data, so the labels mean something."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from app import create_app
from inference import candidates as measuring
from inference.openvino_runner import int8_path_for, supported_precisions
from inference.preparation import convert_entry
from inference.quantize import split_for_calibration

from .backend_helpers import entry_for
from .conftest import testing_config
from .model_factory import install
from .training_data import train_in_fresh_process, write_images

pytest.importorskip("nncf")
pytestmark = pytest.mark.skipif("int8" not in supported_precisions(),
                                reason="OpenVINO reports no INT8 on this CPU")

CARD = "vgg16/VGG16_CT_model.json"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small CNN the training tool trained on synthetic scans, INT8 made at the end."""
    root = tmp_path_factory.mktemp("quantized")
    write_images(root / "data" / "COVID", 100, True, seed=1)
    write_images(root / "data" / "non-COVID", 100, False, seed=2)
    train_in_fresh_process(
        ["train", "--data", str(root / "data"), "--modality", "ct", "--arch", "vgg16",
         "--weights", "none", "--input-size", "32", "--batch-size", "16", "--epochs", "24",
         "--head-epochs", "2", "--learning-rate", "3e-3", "--fine-tune-learning-rate",
         "3e-3", "--fine-tune", "all", "--patience", "8", "--val-fraction", "0.3",
         "--deterministic", "--output", str(root / "models"), "--verbose", "0"])
    return root


def card_of(models) -> dict:
    return json.loads((models / CARD).read_text(encoding="utf-8"))


def quantize_cli(models, tmp_path, data, *options):
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(models)))
    return app, app.test_cli_runner().invoke(
        args=["models", "quantize", "ct", "vgg16", "--data", str(data), *options])


def test_training_makes_an_int8_graph_judged_on_its_validation_split(trained):
    report = card_of(trained / "models")["quantization"]["int8"]
    assert report["accepted"] is True
    assert report["label_agreement"] >= 0.98 and report["held_out_images"] >= 5
    assert report["calibration_images"] + report["held_out_images"] == 61  # 30 % of 200
    assert report["accuracy_int8"] >= report["accuracy_fp32"] - 0.05
    assert 0 <= report["max_probability_difference"] < 0.5
    (conversion,) = (trained / "models").rglob("*.v2.onnx")
    assert int8_path_for(conversion).is_file() and report["conversion"] == conversion.name


def test_flask_models_quantize_on_the_users_images_then_auto_measures_int8(trained,
                                                                          tmp_path):
    models = tmp_path / "models"
    shutil.copytree(trained / "models", models)
    for made in models.rglob("*.int8.*"):
        made.unlink()
    app, result = quantize_cli(models, tmp_path, trained / "data")
    assert result.exit_code == 0, result.output
    assert "INT8 accepted: labels agree on" in result.output
    report = card_of(models)["quantization"]["int8"]
    assert report["calibration_images"] == 140 and report["held_out_images"] == 60
    assert report["accepted"] and report["label_agreement"] >= 0.98
    (conversion,) = models.rglob("*.v2.onnx")
    record = measuring.measure(conversion, entry_for(models).card, rounds=3)
    int8 = next(r for r in record["candidates"] if r["name"] == "openvino-int8")
    assert int8["ms"] > 0 and "label_flips" in int8


def outlier_channel_model(data_dir):
    """A model INT8 cannot represent: its decision rests on a small signal (mean
    brightness) that shares one activation tensor with a constant channel of 1000, so
    the tensor's 256 INT8 steps are about 4 wide and the signal rounds away."""
    import keras

    from inference.preprocess import decode_image, model_input
    from inference.cards import ModelCard

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(2, 1, name="signal_and_outlier")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.layers[1].set_weights([np.array([[[[1 / 3, 0.0]] * 3]], np.float32).reshape(1, 1, 3, 2),
                                 np.array([0.0, 1000.0], np.float32)])
    card = ModelCard("vgg16", "ct", input_size=(32, 32))
    brightness = [float(model_input(decode_image(p.read_bytes()).pixels, card).mean())
                  for p in sorted(data_dir.rglob("*.png"))]
    gain = 400.0
    model.layers[-1].set_weights([np.array([[-gain, gain], [0.0, 0.0]], np.float32),
                                  np.array([gain * np.median(brightness),
                                            -gain * np.median(brightness)], np.float32)])
    return model


def test_a_model_that_quantizes_badly_is_refused_with_its_figures(trained, tmp_path):
    models = tmp_path / "models"
    install(outlier_channel_model(trained / "data"), models, "vgg16", "ct",
            {"input_size": [32, 32]})
    app, result = quantize_cli(models, tmp_path, trained / "data")
    assert result.exit_code != 0
    assert "INT8 refused: labels agree on" in result.output
    report = card_of(models)["quantization"]["int8"]
    assert report["accepted"] is False and report["label_agreement"] < 0.98
    assert report["held_out_images"] == 60
    assert not list(models.rglob("*.int8.xml")) and not list(models.rglob("*.int8.bin"))
    convert_entry(entry_for(models))  # the fp32 conversion stands, and serves
    assert list(models.rglob("*.v2.onnx"))


def test_too_few_images_or_no_dataset_is_a_clear_error(trained, tmp_path):
    with pytest.raises(Exception, match="too few"):
        split_for_calibration(9)
    calibrate, hold = split_for_calibration(20, seed=1)
    assert len(hold) == 6 and len(calibrate) == 14 and not set(calibrate) & set(hold)
    models = tmp_path / "models"
    shutil.copytree(trained / "models", models)
    _, result = quantize_cli(models, tmp_path, tmp_path / "missing")
    assert result.exit_code != 0 and "is not a folder" in result.output
    _, result = quantize_cli(models, tmp_path, trained / "data", "--limit-per-class", "4")
    assert result.exit_code != 0 and "too few" in result.output
    _, result = quantize_cli(models, tmp_path, trained / "data", "--min-agreement", "2")
    assert result.exit_code != 0
