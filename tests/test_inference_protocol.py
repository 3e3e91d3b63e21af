"""The Open Inference Protocol (KServe / Triton "v2") endpoints under /v2: NVIDIA's
tritonclient against the real app on loopback, answers compared with /api/v1/predict
for the same image, and every malformed request a 4xx in the protocol's error shape."""

from __future__ import annotations

import io
import json
import threading
from contextlib import contextmanager

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException
from werkzeug.serving import make_server

from inference.preprocess import decode_image, model_input
from inference.protocol import MAX_BATCH, find_model

from .conftest import TEST_PASSWORD, TINY_CARD, signed_in
from .model_factory import install, png_bytes, scan_like_png, tiny_model

INFER = "/v2/models/ct-vgg16/infer"
IMAGENET_CARD = {"input_size": [32, 32], "preprocessing": "imagenet"}


@pytest.fixture(scope="module")
def protocol_models(tmp_path_factory):
    """CT VGG16 (softmax, rescale), X-ray ResNet50 (one sigmoid unit, ImageNet
    preprocessing) and CT VGG19 with an invalid card."""
    root = tmp_path_factory.mktemp("protocol_models")
    install(tiny_model(seed=1), root, "vgg16", "ct", TINY_CARD)
    install(tiny_model(seed=2, outputs=1), root, "resnet50", "xray", IMAGENET_CARD)
    install(tiny_model(seed=3), root, "vgg19", "ct", {"input_size": "big"})
    return root


@pytest.fixture
def app(app_factory, protocol_models):
    return app_factory(MODEL_DIR=str(protocol_models))


