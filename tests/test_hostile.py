"""Every hostile upload gets its contract status and a clear message, never a 500.

The corpus runs twice: in-process (exact logs, fast) and against a real gunicorn
server (real HTTP parsing, and the server must answer normally after each case).
"""

from __future__ import annotations

import logging

import pytest

from app import create_app

from .conftest import testing_config as make_config
from .hostile_corpus import CASES, HostileCase, upload, valid_png

STACK_TRACE_SIGNS = ("Traceback", 'File "', "Error:", "site-packages", "werkzeug")


@pytest.fixture(scope="module")
def hostile_app(tmp_path_factory, hostile_models):
    tmp = tmp_path_factory.mktemp("hostile_app")
    return create_app(make_config(tmp, MODEL_DIR=str(hostile_models)))


def send(client, case: HostileCase):
    request = case.build()
    return client.open(request.path, method=request.method, data=request.body,
                       content_type=request.content_type)


def check_contract(case: HostileCase, status: int, content_type: str, body: dict | None,
                   text: str) -> None:
    """The assertions shared by the in-process and real-server runs."""
    assert status != 500
    assert status == case.status, f"{case.kind}: {status} {text[:300]}"
    assert content_type.startswith("application/json"), content_type
    for sign in STACK_TRACE_SIGNS:
        assert sign not in text, f"{case.kind} leaks {sign!r}: {text[:300]}"
    assert len(text) < 4000, f"{case.kind}: the answer echoes too much ({len(text)} bytes)"
    if status == 200:
        assert body["results"], text
        if case.warning:
            assert any(case.warning in w for w in body["warnings"]), body["warnings"]
        return
    error = body["error"]
    assert error["code"] and error["message"]
    assert case.message.lower() in error["message"].lower(), error["message"]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_hostile_upload_in_process(hostile_app, case, caplog):
    client = hostile_app.test_client()
    with caplog.at_level(logging.WARNING):
        response = send(client, case)
    check_contract(case, response.status_code, response.content_type,
                   response.get_json(silent=True), response.get_data(as_text=True))
    assert not [r for r in caplog.records if r.exc_info], "a hostile upload raised unhandled"
    healthy = client.post("/api/v1/predict", data={"image": (valid_png_file(), "ok.png"),
                                                    "modality": "ct", "model": "vgg16"})
    assert healthy.status_code == 200


def valid_png_file():
    import io

    return io.BytesIO(valid_png())


def test_corpus_covers_the_required_kinds():
    kinds = {case.kind for case in CASES}
    assert len(kinds) >= 30
    for required in ["empty_file", "text_with_png_extension", "truncated_png", "truncated_jpeg",
                     "png_decompression_bomb", "png_header_over_pixel_limit", "png_zero_pixels",
                     "png_one_pixel", "polyglot_png_then_zip", "svg_with_script",
                     "html_with_script_as_png", "filename_path_traversal", "filename_nul_byte",
                     "body_100_mb", "missing_image_field", "repeated_image_field",
                     "modality_not_utf8", "unknown_modality", "unknown_model",
                     "dicom_without_pixel_data", "dicom_header_then_garbage"]:
        assert required in kinds


def test_bad_upload_on_the_page_is_a_friendly_html_error(hostile_app):
    """The site shows the message in its page, never JSON or a trace."""
    request = upload(b"<script>alert(1)</script>")
    response = hostile_app.test_client().post("/", data=request.body,
                                              content_type=request.content_type)
    assert response.status_code == 415
    html = response.get_data(as_text=True)
    assert response.mimetype == "text/html"
    assert "not a readable image" in html
    assert "<script>alert" not in html and "Traceback" not in html
