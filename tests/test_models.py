"""Model discovery, loading (Keras 3 and Keras 2 files), caching and output reading."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from inference.errors import ModelUnavailable
from inference.cache import ModelCache
from inference.predict import covid_probability
from inference.preprocess import decode_image, model_input
from inference.registry import discover
from inference.cards import ModelCard

from .model_factory import install, png_bytes, tiny_model

CARD_32 = {"input_size": [32, 32]}


def entry_for(model_dir, modality, arch):
    return next(e for e in discover(model_dir) if e.key == (modality, arch))


def test_discovery_is_case_insensitive_and_reads_cards(tmp_path):
    path = tmp_path / "VGG16" / "vgg16_ct_MODEL.H5"
    path.parent.mkdir()
    path.write_bytes(b"placeholder")
    (tmp_path / "VGG16" / "vgg16_ct_MODEL.json").write_text(json.dumps(
        {"classes": ["COVID", "NonCOVID"], "input_size": [64, 48], "threshold": 0.3}))
    entries = discover(tmp_path)
    assert len(entries) == 8  # every slot listed, installed or not
    found = entry_for(tmp_path, "ct", "vgg16")
    assert found.available and found.path == path
    assert found.card.covid_index == 0
    assert found.card.input_size == (64, 48)
    assert found.card.threshold == 0.3
    assert not entry_for(tmp_path, "xray", "vgg16").available


def test_invalid_card_makes_the_model_unavailable_with_reason(tmp_path):
    install(tiny_model(), tmp_path, "vgg16", "ct", {"preprocessing": "magic"})
    entry = entry_for(tmp_path, "ct", "vgg16")
    assert "magic" in entry.card_error
    with pytest.raises(ModelUnavailable, match="VGG16_CT_model.json"):
        ModelCache().get(entry)


def test_missing_model_message_says_where_the_file_goes(tmp_path):
    with pytest.raises(ModelUnavailable, match="vgg19/VGG19_CXR_model.h5"):
        ModelCache().get(entry_for(tmp_path, "xray", "vgg19"))


def test_keras2_file_loads_with_outputs_equal_to_tf_keras(tmp_path):
    """A file written by tf_keras (Keras 2) gives the same numbers through the app."""
    import tf_keras

    model = tiny_model(keras_module=tf_keras, seed=3)
    install(model, tmp_path, "resnet50", "xray", CARD_32)
    loaded = ModelCache().get(entry_for(tmp_path, "xray", "resnet50"))
    batch = model_input(decode_image(png_bytes(seed=5)).pixels, loaded.card)[None]
    expected = model.predict(batch, verbose=0)
    np.testing.assert_allclose(loaded.run_batch(batch), expected, atol=1e-5)


def test_file_only_tf_keras_can_read_falls_back_to_tf_keras(tmp_path):
    import tf_keras

    layers = tf_keras.layers
    inputs = tf_keras.Input((32, 32, 3))
    x = layers.LocallyConnected2D(2, 3)(inputs)  # gone from Keras 3
    x = layers.GlobalAveragePooling2D()(x)
    model = tf_keras.Model(inputs, layers.Dense(2, activation="softmax")(x))
    install(model, tmp_path, "vgg16", "ct", CARD_32)
    loaded = ModelCache().get(entry_for(tmp_path, "ct", "vgg16"))
    assert loaded.loader == "tf_keras"
    batch = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(loaded.run_batch(batch), model.predict(batch, verbose=0),
                               atol=1e-5)


def test_corrupt_file_is_named_and_other_models_keep_working(tmp_path, app):
    model_dir = tmp_path / "models"
    install(tiny_model(), model_dir, "vgg16", "ct", CARD_32)
    bad = model_dir / "vgg19" / "VGG19_CT_model.h5"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 100)
    app.config["MODEL_DIR"] = str(model_dir)
    app.extensions["inference"].model_dir = str(model_dir)
    client = app.test_client()

    def post(model):
        return client.post("/api/v1/predict", data={
            "image": (io.BytesIO(png_bytes()), "scan.png"), "modality": "ct", "model": model})

    broken = post("vgg19")
    assert broken.status_code == 503
    assert "VGG19_CT_model.h5" in broken.get_json()["error"]["message"]
    assert post("vgg16").status_code == 200
    combined = post("all")
    assert combined.status_code == 200
    body = combined.get_json()
    assert [r["architecture"] for r in body["results"]] == ["vgg16"]
    assert any("VGG19" in w for w in body["warnings"])


def test_cache_keeps_at_most_max_loaded_models(tmp_path):
    for arch in ("vgg16", "vgg19", "inceptionv3"):
        install(tiny_model(), tmp_path, arch, "ct", CARD_32)
    cache = ModelCache(max_loaded=2)
    vgg16, vgg19, inception = (entry_for(tmp_path, "ct", a)
                               for a in ("vgg16", "vgg19", "inceptionv3"))
    cache.get(vgg16)
    cache.get(vgg19)
    cache.get(vgg16)  # now vgg19 is the least recently used
    cache.get(inception)
    assert cache.is_loaded(vgg16) and cache.is_loaded(inception)
    assert not cache.is_loaded(vgg19)
    assert len(cache.loaded()) == 2


def test_replaced_file_is_reloaded(tmp_path):
    install(tiny_model(seed=1), tmp_path, "vgg16", "ct", CARD_32)
    cache = ModelCache()
    first = cache.get(entry_for(tmp_path, "ct", "vgg16"))
    install(tiny_model(seed=2), tmp_path, "vgg16", "ct", CARD_32)
    second = cache.get(entry_for(tmp_path, "ct", "vgg16"))
    assert first is not second
    assert len(cache.loaded()) == 1


def test_sigmoid_and_softmax_outputs_are_read_correctly():
    card = ModelCard("vgg16", "ct")
    assert covid_probability(np.array([0.2, 0.8]), card) == pytest.approx(0.8)
    assert covid_probability(np.array([0.7]), card) == pytest.approx(0.7)
    reversed_card = ModelCard("vgg16", "ct", classes=("COVID", "NonCOVID"))
    assert covid_probability(np.array([0.9, 0.1]), reversed_card) == pytest.approx(0.9)


def test_single_sigmoid_unit_is_the_probability_of_classes_1():
    covid_first = ModelCard("vgg16", "ct", classes=("COVID", "NonCOVID"))
    assert covid_probability(np.array([0.3]), covid_first) == pytest.approx(0.7)
    assert covid_probability(np.array([0.3]), ModelCard("vgg16", "ct")) == pytest.approx(0.3)


def test_output_that_does_not_fit_the_card_is_refused():
    three = ModelCard("vgg16", "ct", classes=("NonCOVID", "COVID", "Pneumonia"))
    with pytest.raises(ValueError, match="3 classes"):
        covid_probability(np.array([0.2, 0.8]), three)
    with pytest.raises(ValueError, match="gives 3 outputs"):
        covid_probability(np.array([0.1, 0.2, 0.7]), ModelCard("vgg16", "ct"))


def test_sigmoid_model_end_to_end(tmp_path):
    model = tiny_model(outputs=1, seed=4)
    install(model, tmp_path, "vgg19", "xray", CARD_32)
    loaded = ModelCache().get(entry_for(tmp_path, "xray", "vgg19"))
    batch = model_input(decode_image(png_bytes(seed=9)).pixels, loaded.card)[None]
    expected = float(model.predict(batch, verbose=0)[0, 0])
    assert covid_probability(loaded.run_batch(batch)[0], loaded.card) == pytest.approx(
        expected, abs=1e-5)
