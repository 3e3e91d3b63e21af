"""OpenVINO as a backend, and INFERENCE_PRECISION=auto: OpenVINO answers like ONNX Runtime
(outputs and the feature map heatmaps reuse), bf16 only where the CPU has it, each
candidate measured on this CPU and judged against fp32, the fastest accepted one served,
the record kept per CPU key and shown by /api/v1/models, and a CPU without bf16 or VNNI
(or without OpenVINO) falls back without error."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from app import create_app
from inference import candidates as measuring
from inference import openvino_runner
from inference.cards import ModelCard
from inference.openvino_runner import OpenVinoBackend, supported_precisions
from inference.preparation import Preparer
from inference.runners import OnnxBackend

from .backend_helpers import entry_for, random_batch, relative_to_peak
from .backend_helpers import converted_dir_fixture, tiny_dir_fixture  # noqa: F401 - fixtures
from .conftest import testing_config

pytest.importorskip("openvino")


def conversion(model_dir):
    (path,) = [p for p in model_dir.rglob("*.onnx") if ".fp16." not in p.name]
    return path


def make_app(tmp_path, model_dir, **settings):
    return create_app(testing_config(tmp_path, MODEL_DIR=str(model_dir),
                                     INFERENCE_BACKEND="onnx", **settings))


def model_row(app) -> dict:
    rows = app.test_client().get("/api/v1/models").get_json()["models"]
    return next(r for r in rows if (r["modality"], r["architecture"]) == ("ct", "vgg16"))


def predict(app, png: bytes) -> dict:
    response = app.test_client().post(
        "/api/v1/predict", content_type="multipart/form-data",
        data={"modality": "ct", "model": "vgg16", "explain": "1",
              "image": (io.BytesIO(png), "scan.png")})
    assert response.status_code == 200, response.get_data(as_text=True)
    (result,) = response.get_json()["results"]
    return result


def served_runner(app, model_dir):
    return app.extensions["inference"].load(entry_for(model_dir)).runner


def test_openvino_fp32_answers_like_onnx_runtime_with_the_feature_map(converted_dir):
    path, batch = conversion(converted_dir), random_batch()
    want, want_maps = OnnxBackend(path).run(batch)
    got, got_maps = OpenVinoBackend(path, "fp32").run(batch)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got_maps is not None and got_maps.shape == want_maps.shape
    assert relative_to_peak(got_maps, want_maps) < 1e-4


@pytest.mark.skipif("bf16" not in supported_precisions(), reason="this CPU has no bf16")
def test_bf16_is_close_to_fp32_but_not_equal(converted_dir):
    path, batch = conversion(converted_dir), random_batch()
    want, want_maps = OnnxBackend(path).run(batch)
    got, got_maps = OpenVinoBackend(path, "bf16").run(batch)
    assert 0 < np.max(np.abs(got - want)) < 0.02  # really bf16, and close
    assert relative_to_peak(got_maps, want_maps) < 0.05


def test_precisions_follow_what_the_cpu_plugin_reports(monkeypatch):
    found = supported_precisions()
    assert "fp32" in found and set(found) <= {"fp32", "bf16", "int8"}
    monkeypatch.setattr(openvino_runner, "openvino_supported", lambda: False)
    assert supported_precisions() == ()


def test_measure_judges_each_candidate_and_serves_the_fastest_accepted(converted_dir):
    path, card = conversion(converted_dir), entry_for(converted_dir).card
    record = measuring.measure(path, card, tolerance=0.02, rounds=3)
    rows = {r["name"]: r for r in record["candidates"]}
    expected = {"onnxruntime-fp32"} | {f"openvino-{p}" for p in supported_precisions()
                                       if p != "int8"}  # no INT8 graph yet
    assert set(rows) == expected
    assert rows["onnxruntime-fp32"]["max_difference"] == 0.0
    accepted = [r for r in rows.values() if r["accepted"]]
    assert record["chosen"] == min(accepted, key=lambda r: r["ms"])["name"]
    assert all(r["max_difference"] <= 0.02 and r["label_flips"] == 0 for r in accepted)
    assert record["cpu"].startswith(measuring.cpu_key().split("|threads=")[0])
    saved = json.loads(measuring.choice_path_for(path).read_text())
    assert saved[record["cpu"]]["chosen"] == record["chosen"]
    assert measuring.read_choice(path, 0.02) == record
    assert measuring.read_choice(path, 0.01) is None  # another tolerance: measure again


def test_a_candidate_outside_the_tolerance_is_refused_with_its_figures(converted_dir):
    path, card = conversion(converted_dir), entry_for(converted_dir).card
    record = measuring.measure(path, card, tolerance=0.0, rounds=2)
    for row in record["candidates"]:
        if row["name"] == "onnxruntime-fp32" or row["max_difference"] == 0.0:
            continue
        assert not row["accepted"] and "differ by up to" in row["reason"]
    assert record["chosen"] in [r["name"] for r in record["candidates"] if r["accepted"]]


def test_a_flipped_label_is_refused_however_small_the_difference():
    card = ModelCard("vgg16", "ct", threshold=0.5)
    want = np.array([[0.5005, 0.4995], [0.2, 0.8]])
    got = np.array([[0.4995, 0.5005], [0.2, 0.8]])  # 0.001 apart, first label flipped
    row = measuring.agreement("openvino-bf16", got, want, card, tolerance=0.02)
    assert row["label_flips"] == 1 and not row["accepted"] and "flipped" in row["reason"]
    assert measuring.agreement("x", want, want, card, 0.02)["accepted"]
    nan = measuring.agreement("x", np.full_like(want, np.nan), want, card, 0.02)
    assert not nan["accepted"]


def test_another_cpu_measures_again(converted_dir, monkeypatch):
    path, card = conversion(converted_dir), entry_for(converted_dir).card
    measuring.measure(path, card, rounds=2)
    monkeypatch.setattr(measuring, "cpu_signature", lambda: "Other CPU|avx2,fma")
    assert measuring.read_choice(path, 0.02) is None
    measuring.measure(path, card, rounds=2)
    saved = json.loads(measuring.choice_path_for(path).read_text())
    assert len(saved) == 2 and any(key.startswith("Other CPU|") for key in saved)


@pytest.mark.parametrize("precisions", [("fp32",), ()], ids=["no-bf16-no-vnni", "no-openvino"])
def test_a_cpu_without_bf16_or_vnni_falls_back_without_error(converted_dir, monkeypatch,
                                                             tmp_path, scan_png,
                                                             precisions):
    monkeypatch.setattr(measuring, "supported_precisions", lambda: precisions)
    path, card = conversion(converted_dir), entry_for(converted_dir).card
    record = measuring.measure(path, card, rounds=2)
    names = {r["name"] for r in record["candidates"]}
    assert names == {"onnxruntime-fp32"} | {f"openvino-{p}" for p in precisions}
    app = make_app(tmp_path, converted_dir, INFERENCE_PRECISION="auto")
    assert 0.0 <= predict(app, scan_png)["covid_probability"] <= 1.0
    assert model_row(app)["precision"] == "fp32"


def test_auto_serves_fp32_until_measured_then_what_was_chosen(converted_dir, tmp_path,
                                                              scan_png, instance_path):
    app = make_app(tmp_path, converted_dir, INFERENCE_PRECISION="auto")
    before = predict(app, scan_png)
    row = model_row(app)
    assert row["backend"] == "onnx" and row["precision_choice"] == "measuring"
    record = measuring.measure(conversion(converted_dir), entry_for(converted_dir).card,
                               rounds=3)
    after = predict(app, scan_png)  # the next request switches to the chosen runner
    runner = served_runner(app, converted_dir)
    assert f"{'onnxruntime' if runner.name == 'onnx' else runner.name}-{runner.precision}" \
        == record["chosen"]
    assert abs(after["covid_probability"] - before["covid_probability"]) <= 0.02
    assert after["heatmap_png"]  # Grad-CAM from the chosen runner's feature map
    shown = model_row(app)["precision_choice"]
    assert shown["chosen"] == record["chosen"] and shown["cpu"] == record["cpu"]
    assert {r["name"] for r in shown["candidates"]} == \
        {r["name"] for r in record["candidates"]}


@pytest.mark.skipif("bf16" not in supported_precisions(), reason="this CPU has no bf16")
def test_bf16_by_configuration_serves_openvino_within_tolerance(converted_dir, tmp_path,
                                                                scan_png, instance_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    fp32 = predict(make_app(tmp_path / "a", converted_dir), scan_png)
    app = make_app(tmp_path / "b", converted_dir, INFERENCE_PRECISION="bf16")
    got = predict(app, scan_png)
    assert abs(got["covid_probability"] - fp32["covid_probability"]) <= 0.02
    assert got["heatmap_png"]
    row = model_row(app)
    assert row["backend"] == "openvino" and row["precision"] == "bf16"
    assert 0 <= row["max_difference"] <= 0.02


def test_int8_by_configuration_without_a_quantized_graph_serves_fp32(converted_dir, tmp_path,
                                                                     scan_png, caplog):
    app = make_app(tmp_path, converted_dir, INFERENCE_PRECISION="int8")
    predict(app, scan_png)
    assert model_row(app)["precision"] == "fp32"
    assert "flask models quantize" in caplog.text


def test_preparation_measures_a_converted_model_in_the_background(converted_dir):
    preparer = Preparer(str(converted_dir), precision=make_policy("auto"))
    entry = entry_for(converted_dir)
    assert preparer.status(entry) == "waiting"  # converted, not measured on this CPU
    assert preparer._prepare(entry)
    assert preparer.status(entry) == "ready"
    assert measuring.read_choice(conversion(converted_dir), 0.02) is not None
    assert Preparer(str(converted_dir), precision=make_policy("fp32")).status(entry) == "ready"


def make_policy(precision: str):
    from inference.precision import PrecisionPolicy

    return PrecisionPolicy(precision=precision)
