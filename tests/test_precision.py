"""fp16 by configuration: served only when its answers are within FP16_TOLERANCE of
fp32, else fp32 with a warning; the fp16 graph is converted once and cached; fp32 stays
the default and unchanged. CI has no GPU: these run ONNX Runtime's CPU provider, which
runs the converted graph too (no faster there; bench/precision.py measures both)."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest

from app import create_app
from inference.precision import fp16_path_for
from inference.preparation import convert_entry
from inference.runners import OnnxBackend

from .backend_helpers import entry_for, random_batch
from .backend_helpers import converted_dir_fixture, tiny_dir_fixture  # noqa: F401 - fixtures
from .conftest import testing_config

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.transformers.float16")


def make_app(tmp_path, model_dir, **settings):
    return create_app(testing_config(tmp_path, MODEL_DIR=str(model_dir),
                                     INFERENCE_BACKEND="onnx", **settings))


def predict(app, png: bytes, explain: bool = False) -> dict:
    form = {"modality": "ct", "model": "vgg16",
            "image": (io.BytesIO(png), "scan.png")}
    if explain:
        form["explain"] = "1"
    response = app.test_client().post("/api/v1/predict", data=form,
                                      content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data(as_text=True)
    (result,) = response.get_json()["results"]
    return result


def model_row(app) -> dict:
    rows = app.test_client().get("/api/v1/models").get_json()["models"]
    return next(r for r in rows if (r["modality"], r["architecture"]) == ("ct", "vgg16"))


def loaded_runner(app, model_dir):
    service = app.extensions["inference"]
    return service.load(entry_for(model_dir)).runner


def fp32_file(model_dir):
    (path,) = [p for p in model_dir.rglob("*.onnx") if not p.name.endswith(".fp16.onnx")]
    return path


def test_default_is_fp32_and_serves_the_fp32_graph_unchanged(tmp_path, converted_dir,
                                                             scan_png, instance_path):
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(converted_dir)))
    assert app.config["INFERENCE_PRECISION"] == "fp32"
    result = predict(app, scan_png)
    runner = loaded_runner(app, converted_dir)
    assert isinstance(runner, OnnxBackend) and runner.path == fp32_file(converted_dir)
    batch = random_batch()
    np.testing.assert_array_equal(runner.run(batch)[0],
                                  OnnxBackend(fp32_file(converted_dir)).run(batch)[0])
    row = model_row(app)
    assert row["precision"] == "fp32" and "fp16_max_difference" not in row
    assert not list(converted_dir.rglob("*.fp16.onnx"))  # nothing converted
    assert 0.0 <= result["covid_probability"] <= 1.0


def test_fp16_answers_within_tolerance_of_fp32_through_the_api(tmp_path, converted_dir,
                                                               scan_png, instance_path):
    fp32_app = make_app(tmp_path, converted_dir)
    fp16_app = make_app(tmp_path, converted_dir, INFERENCE_PRECISION="fp16")
    want = predict(fp32_app, scan_png)
    got = predict(fp16_app, scan_png, explain=True)
    tolerance = fp16_app.config["FP16_TOLERANCE"]
    assert got["covid_probability"] == pytest.approx(want["covid_probability"],
                                                     abs=tolerance)
    assert got["heatmap_png"]  # Grad-CAM from the fp16 graph's feature map
    row = model_row(fp16_app)
    assert row["backend"] == "onnx" and row["precision"] == "fp16"
    assert 0.0 <= row["fp16_max_difference"] <= tolerance
    runner = loaded_runner(fp16_app, converted_dir)
    assert runner.path == fp16_path_for(fp32_file(converted_dir))


def test_fp16_feature_map_stays_float32_and_close_to_fp32(tmp_path, converted_dir,
                                                          instance_path):
    fp32 = loaded_runner(make_app(tmp_path, converted_dir), converted_dir)
    fp16 = loaded_runner(make_app(tmp_path, converted_dir, INFERENCE_PRECISION="fp16"),
                         converted_dir)
    assert fp16.precision == "fp16" and fp16.has_features
    batch = random_batch()
    (want, want_maps), (got, got_maps) = fp32.run(batch), fp16.run(batch)
    assert got.dtype == got_maps.dtype == np.float32
    assert got_maps.shape == want_maps.shape
    np.testing.assert_allclose(got, want, atol=0.01)
    assert np.max(np.abs(got_maps - want_maps)) <= 0.01 * max(1.0, np.max(np.abs(want_maps)))


def test_the_fp16_graph_is_converted_once_and_reused(tmp_path, converted_dir, monkeypatch,
                                                     instance_path):
    loaded_runner(make_app(tmp_path, converted_dir, INFERENCE_PRECISION="fp16"),
                  converted_dir)
    cached = fp16_path_for(fp32_file(converted_dir))
    assert cached.is_file()
    before = cached.stat().st_mtime_ns

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    from onnxruntime.transformers import float16

    monkeypatch.setattr(float16, "convert_float_to_float16", no_second_conversion)
    runner = loaded_runner(make_app(tmp_path, converted_dir, INFERENCE_PRECISION="fp16"),
                           converted_dir)
    assert runner.precision == "fp16" and runner.path == cached
    assert cached.stat().st_mtime_ns == before
    assert list(converted_dir.rglob("*.fp16.onnx")) == [cached]  # no temporary left


def test_a_new_fp32_conversion_removes_the_fp16_graph_made_from_the_old(
        tmp_path, converted_dir, instance_path):
    loaded_runner(make_app(tmp_path, converted_dir, INFERENCE_PRECISION="fp16"),
                  converted_dir)
    cached = fp16_path_for(fp32_file(converted_dir))
    assert cached.is_file()
    convert_entry(entry_for(converted_dir), force=True)
    assert not cached.exists()


def test_an_impossible_tolerance_serves_fp32_with_a_warning(tmp_path, converted_dir,
                                                            scan_png, caplog, instance_path):
    want = predict(make_app(tmp_path, converted_dir), scan_png)
    app = make_app(tmp_path, converted_dir, INFERENCE_PRECISION="fp16", FP16_TOLERANCE=0.0)
    with caplog.at_level(logging.WARNING):
        got = predict(app, scan_png, explain=True)
    assert got["covid_probability"] == want["covid_probability"]
    assert got["heatmap_png"]
    row = model_row(app)
    assert row["precision"] == "fp32"
    assert row["fp16_max_difference"] > 0.0  # measured, and above the tolerance of 0
    assert loaded_runner(app, converted_dir).path == fp32_file(converted_dir)
    name = entry_for(converted_dir).path.name
    assert f"{name}: fp16 probabilities differ from fp32" in caplog.text
    assert f"{row['fp16_max_difference']:.2e}" in caplog.text
    assert "serving fp32" in caplog.text


def test_an_fp16_graph_that_cannot_be_made_serves_fp32(tmp_path, converted_dir, scan_png,
                                                       caplog, monkeypatch, instance_path):
    from onnxruntime.transformers import float16

    def broken(*args, **kwargs):
        raise RuntimeError("no fp16 for this graph")

    monkeypatch.setattr(float16, "convert_float_to_float16", broken)
    want = predict(make_app(tmp_path, converted_dir), scan_png)
    app = make_app(tmp_path, converted_dir, INFERENCE_PRECISION="fp16")
    with caplog.at_level(logging.WARNING):
        got = predict(app, scan_png)
    assert got["covid_probability"] == want["covid_probability"]
    row = model_row(app)
    assert row["precision"] == "fp32" and "fp16_max_difference" not in row
    assert "could not be made or run (RuntimeError: no fp16 for this graph)" in caplog.text
    assert not list(converted_dir.rglob("*.fp16.onnx"))


@pytest.mark.parametrize("setting, value", [
    ("INFERENCE_PRECISION", "fp8"), ("INFERENCE_PRECISION", "half"),
    ("FP16_TOLERANCE", "lots"), ("FP16_TOLERANCE", -0.1), ("FP16_TOLERANCE", float("nan")),
])
def test_an_invalid_setting_is_refused_at_start(tmp_path, instance_path, setting, value):
    with pytest.raises(ValueError, match=setting):
        create_app(testing_config(tmp_path, **{setting: value}))


def test_the_setting_comes_from_the_environment(tmp_path, monkeypatch, instance_path):
    config = testing_config(tmp_path)
    del config["INFERENCE_PRECISION"], config["FP16_TOLERANCE"]
    monkeypatch.setenv("FLASK_INFERENCE_PRECISION", "fp16")
    monkeypatch.setenv("FLASK_FP16_TOLERANCE", "0.02")
    policy = create_app(config).extensions["inference"].cache.precision
    assert (policy.precision, policy.fp16_tolerance) == ("fp16", 0.02)
    monkeypatch.setenv("FLASK_INFERENCE_PRECISION", "int4")
    with pytest.raises(ValueError, match="INFERENCE_PRECISION must be one of fp32, fp16, "
                                         "bf16, int8, auto"):
        create_app(config)
