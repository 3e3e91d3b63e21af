"""Heatmaps from the prediction's own pass: the served graph also returns the last
feature map, and Grad-CAM differentiates only the head. The maps must equal the
whole-model Grad-CAM, on every architecture, flat and nested, Keras and ONNX."""

from __future__ import annotations

import io

import numpy as np
import pytest

from inference import explain as explain_module
from inference.explain import build_gradcam, build_head_gradcam
from inference.runners import KerasGraphBackend, OnnxBackend, conversion_supported

from .conftest import testing_config
from .model_factory import install, png_bytes, tiny_model
from .test_explain import (REGION, SIDE, distracting_image, quadrant_of, region_model)

PEAK_TOLERANCE = 1e-3  # |head map - whole-model map| over the whole-model map's peak


def assert_same_map(head_cam: np.ndarray, full_cam: np.ndarray) -> None:
    scale = max(float(full_cam.max()), 1e-12)
    assert head_cam.shape == full_cam.shape
    assert float(np.max(np.abs(head_cam - full_cam))) / scale <= PEAK_TOLERANCE


def maps_both_ways(model, input_size, batch, covid_index=1):
    """(head map from the served graph's features, whole-model map) for one batch."""
    runner = KerasGraphBackend(model, input_size)
    outputs, features = runner.run(batch)
    assert features is not None
    head = build_head_gradcam(model, covid_index, input_size)
    assert head is not None, "the head after the feature map should be a chain"
    full_cams, full_outputs = build_gradcam(model, covid_index, input_size).run(batch)
    np.testing.assert_allclose(outputs, full_outputs, atol=1e-5)
    return head(features), full_cams


@pytest.mark.parametrize("module, outputs, nested", [
    ("keras", 2, False), ("keras", 1, False), ("keras", 2, True),
    ("tf_keras", 2, False), ("tf_keras", 2, True)])
def test_region_model_head_map_equals_whole_model_map(module, outputs, nested):
    model = region_model(module, outputs, nested)
    batch = distracting_image()[None]
    head_cams, full_cams = maps_both_ways(model, (SIDE, SIDE), batch)
    assert_same_map(head_cams[0], full_cams[0])
    assert quadrant_of(head_cams[0]) == REGION


@pytest.mark.parametrize("arch", ["vgg16", "vgg19", "inceptionv3", "resnet50"])
def test_full_size_head_map_equals_whole_model_map(arch, full_size_models):
    size = (160, 160) if arch == "inceptionv3" else (128, 128)
    model = full_size_models(arch, input_size=size)
    batch = np.random.default_rng(2).random((1, *size, 3), dtype=np.float32)
    head_cams, full_cams = maps_both_ways(model, size, batch)
    assert full_cams.max() > 0
    assert_same_map(head_cams[0], full_cams[0])


def test_single_sigmoid_unit_reads_covid_at_index_zero_as_its_complement():
    """One sigmoid unit is P(classes[1]): with COVID first, the region is evidence
    against COVID and gets no heat, on both paths."""
    model = region_model("keras", outputs=1)
    batch = distracting_image()[None]
    for covid_index, hot in ((1, True), (0, False)):
        head_cams, full_cams = maps_both_ways(model, (SIDE, SIDE), batch, covid_index)
        assert bool(full_cams.max() > 0) is hot
        assert bool(head_cams.max() > 0) is hot


@pytest.mark.skipif(not conversion_supported(), reason="needs onnx, onnxruntime and tf2onnx")
def test_onnx_features_give_the_same_map(tmp_path):
    from inference.preparation import convert_entry
    from inference.registry import discover

    install(region_model(), tmp_path, "vgg16", "ct", {"input_size": [SIDE, SIDE]})
    entry = next(e for e in discover(tmp_path) if e.key == ("ct", "vgg16"))
    path, report, _ = convert_entry(entry)
    assert report.features
    batch = distracting_image(seed=1)[None]
    _, features = OnnxBackend(path).run(batch)
    model = region_model()
    head_cams = build_head_gradcam(model, 1, (SIDE, SIDE))(features)
    full_cams, _ = build_gradcam(model, 1, (SIDE, SIDE)).run(batch)
    assert_same_map(head_cams[0], full_cams[0])


def test_api_heatmap_needs_no_second_forward_pass(tmp_path, monkeypatch):
    """With the feature map from the prediction, the whole-model Grad-CAM never runs."""
    from app import create_app

    install(tiny_model(seed=3), tmp_path / "models", "vgg16", "ct", {"input_size": [32, 32]})
    client = create_app(testing_config(tmp_path, INFERENCE_BACKEND="keras")).test_client()

    def refuse(*args, **kwargs):
        raise AssertionError("the whole model ran again for the heatmap")

    monkeypatch.setattr(explain_module, "gradcam_for", refuse)
    response = client.post("/api/v1/predict", data={
        "image": (io.BytesIO(png_bytes(size=(48, 64))), "scan.png"), "modality": "ct",
        "model": "vgg16", "explain": "1"}, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data(as_text=True)
    (result,) = response.get_json()["results"]
    assert result["heatmap_png"] and result["explain_ms"] > 0
