"""The studies API end to end, through the real queue (Huey on SQLite) and real models."""

from __future__ import annotations

import base64
import io
import logging

import pytest
from sqlalchemy import func, select

from extensions import db
from studies.models import Study, StudyFile, StudyHeatmap, StudyImage

from .conftest import reconfigure, testing_config
from .dicom_factory import PATIENT_ID, PATIENT_NAME
from .model_factory import scan_like_png
from .study_helpers import ct_series, image_fields, submit, wait_for_study, zip_of


@pytest.fixture
def study_app(tmp_path, tiny_model_dir, instance_path):
    from app import create_app

    app = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_model_dir),
                                    EMBEDDED_WORKER=True))
    yield app
    app.extensions["job_queue"].stop_embedded_worker()


@pytest.fixture
def client(study_app):
    return study_app.test_client()


def row_counts(app) -> dict:
    with app.app_context():
        return {table.__tablename__: db.session.scalar(select(func.count()).select_from(table))
                for table in (Study, StudyImage, StudyFile, StudyHeatmap)}


def test_submit_answers_202_at_once_then_the_worker_finishes(client):
    answer = submit(client, modality="ct", model="vgg16", archive=(io.BytesIO(zip_of(
        ct_series(12))), "series.zip"))
    assert answer.status_code == 202
    body = answer.get_json()
    assert body["status"] == "queued"
    assert answer.headers["Location"] == body["url"] == f"/api/v1/studies/{body['id']}"
    view = wait_for_study(client, body["url"])
    assert view["status"] == "done"
    assert view["progress"] == {"done": 12, "total": 12}
    assert [m["architecture"] for m in view["models"]] == ["vgg16"]
    assert view["verdict"]["total_images"] == 12
    assert "consecutive slices" in view["verdict"]["rule"]
    assert "not a medical device" in view["disclaimer"]


def test_ids_are_random_and_a_guessed_id_finds_nothing(client):
    ids = []
    for seed in range(2):
        answer = submit(client, modality="ct", model="vgg16",
                        images=image_fields([("a.png", scan_like_png(seed=seed))]))
        ids.append(answer.get_json()["id"])
    assert ids[0] != ids[1]
    for study_id in ids:
        assert len(base64.urlsafe_b64decode(study_id + "=" * (-len(study_id) % 4))) >= 16
    neighbour = ids[0][:-1] + ("A" if ids[0][-1] != "A" else "B")
    for guess in (neighbour, ids[0].upper(), "1", "../" + ids[0], ids[0] + "x"):
        answer = client.get(f"/api/v1/studies/{guess}")
        assert answer.status_code == 404
        assert answer.get_json()["error"]["code"] == "not_found"


def test_each_image_equals_the_single_image_api(client):
    pngs = [(f"x{i}.png", scan_like_png(seed=i)) for i in range(5)]
    answer = submit(client, modality="ct", model="all", images=image_fields(pngs))
    view = wait_for_study(client, answer.get_json()["url"])
    assert [image["name"] for image in view["images"]] == [name for name, _ in pngs]
    for (name, data), image in zip(pngs, view["images"]):
        alone = client.post("/api/v1/predict", data={
            "modality": "ct", "model": "all", "image": (io.BytesIO(data), name)}).get_json()
        assert len(image["results"]) == len(alone["results"]) == 3
        for mine, single in zip(image["results"], alone["results"]):
            assert mine["architecture"] == single["architecture"]
            assert mine["covid_probability"] == pytest.approx(single["covid_probability"],
                                                              abs=1e-4)
            assert mine["label"] == single["label"]
        assert image["combined"]["label"] == alone["ensemble"]["label"]


def test_dicom_slices_come_back_in_instance_order_not_file_name_order(client):
    series = ct_series(20, seed=3)
    assert [name for name, _ in series] != sorted(name for name, _ in series)
    answer = submit(client, modality="ct", model="vgg16",
                    archive=(io.BytesIO(zip_of(series)), "s.zip"))
    view = wait_for_study(client, answer.get_json()["url"])
    assert [image["instance_number"] for image in view["images"]] == list(range(1, 21))
    assert len({image["series_uid"] for image in view["images"]}) == 1


def test_one_corrupt_slice_is_reported_and_the_rest_answer(client):
    series = ct_series(15)
    series[7] = ("IMG9999.dcm", series[7][1][:400])  # a header, then nothing
    answer = submit(client, modality="ct", model="vgg16",
                    archive=(io.BytesIO(zip_of(series)), "s.zip"))
    view = wait_for_study(client, answer.get_json()["url"])
    failed = [image for image in view["images"] if image["status"] == "failed"]
    assert [image["name"] for image in failed] == ["IMG9999.dcm"]
    assert failed[0]["error"]["message"]
    assert view["status"] == "done"
    assert view["verdict"]["total_images"] == 14
    assert sum(image["status"] == "done" for image in view["images"]) == 14


def test_non_images_in_a_zip_are_skipped_with_a_note(client):
    files = ct_series(6) + [("DICOMDIR", b"\0" * 200), ("README.txt", b"hello"),
                            (".DS_Store", b"\0\0\0\1Bud1")]
    answer = submit(client, modality="ct", model="vgg16",
                    archive=(io.BytesIO(zip_of(files)), "s.zip"))
    view = wait_for_study(client, answer.get_json()["url"])
    assert view["progress"]["total"] == 6
    note = next(w for w in view["warnings"] if "Skipped" in w)
    for name in ("DICOMDIR", "README.txt", ".DS_Store"):
        assert name in note


