"""The JSON API and health endpoints, to the contract in DESIGN.md."""

from __future__ import annotations

import io

import pytest

from .model_factory import png_bytes


def post_predict(client, data=None, **fields):
    form = {"modality": "ct", "model": "vgg16"}
    form.update(fields)
    form = {k: v for k, v in form.items() if v is not None}
    if data is not None:
        form["image"] = (io.BytesIO(data), "scan.png")
    return client.post("/api/v1/predict", data=form, content_type="multipart/form-data")


def assert_error(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert "Traceback" not in response.get_data(as_text=True)


def test_models_lists_every_slot_with_contract_keys(client):
    models = client.get("/api/v1/models").get_json()["models"]
    assert len(models) == 8
    keys = {"modality", "architecture", "available", "loaded", "file", "classes",
            "input_size", "preprocessing", "metrics"}
    assert all(keys <= set(m) for m in models)
    available = {(m["modality"], m["architecture"]) for m in models if m["available"]}
    assert available == {("ct", "vgg16"), ("ct", "vgg19"), ("ct", "inceptionv3"),
                         ("xray", "vgg16"), ("xray", "resnet50")}
    assert not any(m["loaded"] for m in models)


def test_predict_one_model(client, scan_png):
    response = post_predict(client, scan_png)
    assert response.status_code == 200
    body = response.get_json()
    assert body["modality"] == "ct"
    assert "disclaimer" in body and "not a medical device" in body["disclaimer"]
    assert body["warnings"] == []
    assert "ensemble" not in body
    (result,) = body["results"]
    assert result["architecture"] == "vgg16"
    assert result["label"] in ("COVID", "Non-COVID")
    p = result["covid_probability"]
    assert 0.0 <= p <= 1.0
    expected_confidence = p if result["label"] == "COVID" else 1 - p
    assert result["confidence"] == pytest.approx(expected_confidence, abs=1e-6)
    assert result["inference_ms"] > 0
    loaded = [m for m in client.get("/api/v1/models").get_json()["models"] if m["loaded"]]
    assert [(m["modality"], m["architecture"]) for m in loaded] == [("ct", "vgg16")]


def test_predict_all_models_has_ensemble(client, scan_png):
    body = post_predict(client, scan_png, model="all").get_json()
    assert [r["architecture"] for r in body["results"]] == ["vgg16", "vgg19", "inceptionv3"]
    ensemble = body["ensemble"]
    probabilities = [r["covid_probability"] for r in body["results"]]
    assert ensemble["covid_probability"] == pytest.approx(sum(probabilities) / 3, abs=1e-5)
    margins = [r["covid_probability"] - r["threshold"] for r in body["results"]]
    assert ensemble["margin"] == pytest.approx(sum(margins) / 3, abs=1e-5)
    assert ensemble["rule"] == "mean_margin" and "threshold" in ensemble["rule_description"]
    assert ensemble["label"] == ("COVID" if ensemble["margin"] >= 0 else "Non-COVID")
    agreeing = sum(r["label"] == ensemble["label"] for r in body["results"])
    assert ensemble["agreeing"] == agreeing
    assert ensemble["agreement"] == pytest.approx(agreeing / 3, abs=1e-3)


def test_model_defaults_to_all(client, scan_png):
    body = post_predict(client, scan_png, model=None, modality="xray").get_json()
    assert {r["architecture"] for r in body["results"]} == {"vgg16", "resnet50"}


def test_cxr_alias_and_same_answer_twice(client, scan_png):
    first = post_predict(client, scan_png, modality="cxr", model="resnet50").get_json()
    second = post_predict(client, scan_png, modality="xray", model="resnet50").get_json()
    assert first["modality"] == "xray"
    assert first["results"][0]["covid_probability"] == second["results"][0]["covid_probability"]


def test_missing_image_is_400(client):
    assert_error(post_predict(client, None), 400, "invalid_request")


def test_missing_modality_is_400(client, scan_png):
    response = post_predict(client, scan_png, modality=None)
    assert_error(response, 400, "invalid_request")
    assert "modality" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("field,value,choices", [
    ("modality", "mri", "ct, xray"),
    ("model", "alexnet", "inceptionv3, resnet50, vgg16, vgg19, all"),
])
def test_unknown_choice_is_400_and_lists_valid_ones(client, scan_png, field, value, choices):
    response = post_predict(client, scan_png, **{field: value})
    assert_error(response, 400, "invalid_request")
    message = response.get_json()["error"]["message"]
    assert message == f"Unknown {field} {value!r}: choose one of {choices}."


def test_body_over_limit_is_413(app, scan_png):
    app.config["MAX_CONTENT_LENGTH"] = 1000
    response = post_predict(app.test_client(), scan_png + b"\0" * 2000)
    assert_error(response, 413, "payload_too_large")


def test_not_an_image_is_415(client):
    assert_error(post_predict(client, b"<html><script>alert(1)</script></html>"), 415,
                 "unsupported_media_type")


def test_empty_file_is_422(client):
    assert_error(post_predict(client, b""), 422, "unprocessable_image")


def test_too_many_pixels_is_422(app):
    app.extensions["inference"].max_pixels = 1000
    response = post_predict(app.test_client(), png_bytes(size=(40, 40)))
    assert_error(response, 422, "unprocessable_image")


def test_not_installed_is_503_and_says_where(client, scan_png):
    response = post_predict(client, scan_png, modality="xray", model="vgg19")
    assert_error(response, 503, "model_unavailable")
    assert "vgg19/VGG19_CXR_model.h5" in response.get_json()["error"]["message"]


def test_no_models_at_all_is_503(empty_app, scan_png):
    response = post_predict(empty_app.test_client(), scan_png, model="all")
    assert_error(response, 503, "model_unavailable")


def test_rate_limit_is_429_json(tmp_path, tiny_model_dir, scan_png):
    from app import create_app

    from .conftest import testing_config

    limited = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_model_dir),
                                        RATELIMIT_ENABLED=True,
                                        PREDICT_RATE_LIMIT="2 per minute"))
    client = limited.test_client()
    statuses = [post_predict(client, scan_png).status_code for _ in range(3)]
    assert statuses[:2] == [200, 200]
    assert_error(post_predict(client, scan_png), 429, "rate_limited")


def test_unknown_api_path_is_json_404(client):
    assert_error(client.get("/api/v1/nothing"), 404, "not_found")


def test_wrong_method_is_json_405(client):
    assert_error(client.get("/api/v1/predict"), 405, "method_not_allowed")


def test_health_and_readiness(client, empty_app):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"]["database"] == "ok"
    not_ready = empty_app.test_client().get("/readyz")  # its model folder does not exist
    assert not_ready.status_code == 503
    assert not_ready.get_json()["checks"]["model_dir"] != "ok"


def test_openapi_document_describes_the_api(client):
    doc = client.get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    predict = doc["paths"]["/api/v1/predict"]["post"]
    assert {"200", "400", "413", "415", "422", "429", "503"} <= set(predict["responses"])
    assert "/api/v1/models" in doc["paths"]


def test_small_image_warning_names_the_models_input_size(client):
    """The test models' cards say 32 x 32: the warning must not claim 224 x 224."""
    body = post_predict(client, png_bytes(size=(100, 90), seed=2)).get_json()
    size_warnings = [w for w in body["warnings"] if "too small" in w]
    assert size_warnings and "look at 32 x 32" in size_warnings[0]