@contextmanager
def live_client(app):
    """The app under a real threaded WSGI server on 127.0.0.1, and a tritonclient."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = triton.InferenceServerClient(f"127.0.0.1:{server.server_port}",
                                          connection_timeout=30, network_timeout=120)
    try:
        yield client
    finally:
        client.close()
        server.shutdown()
        thread.join(timeout=10)


def preprocessed(app, images: list[bytes], name: str) -> np.ndarray:
    """The batch a client sends: ``model_input`` of each image, as the card says."""
    card = find_model(app.extensions["inference"].entries(), name).card
    return np.stack([model_input(decode_image(data).pixels, card) for data in images])


def predicted(app, data: bytes, name: str, headers=None) -> float:
    modality, architecture = name.split("-")
    response = app.test_client().post("/api/v1/predict", headers=headers or {}, data={
        "modality": modality, "model": architecture, "image": (io.BytesIO(data), "scan.png")})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["results"][0]["covid_probability"]


def infer(client, name: str, batch: np.ndarray, datatype: str = "FP32", **options):
    tensor = triton.InferInput("input", list(batch.shape), datatype)
    tensor.set_data_from_numpy(batch, binary_data=options.pop("binary_data", False))
    wanted = [triton.InferRequestedOutput("probabilities", binary_data=False)]
    return client.infer(name, [tensor], outputs=wanted, **options)


def refused(call, status: str) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == status, caught.value
    return caught.value.message()


def test_tritonclient_reads_health_and_metadata(app):
    with live_client(app) as client:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("ct-vgg16") and client.is_model_ready("xray-resnet50")
        assert not client.is_model_ready("ct-vgg19")  # installed, but its card is invalid
        assert not client.is_model_ready("ct-resnet50")  # not installed
        metadata = client.get_model_metadata("ct-vgg16")
        assert metadata["name"] == "ct-vgg16" and metadata["platform"] == "keras"
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP32",
                                       "shape": [-1, 32, 32, 3]}]
        assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32",
                                        "shape": [-1, 2]}]
        assert metadata["parameters"]["preprocessing"] == "rescale"
        assert client.get_model_metadata("xray-resnet50")["parameters"] == {
            "classes": "NonCOVID,COVID", "covid_index": 1, "threshold": 0.5,
            "preprocessing": "imagenet", "resize": "bilinear", "max_batch_size": MAX_BATCH}
        assert "Unknown model 'ct-nope'" in refused(
            lambda: client.get_model_metadata("ct-nope"), "404")
        assert "invalid" in refused(lambda: client.get_model_metadata("ct-vgg19"), "503")


@pytest.mark.parametrize("name", ["ct-vgg16", "xray-resnet50"])
def test_tritonclient_infers_what_predict_answers(app, name):
    images = [scan_like_png(seed=0), png_bytes(size=(48, 40), seed=7)]
    expected = [predicted(app, data, name) for data in images]
    with live_client(app) as client:
        one = infer(client, name, preprocessed(app, images[:1], name), request_id="scan-1")
        two = infer(client, name, preprocessed(app, images, name))
    assert one.get_response()["model_name"] == name and one.get_response()["id"] == "scan-1"
    rows = one.as_numpy("probabilities")
    assert rows.shape == (1, 2) and rows.dtype == np.float32
    assert np.allclose(rows[:, 1], expected[:1], rtol=0, atol=1e-5)
    assert np.allclose(rows.sum(axis=1), 1.0, atol=1e-6)
    both = two.as_numpy("probabilities")
    assert both.shape == (2, 2)
    assert np.allclose(both[:, 1], expected, rtol=0, atol=1e-5)
    assert abs(expected[0] - expected[1]) > 1e-5  # the two images are told apart


def test_tritonclient_gets_the_protocols_errors_and_the_server_goes_on(app):
    batch = preprocessed(app, [scan_like_png()], "ct-vgg16")
    with live_client(app) as client:
        assert "Unknown model" in refused(lambda: infer(client, "ct-nope", batch), "404")
        assert "not installed" in refused(lambda: infer(client, "ct-resnet50", batch), "404")
        assert "datatype must be FP32" in refused(
            lambda: infer(client, "ct-vgg16", batch.astype(np.float64), "FP64"), "400")
        nan = batch.copy()
        nan[0, 3, 4, 1] = np.nan
        assert "finite" in refused(lambda: infer(client, "ct-vgg16", nan), "400")
        big = np.repeat(batch, MAX_BATCH + 1, axis=0)
        assert f"1 to {MAX_BATCH} images" in refused(
            lambda: infer(client, "ct-vgg16", big), "400")
        assert "binary_data=False" in refused(
            lambda: infer(client, "ct-vgg16", batch, binary_data=True), "400")
        assert "shape" in refused(lambda: infer(client, "ct-vgg16", batch[:, :16]), "400")
        assert infer(client, "ct-vgg16", batch).as_numpy("probabilities").shape == (1, 2)


def body(shape=(1, 32, 32, 3), data=None, **changes) -> dict:
    tensor = {"name": "input", "datatype": "FP32", "shape": list(shape),
              "data": [0.5] * int(np.prod(shape)) if data is None else data}
    tensor.update(changes)
    return {"inputs": [tensor]}


BAD_BODIES = {
    "not json": b"this is not JSON",
    "empty": b"",
    "not an object": b"[1, 2, 3]",
    "not UTF-8": b'{"inputs": "\xff\xfe"}',
    "nested too deep": b"[" * 100_000 + b"]" * 100_000,
    "no inputs": {"outputs": [{"name": "probabilities"}]},
    "two inputs": {"inputs": body()["inputs"] * 2},
    "unknown input": body(name="image"),
    "unknown output": {**body(), "outputs": [{"name": "logits"}]},
    "wrong datatype": body(datatype="FP16"),
    "no datatype": body(datatype=None),
    "wrong size": body(shape=(1, 16, 16, 3)),
    "three channels missing": body(shape=(1, 32, 32)),
    "float in shape": body(shape=(1, 32.0, 32, 3), data=[0.5] * 3072),
    "empty batch": body(shape=(0, 32, 32, 3)),
    "batch too large": body(shape=(MAX_BATCH + 1, 32, 32, 3), data=[0.5]),
    "too few numbers": body(data=[0.5] * 10),
    "too many numbers": body(data=[0.5] * 3073),
    "ragged nesting": body(data=[[[[0.5] * 3] * 32] * 31]),
    "strings": body(data=["0.5"] * 3072),
    "booleans": body(data=[True] * 3072),
    "nulls": body(data=[None] * 3072),
    "beyond FP32": body(data=[1e39] * 3072),
    "huge integer": body(data=[10 ** 400] * 3072),
    "binary data": body(parameters={"binary_data_size": 12288}),
    "bad id": {**body(), "id": 42},
}
BAD_BODIES["binary data"]["inputs"][0].pop("data")


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_a_malformed_request_is_a_400_in_the_protocols_shape(app, case):
    sent = BAD_BODIES[case]
    data = sent if isinstance(sent, bytes) else json.dumps(sent).encode()
    response = app.test_client().post(INFER, data=data, content_type="application/json")
    assert response.status_code == 400, (case, response.get_data(as_text=True))
    answer = response.get_json()
    assert set(answer) == {"error"} and isinstance(answer["error"], str) and answer["error"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_not_finite_numbers_are_refused(app, value):
    data = [0.5] * 3072
    data[100] = value
    response = app.test_client().post(INFER, data=json.dumps(body(data=data)))
    assert response.status_code == 400 and "finite" in response.get_json()["error"]


def test_nested_and_flat_data_give_one_answer_whatever_the_content_type(app):
    batch = preprocessed(app, [scan_like_png()], "ct-vgg16")
    client = app.test_client()
    flat = client.post(INFER, data=json.dumps(body(data=batch.ravel().tolist())))
    nested = client.post(INFER, json=body(data=batch.tolist()) | {"id": "n"})
    assert flat.status_code == nested.status_code == 200, flat.get_data(as_text=True)
    assert nested.get_json()["id"] == "n" and "id" not in flat.get_json()
    assert nested.get_json()["outputs"] == flat.get_json()["outputs"]


def test_compressed_or_oversized_bodies_are_refused_in_the_protocols_shape(app_factory,
                                                                           protocol_models):
    app = app_factory(MODEL_DIR=str(protocol_models), MAX_CONTENT_LENGTH=8 * 1024)
    client = app.test_client()
    gzipped = client.post(INFER, data=b"\x1f\x8b", headers={"Content-Encoding": "gzip"})
    assert gzipped.status_code == 400 and "Compressed" in gzipped.get_json()["error"]
    large = client.post(INFER, data=json.dumps(body()))  # 3072 numbers: about 15 KB
    assert large.status_code == 413
    assert set(large.get_json()) == {"error"} and "larger" in large.get_json()["error"]


def test_unknown_and_unusable_models_answer_404_and_503(app):
    client = app.test_client()
    for path in ("/v2/models/ct-nope", "/v2/models/CT-VGG16/ready", "/v2/models/ct/infer",
                 "/v2/models/xray-inceptionv3/ready"):
        method = client.post if path.endswith("/infer") else client.get
        response = method(path, data=json.dumps(body()))
        assert response.status_code == 404, path
        assert isinstance(response.get_json()["error"], str), path
    assert client.get("/v2/models/ct-vgg16/ready").get_json() == {"name": "ct-vgg16",
                                                                  "ready": True}
    unusable = client.get("/v2/models/ct-vgg19/ready")
    assert unusable.status_code == 503 and "input_size" in unusable.get_json()["error"]
    assert client.get("/v2/health/live").get_json() == {"live": True}
    assert client.get("/v2/health/ready").get_json() == {"ready": True}


def test_the_server_is_not_ready_without_a_usable_model(app_factory):
    client = app_factory().test_client()  # an empty model folder
    assert client.get("/v2/health/live").status_code == 200
    response = client.get("/v2/health/ready")
    assert response.status_code == 503 and "No model is ready" in response.get_json()["error"]


def test_closed_site_needs_a_token_which_tritonclient_sends(app_factory, protocol_models):
    app = app_factory(MODEL_DIR=str(protocol_models), AUTH_METHODS="local",
                      PUBLIC_ACCESS=False)
    token = {"Authorization": f"Bearer {signed_in(app, role='reader')}"}
    image = scan_like_png()
    batch = preprocessed(app, [image], "ct-vgg16")
    expected = predicted(app, image, "ct-vgg16", headers=token)
    with live_client(app) as client:
        assert client.is_server_live() and client.is_server_ready()  # public, like /healthz
        assert not client.is_model_ready("ct-vgg16")
        assert "Sign in" in str(refused(lambda: infer(client, "ct-vgg16", batch), "401"))
        refused(lambda: infer(client, "ct-vgg16", batch,
                              headers={"Authorization": "Bearer forged"}), "401")
        assert client.is_model_ready("ct-vgg16", headers=token)
        rows = infer(client, "ct-vgg16", batch, headers=token).as_numpy("probabilities")
    assert np.allclose(rows[:, 1], [expected], rtol=0, atol=1e-5)
    anonymous = app.test_client().post(INFER, data=json.dumps(body()))
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"]
    assert anonymous.get_json()["error"]["code"] == "unauthenticated"  # the door's shape


def test_a_session_cookie_does_not_authorise_an_inference(app_factory, protocol_models):
    app = app_factory(MODEL_DIR=str(protocol_models), AUTH_METHODS="local",
                      PUBLIC_ACCESS=False)
    signed_in(app, role="analyst", name="ada")
    browser = app.test_client()
    login = browser.post("/login", data={"username": "ada", "password": TEST_PASSWORD,
                                         "next": "/"})
    assert login.status_code == 303
    assert browser.get("/v2/models/ct-vgg16").status_code == 200
    assert browser.post(INFER, data=json.dumps(body())).status_code == 401


def test_inference_shares_the_prediction_rate_limit(app_factory, protocol_models):
    app = app_factory(MODEL_DIR=str(protocol_models), RATELIMIT_ENABLED=True,
                      PREDICT_RATE_LIMIT="2 per minute")
    client = app.test_client()
    predicted(app, scan_like_png(), "ct-vgg16")
    assert client.post(INFER, data=json.dumps(body())).status_code == 200
    limited = client.post(INFER, data=json.dumps(body()))
    assert limited.status_code == 429 and "2 per 1 minute" in limited.get_json()["error"]
    assert all(client.get("/v2/health/ready").status_code == 200 for _ in range(5))
