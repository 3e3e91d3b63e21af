"""Property-based fuzz: mutated PNG, JPEG and DICOM bytes through the real predict route.

Whatever the bytes, the answer is a contract status with a JSON body, never a 500.
``FUZZ_EXAMPLES`` sets the examples per format; CI runs them derandomized so that a
failure reproduces.
"""

from __future__ import annotations

import io
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import create_app

from .conftest import TINY_CARD
from .conftest import testing_config as make_config
from .hostile_corpus import dicom_bytes, encode, noise, valid_jpeg, valid_png
from .model_factory import install, tiny_model

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
CONTRACT_STATUSES = {200, 400, 413, 415, 422}
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)

SEEDS = {
    "png": [valid_png(), encode(noise(mode="L"), "PNG"),
            encode(noise(mode="P"), "PNG", optimize=True)],
    "jpeg": [valid_jpeg(), encode(noise(mode="L"), "JPEG"),
             encode(noise(), "JPEG", progressive=True)],
    "dicom": [dicom_bytes(), dicom_bytes(24, 20, modality="CR")],
}
FILENAMES = {"png": "scan.png", "jpeg": "scan.jpg", "dicom": "slice.dcm"}


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory):
    models = tmp_path_factory.mktemp("fuzz_models")
    install(tiny_model(), models, "vgg16", "ct", TINY_CARD)
    app = create_app(make_config(tmp_path_factory.mktemp("fuzz_app"), MODEL_DIR=str(models)))
    return app.test_client()


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A seed file with a few byte-level edits, biased towards the headers."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        limit = len(data) - 1 if draw(st.booleans()) else min(len(data) - 1, 400)
        at = draw(st.integers(0, limit))
        operation = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate",
                                          "repeat"]))
        if operation == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "set":
            data[at] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "delete":
            del data[at:at + draw(st.integers(1, 32))]
        elif operation == "truncate":
            del data[at:]
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 64))] * draw(st.integers(1, 8))
    return bytes(data)


def post(client, data: bytes, filename: str):
    return client.post("/api/v1/predict", data={"image": (io.BytesIO(data), filename),
                                                "modality": "ct", "model": "vgg16"})


def check(response) -> None:
    assert response.status_code in CONTRACT_STATUSES, response.get_data(as_text=True)[:500]
    body = response.get_json()
    if response.status_code == 200:
        assert body["results"][0]["label"] in ("COVID", "Non-COVID")
    else:
        assert body["error"]["message"] and "Traceback" not in body["error"]["message"]


@pytest.mark.parametrize("kind", sorted(SEEDS))
def test_seeds_are_accepted(fuzz_client, kind):
    for seed in SEEDS[kind]:
        assert post(fuzz_client, seed, FILENAMES[kind]).status_code == 200


@FUZZ_SETTINGS
@given(data=mutated(SEEDS["png"]))
def test_fuzz_png(fuzz_client, data):
    check(post(fuzz_client, data, FILENAMES["png"]))


@FUZZ_SETTINGS
@given(data=mutated(SEEDS["jpeg"]))
def test_fuzz_jpeg(fuzz_client, data):
    check(post(fuzz_client, data, FILENAMES["jpeg"]))


@FUZZ_SETTINGS
@given(data=mutated(SEEDS["dicom"]))
def test_fuzz_dicom(fuzz_client, data):
    check(post(fuzz_client, data, FILENAMES["dicom"]))