def test_pixels_go_once_analysed_and_delete_removes_every_trace(client, study_app):
    answer = submit(client, modality="ct", model="all", explain="1",
                    images=image_fields([(f"a{i}.png", scan_like_png(seed=i)) for i in range(4)]))
    url = answer.get_json()["url"]
    view = wait_for_study(client, url)
    counts = row_counts(study_app)
    assert counts["study_files"] == 0  # every uploaded byte deleted once analysed
    assert counts["study_heatmaps"] == 4 * 3  # one per image and model, as asked
    assert all(r["label"] for image in view["images"] for r in image["results"])
    assert client.delete(url).status_code == 204
    assert row_counts(study_app) == {"studies": 0, "study_images": 0, "study_files": 0,
                                     "study_heatmaps": 0}
    assert client.get(url).status_code == 404
    assert client.get(url + "/results.csv").status_code == 404
    assert client.delete(url).status_code == 404


def test_csv_has_a_row_per_image_and_model_and_no_formula(client):
    answer = submit(client, modality="ct", model="all",
                    images=image_fields([("=cmd|' /C calc'!A0.png", scan_like_png()),
                                         ("b.png", scan_like_png(seed=1))]))
    url = answer.get_json()["url"]
    wait_for_study(client, url)
    csv = client.get(url + "/results.csv")
    assert csv.mimetype == "text/csv"
    lines = csv.get_data(as_text=True).strip().splitlines()
    assert lines[0].startswith("index,name,series_uid")
    assert len(lines) == 1 + 2 * 3
    assert all(",=" not in line for line in lines[1:])


def test_no_patient_tag_reaches_the_results_the_csv_or_the_log(client, caplog):
    caplog.set_level(logging.DEBUG)
    series = ct_series(8) + ct_series(3, patient_id="OTHER-PATIENT-77", prefix="B")
    answer = submit(client, modality="ct", model="vgg16",
                    archive=(io.BytesIO(zip_of(series)), "s.zip"))
    url = answer.get_json()["url"]
    view = wait_for_study(client, url)
    assert any("more than one patient" in w for w in view["warnings"])
    assert any("series" in w for w in view["warnings"])
    everything = (client.get(url).get_data(as_text=True)
                  + client.get(url + "/results.csv").get_data(as_text=True) + caplog.text)
    for secret in (PATIENT_NAME, PATIENT_ID, "Testpatient", "OTHER-PATIENT-77", "19450317"):
        assert secret not in everything
    assert answer.get_json()["id"] not in caplog.text  # the id is the key: never logged


def test_results_expire_after_the_retention_time(tmp_path, tiny_model_dir, instance_path):
    from app import create_app
    from settings import settings_of
    from studies.service import housekeeping

    app = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_model_dir),
                                    EMBEDDED_WORKER=True))
    client = app.test_client()
    try:
        url = submit(client, modality="ct", model="vgg16", images=image_fields(
            [("a.png", scan_like_png())])).get_json()["url"]
        assert wait_for_study(client, url)["status"] == "done"
        reconfigure(app, STUDY_RETENTION_HOURS=1e-9)  # every finished study is now past it
        assert client.get(url).status_code == 404
        with app.app_context():
            _, purged = housekeeping(settings_of(app).studies)
        assert purged == 1
        assert row_counts(app)["study_images"] == 0
        with app.app_context():
            from audit.models import AuditEvent

            last = db.session.scalars(select(AuditEvent).order_by(
                AuditEvent.seq.desc())).first()
            assert (last.action, last.actor_name, last.target) == (
                "deleted", "system", {"reason": "retention"})
            assert last.study == url.rsplit("/", 1)[1][:8]
    finally:
        app.extensions["job_queue"].stop_embedded_worker()


def test_the_openapi_document_describes_every_study_route(client, study_app):
    document = client.get("/api/v1/openapi.json").get_json()
    paths = document["paths"]
    assert set(paths["/api/v1/studies"]) == {"post"}
    assert set(paths["/api/v1/studies/{study_id}"]) >= {"get", "delete"}
    assert "get" in paths["/api/v1/studies/{study_id}/results.csv"]
    documented = {rule.rule.replace("<study_id>", "{study_id}")
                  for rule in study_app.url_map.iter_rules()
                  if rule.rule.startswith("/api/v1/studies")}
    assert documented <= set(paths)
    study = document["components"]["schemas"]["Study"]["properties"]
    assert set(study["status"]["enum"]) == {"queued", "running", "done", "failed"}


def test_a_progress_poll_can_leave_the_images_out(client):
    url = submit(client, modality="ct", model="vgg16", images=image_fields(
        [(f"p{i}.png", scan_like_png(seed=i)) for i in range(3)])).get_json()["url"]
    wait_for_study(client, url)
    light = client.get(url + "?images=0").get_json()
    assert "images" not in light and light["progress"] == {"done": 3, "total": 3}
    assert light["verdict"]["total_images"] == 3
    assert len(client.get(url).get_json()["images"]) == 3


def test_a_study_id_never_starts_like_a_command_line_option():
    from studies.store import new_study_id

    ids = [new_study_id() for _ in range(3000)]  # 1 in 64 would start with "-"
    assert not any(study_id.startswith("-") for study_id in ids)
    assert {len(study_id) for study_id in ids} == {32} and len(set(ids)) == 3000
