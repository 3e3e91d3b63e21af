"""Hostile or broken study uploads: a clear error, and nothing stored or queued."""

from __future__ import annotations

import io
import os
import zipfile

import pytest

from .model_factory import png_bytes, scan_like_png
from .study_helpers import ct_series, image_fields, submit, zip_of
from .test_studies_api import row_counts

NOTHING = {"studies": 0, "study_images": 0, "study_files": 0, "study_heatmaps": 0}


@pytest.fixture
def small_limits_app(tmp_path, tiny_model_dir, instance_path):
    """Limits small enough to cross in a test (no worker: nothing may be queued)."""
    from app import create_app

    from .conftest import testing_config

    return create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_model_dir),
                                     MAX_STUDY_IMAGES=20, MAX_STUDY_BYTES=2_000_000))


def zip_bytes(entries: list[tuple[str, bytes]], method=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


ONE_SLICE = ct_series(1)[0][1]
CASES = {
    "nested zip": ([("inner.zip", zip_bytes([("a.dcm", ONE_SLICE)]))], 422, "unsafe_archive"),
    "nested zip under an innocent name": (
        [("a.dcm", ONE_SLICE), ("b.dcm", zip_bytes([("a.dcm", ONE_SLICE)]))],
        422, "unsafe_archive"),
    "climbing path": ([("../../etc/cron.d/x.dcm", ONE_SLICE)], 422, "unsafe_archive"),
    "absolute path": ([("/etc/passwd.dcm", ONE_SLICE)], 422, "unsafe_archive"),
    "windows absolute path": ([("C:\\Windows\\x.dcm", ONE_SLICE)], 422, "unsafe_archive"),
    "zip bomb": ([("bomb.dcm", b"\0" * 50_000_000)], 422, "unsafe_archive"),
    "more bytes than a study may hold": ([(f"r{i}.dcm", os.urandom(800_000)) for i in range(3)],
                                         413, "study_too_large"),
    "too many images": ([(f"s{i}.png", scan_like_png(size=(32, 32), seed=i))
                         for i in range(21)], 413, "study_too_large"),
    "thousands of tiny files": ([(f"t{i}", b"x") for i in range(3000)], 413,
                                "study_too_large"),
    "no image": ([("README.txt", b"hello"), ("notes.md", b"# notes")], 422,
                 "unprocessable_image"),
    "empty archive": ([], 422, "unprocessable_image"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hostile_archive_is_refused_and_nothing_is_stored(small_limits_app, case):
    entries, status, code = CASES[case]
    client = small_limits_app.test_client()
    answer = submit(client, modality="ct", model="vgg16",
                    archive=(io.BytesIO(zip_bytes(entries)), "study.zip"))
    assert answer.status_code == status, answer.get_json()
    error = answer.get_json()["error"]
    assert error["code"] == code
    assert error["message"] and "Traceback" not in error["message"]
    assert row_counts(small_limits_app) == NOTHING


@pytest.mark.parametrize("fields, status", [
    ({}, 400),  # no file at all
    ({"modality": "ct", "model": "vgg16"}, 400),
    ({"modality": "mri", "model": "vgg16", "images": "png"}, 400),
    ({"modality": "ct", "model": "alexnet", "images": "png"}, 400),
    ({"modality": "ct", "model": "vgg16", "explain": "maybe", "images": "png"}, 400),
    ({"modality": "ct", "model": "resnet50", "images": "png"}, 503),  # not installed
    ({"modality": "ct", "model": "vgg16", "images": "png", "archive": "zip"}, 400),
    ({"modality": "ct", "model": "vgg16", "archive": "not a zip"}, 415),
    ({"modality": "ct", "model": "vgg16", "images": "zip"}, 422),  # an archive as an image
])
def test_bad_fields_get_a_clear_error_and_store_nothing(small_limits_app, fields, status):
    client = small_limits_app.test_client()
    files = {"png": lambda: [(io.BytesIO(png_bytes()), "a.png")],
             "zip": lambda: (io.BytesIO(zip_of(ct_series(2))), "s.zip"),
             "not a zip": lambda: (io.BytesIO(b"PK\3\4 but broken" * 10), "s.zip")}
    data = {k: files[v]() if v in files else v for k, v in fields.items()}
    answer = submit(client, **data)
    assert answer.status_code == status, answer.get_json()
    assert answer.get_json()["error"]["message"]
    assert row_counts(small_limits_app) == NOTHING


def test_a_body_over_the_study_limit_is_refused_before_it_is_read(small_limits_app):
    client = small_limits_app.test_client()
    answer = submit(client, modality="ct", model="vgg16",
                    images=image_fields([("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 3_200_000)]))
    assert answer.status_code == 413
    assert row_counts(small_limits_app) == NOTHING


def test_more_parts_than_images_allowed_is_refused(small_limits_app):
    client = small_limits_app.test_client()
    tiny = png_bytes(size=(8, 8))
    answer = submit(client, modality="ct", model="vgg16",
                    images=image_fields([(f"{i}.png", tiny) for i in range(60)]))
    assert answer.status_code == 413
    assert row_counts(small_limits_app) == NOTHING


def test_a_study_larger_than_one_image_limit_is_accepted(tmp_path, tiny_model_dir,
                                                          instance_path):
    """The single-image body limit (MAX_CONTENT_LENGTH) does not cap a study."""
    from app import create_app

    from .conftest import testing_config

    app = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_model_dir),
                                    MAX_CONTENT_LENGTH=200_000))
    series = ct_series(60)
    body = zip_bytes(series, zipfile.ZIP_STORED)
    assert len(body) > 200_000
    answer = submit(app.test_client(), modality="ct", model="vgg16",
                    archive=(io.BytesIO(body), "s.zip"))
    assert answer.status_code == 202
    assert row_counts(app)["study_files"] == 60
