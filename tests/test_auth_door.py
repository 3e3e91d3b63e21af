"""What the door closes: the PACS's patient list, cross-site analyses, deleting another's
results; and what comes with identity: settings that refuse to start without a door,
headers, trusted hosts, one analysis per running PACS study."""

from __future__ import annotations

import pytest

from app import create_app
from auth.errors import AuthNotConfigured
from extensions import db
from pacs.fetch import pacs_study
from studies.models import RUNNING, Study

from .conftest import TEST_PASSWORD, signed_in, testing_config

DEAD_PACS = "http://127.0.0.1:9/dicom-web"
UID = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture
def hospital(app_factory, tiny_model_dir):
    return app_factory(MODEL_DIR=str(tiny_model_dir), AUTH_METHODS="local",
                       DICOMWEB_URL=DEAD_PACS, DICOMWEB_TIMEOUT_S=2)


def pacs_analysis(app, status=RUNNING) -> str:
    with app.app_context():
        study = pacs_study(UID, "ct", "vgg16", False)
        study.status = status
        db.session.add(study)
        db.session.commit()
        return study.id


def count_studies(app) -> int:
    with app.app_context():
        return db.session.query(Study).count()


def test_the_pacs_list_is_never_shown_to_a_visitor(hospital):
    page = hospital.test_client().get("/pacs")
    assert page.status_code == 302 and page.headers["Location"].startswith("/login?next=/pacs")
    api = hospital.test_client().get("/api/v1/pacs/studies")
    assert api.status_code == 401 and api.headers["WWW-Authenticate"] == 'Bearer realm="lungscan"'


def test_a_cross_site_form_post_with_a_session_starts_nothing(hospital):
    signed_in(hospital, role="analyst", name="ana")
    browser = hospital.test_client()
    assert browser.post("/login", data={"username": "ana", "password": TEST_PASSWORD}
                        ).status_code == 303
    before = count_studies(hospital)
    answer = browser.post(f"/api/v1/pacs/studies/{UID}/analyses",
                          data={"modality": "ct", "model": "vgg16"},
                          headers={"Origin": "https://evil.example"})
    assert answer.status_code == 401 and answer.get_json()["error"]["code"] == "unauthenticated"
    assert count_studies(hospital) == before


def test_nobody_but_a_reader_opens_or_deletes_a_pacs_analysis(hospital):
    study_id = pacs_analysis(hospital, status="done")
    anonymous = hospital.test_client()
    assert anonymous.delete(f"/api/v1/studies/{study_id}").status_code == 404
    assert anonymous.get(f"/api/v1/studies/{study_id}").status_code == 404
    reader = hospital.test_client()
    signed_in(hospital, reader, role="reader")
    assert reader.get(f"/api/v1/studies/{study_id}").status_code == 200
    assert count_studies(hospital) == 1


def test_a_running_pacs_analysis_is_returned_not_started_again(hospital):
    running = pacs_analysis(hospital)
    analyst = hospital.test_client()
    signed_in(hospital, analyst, role="analyst")
    answer = analyst.post(f"/api/v1/pacs/studies/{UID}/analyses",
                          data={"modality": "ct", "model": "vgg16"})
    assert answer.status_code == 202 and answer.get_json()["id"] == running
    assert count_studies(hospital) == 1
    reader = hospital.test_client()
    signed_in(hospital, reader, role="reader")
    assert reader.post(f"/api/v1/pacs/studies/{UID}/analyses",
                       data={"modality": "ct"}).status_code == 403


def test_patient_data_without_a_sign_in_method_refuses_to_start(tmp_path):
    with pytest.raises(AuthNotConfigured, match="AUTH_METHODS=local"):
        create_app(testing_config(tmp_path, DICOMWEB_URL=DEAD_PACS, AUTH_METHODS=""))
    with pytest.raises(AuthNotConfigured, match="no sign-in method"):
        create_app(testing_config(tmp_path, PUBLIC_ACCESS=False))
    with pytest.raises(AuthNotConfigured, match="OIDC_ISSUER"):
        create_app(testing_config(tmp_path, AUTH_METHODS="oidc"))


def test_without_public_access_only_sign_in_health_and_static_stay_open(app_factory):
    closed = app_factory(AUTH_METHODS="local", PUBLIC_ACCESS=False).test_client()
    for path in ("/login", "/healthz", "/static/css/style.css"):
        assert closed.get(path).status_code == 200, path
    assert closed.get("/readyz").status_code in (200, 503)
    assert closed.get("/").status_code == 302
    assert closed.post("/api/v1/predict").status_code == 401
    assert closed.get("/api/v1/models").status_code == 401


def test_api_answers_and_signed_in_pages_are_never_cached(hospital):
    anonymous = hospital.test_client()
    assert anonymous.get("/api/v1/models").headers["Cache-Control"] == "no-store"
    reader = hospital.test_client()
    signed_in(hospital, reader, role="reader")
    assert reader.get("/studies/").headers["Cache-Control"] == "no-store"
    assert reader.get("/static/css/style.css").headers.get("Cache-Control") == "no-store"


def test_https_brings_hsts_and_secure_cookies(app_factory):
    plain = app_factory(AUTH_METHODS="local")
    assert "Strict-Transport-Security" not in plain.test_client().get("/login").headers
    proxied = app_factory(AUTH_METHODS="local", PROXY_FIX_X_FOR=1)
    signed_in(proxied, name="ada", role="reader")
    client = proxied.test_client()
    answer = client.post("/login", data={"username": "ada", "password": TEST_PASSWORD},
                         headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "10.0.0.9"})
    assert answer.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    assert "Secure" in answer.headers["Set-Cookie"] and "HttpOnly" in answer.headers["Set-Cookie"]
    preferring = app_factory(AUTH_METHODS="local", PREFER_HTTPS=True).test_client()
    assert "Strict-Transport-Security" in preferring.get("/login").headers


def test_only_trusted_host_names_are_answered(app_factory):
    app = app_factory(TRUSTED_HOSTS="lungscan.example, localhost")
    client = app.test_client()
    assert client.get("/healthz", headers={"Host": "lungscan.example"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "evil.example"}).status_code == 400


def test_a_reader_sees_the_pacs_list_without_the_analyse_form(hospital, monkeypatch):
    from pacs import service as pacs

    monkeypatch.setattr(pacs, "browse", lambda *a, **k: [{
        "study_uid": UID, "date": "20260101", "description": "Chest", "modalities": ["CT"],
        "series": 1, "images": 3, "patient_name": "Doe^Jane", "patient_id": "P1"}])
    reader, analyst = hospital.test_client(), hospital.test_client()
    signed_in(hospital, reader, role="reader")
    signed_in(hospital, analyst, role="analyst")
    as_reader = reader.get("/pacs").get_data(as_text=True)
    assert UID in as_reader and "pacs-analyse" not in as_reader and "analysts only" in as_reader
    assert "pacs-analyse" in analyst.get("/pacs").get_data(as_text=True)
