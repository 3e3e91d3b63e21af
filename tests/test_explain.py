"""Grad-CAM: the heatmap points where the model looks, on every architecture and layout."""

from __future__ import annotations

import base64
import io
import types

import numpy as np
import pytest
from PIL import Image

from inference.explain import (ExplainError, build_gradcam, explain, find_target_path,
                               overlay)
from inference.image import DecodedImage
from inference.cards import ModelCard

from .conftest import testing_config
from .model_factory import APPLICATIONS, install, png_bytes

SIDE = 16  # the region model's input: 16 x 16, four 8 x 8 quadrants
QUADRANTS = {"top_left": (0, 0), "top_right": (0, 1), "bottom_left": (1, 0),
             "bottom_right": (1, 1)}
REGION = "bottom_left"  # the only part of the image the region model's COVID output reads


def keras_module(name: str):
    if name == "tf_keras":
        import tf_keras

        return tf_keras
    import keras

    return keras


def quadrant_routing_kernel() -> np.ndarray:
    """Dense kernel that copies each pixel's grey value into the channel of its quadrant.

    After ``Reshape((16, 16, 4))`` channel k holds the image inside quadrant k and zero
    elsewhere: the feature map has activity everywhere, but each channel in one place.
    """
    kernel = np.zeros((SIDE, SIDE, 3, SIDE, SIDE, 4), dtype=np.float32)
    for k, (qr, qc) in enumerate(QUADRANTS.values()):
        rows = range(qr * SIDE // 2, (qr + 1) * SIDE // 2)
        cols = range(qc * SIDE // 2, (qc + 1) * SIDE // 2)
        for r in rows:
            for c in cols:
                kernel[r, c, :, r, c, k] = 1.0 / 3.0
    return kernel.reshape(SIDE * SIDE * 3, SIDE * SIDE * 4)


def region_model(module: str = "keras", outputs: int = 2, nested: bool = False,
                 gain: float = 4.0):
    """A CNN whose COVID output depends on the bottom-left quadrant only, by hand.

    Flatten -> Dense (quadrant routing) -> Reshape -> 1x1 Conv2D "features" (identity,
    the last feature map) -> global average pooling -> Dense whose COVID weight reads
    only the bottom-left channel. Standard layers only, so it saves and loads as .h5.
    """
    km = keras_module(module)
    layers = km.layers
    inputs = km.Input((SIDE, SIDE, 3))
    routed = layers.Dense(SIDE * SIDE * 4, use_bias=False, name="route")(layers.Flatten()(inputs))
    features = layers.Conv2D(4, 1, activation="relu", name="features")(
        layers.Reshape((SIDE, SIDE, 4))(routed))
    if nested:
        base = km.Model(inputs, features, name="base")
        model = km.Sequential([km.Input((SIDE, SIDE, 3)), base,
                               layers.GlobalAveragePooling2D(),
                               layers.Dense(outputs, activation="softmax" if outputs > 1
                                            else "sigmoid", name="head")])
    else:
        pooled = layers.GlobalAveragePooling2D()(features)
        out = layers.Dense(outputs, activation="softmax" if outputs > 1 else "sigmoid",
                           name="head")(pooled)
        model = km.Model(inputs, out)
    region_channel = list(QUADRANTS).index(REGION)
    head_kernel = np.zeros((4, outputs), dtype=np.float32)
    head_kernel[region_channel, -1] = gain  # COVID is the last output (or the only one)
    head_bias = np.full((outputs,), -gain / 4 if outputs == 1 else 0.0, dtype=np.float32)
    for layer in _all_layers(model):
        if layer.name == "route":
            layer.set_weights([quadrant_routing_kernel()])
        elif layer.name == "features":
            layer.set_weights([np.eye(4, dtype=np.float32).reshape(1, 1, 4, 4),
                               np.zeros(4, np.float32)])
        elif layer.name == "head":
            layer.set_weights([head_kernel, head_bias])
    return model


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def distracting_image(size=(SIDE, SIDE), seed: int = 0) -> np.ndarray:
    """Texture everywhere, and the brightest patch in the top-right quadrant."""
    rng = np.random.default_rng(seed)
    height, width = size
    image = rng.uniform(0.2, 0.6, (height, width, 3)).astype(np.float32)
    image[: height // 2, width // 2:] = 1.0
    return image


def quadrant_of(cam: np.ndarray) -> str:
    row, col = np.unravel_index(int(np.argmax(cam)), cam.shape)
    half_r, half_c = cam.shape[0] / 2, cam.shape[1] / 2
    return next(name for name, (qr, qc) in QUADRANTS.items()
                if (row >= half_r) == bool(qr) and (col >= half_c) == bool(qc))


# --- the region test -----------------------------------------------------------------

def test_region_model_reads_only_its_region():
    model = region_model()
    image = distracting_image()[None]
    changed = image.copy()
    changed[0, :, SIDE // 2:] = 0.0  # the whole right half
    changed[0, : SIDE // 2, :] = 0.0  # and the whole top half
    before, after = model(image).numpy(), model(changed).numpy()
    np.testing.assert_allclose(before, after, atol=1e-6)
    brighter = image.copy()
    brighter[0, SIDE // 2:, : SIDE // 2] += 0.4  # inside the region
    assert model(brighter).numpy()[0, 1] > before[0, 1]


@pytest.mark.parametrize("module, outputs, nested, gain", [
    ("keras", 2, False, 4.0),
    ("keras", 1, False, 4.0),
    ("keras", 2, True, 4.0),
    ("keras", 2, False, 500.0),  # softmax saturated to exactly 1.0 in float32
    ("tf_keras", 2, False, 4.0),
    ("tf_keras", 2, True, 4.0),
    ("tf_keras", 1, True, 4.0),
], ids=["softmax", "sigmoid", "nested", "saturated", "tf_keras", "tf_keras-nested",
        "tf_keras-nested-sigmoid"])
def test_heatmap_peaks_in_the_region_the_model_reads(module, outputs, nested, gain):
    model = region_model(module, outputs, nested, gain)
    gradcam = build_gradcam(model, covid_index=1, input_size=(SIDE, SIDE))
    assert gradcam.target_layer == "features"
    assert gradcam.target_path == (("base", "features") if nested else ("features",))
    for seed in range(3):
        cams, output = gradcam.run(distracting_image(seed=seed)[None])
        np.testing.assert_allclose(output, model(distracting_image(seed=seed)[None]),
                                   atol=1e-6)
        assert quadrant_of(cams[0]) == REGION
        outside = cams[0].copy()
        outside[SIDE // 2:, : SIDE // 2] = 0
        assert outside.max() == 0.0  # nothing outside the region gets any heat


def test_region_heatmap_through_the_api(tmp_path):
    """The saved model, loaded by the service, explained on a non-square upload."""
    from app import create_app

    install(region_model(), tmp_path / "models", "vgg16", "ct", {"input_size": [SIDE, SIDE]})
    client = create_app(testing_config(tmp_path)).test_client()
    upload = (distracting_image((160, 240)) * 255).astype(np.uint8)
    response = client.post("/api/v1/predict", data={
        "image": (io.BytesIO(png_bytes(upload)), "scan.png"), "modality": "ct",
        "model": "vgg16", "explain": "1"}, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data(as_text=True)
    (result,) = response.get_json()["results"]
    assert result["explain_ms"] > 0
    heatmap = np.asarray(Image.open(io.BytesIO(base64.b64decode(result["heatmap_png"]))))
    assert heatmap.shape == (160, 240, 3)  # the upload's size and aspect ratio
    heat = np.abs(heatmap.astype(int) - upload.astype(int)).sum(axis=2)
    assert quadrant_of(heat) == REGION
    # Other quadrants untouched, beyond the half-cell the bilinear upscaling blends in.
    assert heat[:70].max() == 0 and heat[:, 135:].max() == 0
    assert heat[90:, :105].min() > 0


# --- every architecture, flat and nested ----------------------------------------------

EXPECTED_TARGET = {"vgg16": "block5_conv3", "vgg19": "block5_conv4",
                   "inceptionv3": "mixed10", "resnet50": "conv5_block3_out"}


def loaded_stand_in(model, arch: str, input_size):
    """What the service hands to ``explain``: the model and its card (and a gate)."""
    return types.SimpleNamespace(
        keras_model=model, gate=None,
        card=ModelCard(arch, "ct", input_size=tuple(input_size)),
        entry=types.SimpleNamespace(display_name=APPLICATIONS[arch]))


@pytest.mark.parametrize("arch", sorted(APPLICATIONS))
def test_full_size_architectures(arch, full_size_models):
    size = (160, 160) if arch == "inceptionv3" else (128, 128)
    model = full_size_models(arch, input_size=size)
    assert find_target_path(model)[-1].name == EXPECTED_TARGET[arch]
    upload = (distracting_image((200, 300)) * 255).astype(np.uint8)
    heatmap_png, elapsed_ms = explain(loaded_stand_in(model, arch, size),
                                      DecodedImage(upload, "PNG"))
    heatmap = Image.open(io.BytesIO(base64.b64decode(heatmap_png)))
    assert heatmap.format == "PNG" and heatmap.size == (300, 200)
    assert elapsed_ms > 0


@pytest.mark.parametrize("module", ["keras", "tf_keras"])
def test_nested_base_network(module):
    """``Sequential([ResNet50(include_top=False), pooling, Dense])``, as often published."""
    km = keras_module(module)
    km.utils.set_random_seed(0)
    base = km.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    model = km.Sequential([base, km.layers.GlobalAveragePooling2D(),
                           km.layers.Dropout(0.3), km.layers.Dense(2, activation="softmax")])
    model.build((None, 64, 64, 3))
    gradcam = build_gradcam(model, covid_index=1, input_size=(64, 64))
    assert gradcam.target_path[-1] == "conv5_block3_out" and len(gradcam.target_path) == 2
    batch = distracting_image((64, 64))[None]
    cams, output = gradcam.run(batch)
    np.testing.assert_allclose(output, model(batch, training=False), atol=1e-5)
    assert cams.shape == (1, 2, 2) and np.isfinite(cams).all() and (cams >= 0).all()


def test_model_without_feature_map_is_refused():
    import keras

    inputs = keras.Input((SIDE, SIDE, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs))
    with pytest.raises(ExplainError):
        build_gradcam(keras.Model(inputs, outputs), 1, (SIDE, SIDE))


def test_unexplainable_model_still_answers_with_a_warning(tmp_path):
    import keras

    from app import create_app

    inputs = keras.Input((SIDE, SIDE, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs))
    install(keras.Model(inputs, outputs), tmp_path / "models", "vgg16", "ct",
            {"input_size": [SIDE, SIDE]})
    client = create_app(testing_config(tmp_path)).test_client()
    body = client.post("/api/v1/predict", data={
        "image": (io.BytesIO(png_bytes(size=(200, 200))), "scan.png"), "modality": "ct",
        "model": "vgg16", "explain": "1"}, content_type="multipart/form-data").get_json()
    assert "heatmap_png" not in body["results"][0]
    assert any("No heatmap for VGG16" in w for w in body["warnings"])


# --- overlay and wiring ------------------------------------------------------------------

def test_overlay_leaves_cold_regions_untouched_and_keeps_the_aspect():
    image = np.full((90, 300, 3), 100, dtype=np.uint8)
    cam = np.zeros((4, 4), dtype=np.float32)
    cam[0, 3] = 1.0
    blended = overlay(image, cam)
    assert blended.shape == image.shape
    assert (blended[60:, :150] == 100).all()  # far from the hot cell: plain image
    assert np.abs(blended[5, 290].astype(int) - 100).sum() > 50
    assert (overlay(image, np.zeros((4, 4))) == image).all()
    big = overlay(np.zeros((1000, 2000, 3), np.uint8), cam)
    assert big.shape == (256, 512, 3)


def test_explain_off_adds_no_heatmap(client, scan_png):
    for explain_value in (None, "0"):
        form = {"image": (io.BytesIO(scan_png), "scan.png"), "modality": "ct",
                "model": "vgg16"}
        if explain_value is not None:
            form["explain"] = explain_value
        body = client.post("/api/v1/predict", data=form,
                           content_type="multipart/form-data").get_json()
        assert "heatmap_png" not in body["results"][0]
        assert "explain_ms" not in body["results"][0]


def test_unclear_explain_value_is_400(client, scan_png):
    response = client.post("/api/v1/predict", data={
        "image": (io.BytesIO(scan_png), "scan.png"), "modality": "ct", "explain": "maybe"},
        content_type="multipart/form-data")
    assert response.status_code == 400
    assert "explain" in response.get_json()["error"]["message"]


def test_all_models_each_get_a_heatmap_on_api_and_page(client):
    upload = png_bytes(size=(180, 240))
    body = client.post("/api/v1/predict", data={
        "image": (io.BytesIO(upload), "scan.png"), "modality": "ct", "model": "all",
        "explain": "1"}, content_type="multipart/form-data").get_json()
    assert [bool(r.get("heatmap_png")) for r in body["results"]] == [True, True, True]
    html = client.post("/", data={"image": (io.BytesIO(upload), "scan.png"),
                                  "modality": "ct", "model": "all", "explain": "y"},
                       content_type="multipart/form-data").get_data(as_text=True)
    assert 'id="heatmaps"' in html
    for arch in ("vgg16", "vgg19", "inceptionv3"):
        assert f'id="heatmap-{arch}"' in html
    plain = client.post("/", data={"image": (io.BytesIO(upload), "scan.png"),
                                   "modality": "ct", "model": "all"},
                        content_type="multipart/form-data").get_data(as_text=True)
    assert 'id="heatmaps"' not in plain


def test_upload_form_offers_the_heatmap_checkbox(client):
    html = client.get("/").get_data(as_text=True)
    assert 'type="checkbox"' in html and 'name="explain"' in html and "Show heatmap" in html
