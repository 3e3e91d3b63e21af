"""An analyst retries one failed PACS write-back: ``POST /api/v1/studies/<id>/write-back``
(bearer token) and the study page's button (session cookie, CSRF token).

The first test is the whole story against a real Orthanc: the write fails while the
PACS is down, the analyst asks again once it is back, the report is written once, and
the trail names the analyst as who asked. The others walk every answer the route gives
(202, 409, 404, 403, 401) on study rows made for them, and the page's form.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from audit import actions
from audit.models import AuditEvent
from auth import accounts
from config import Config
from extensions import db
from studies.models import Study, utcnow_naive

from .conftest import TEST_PASSWORD, run_queued_jobs, signed_in
from .test_pacs_write_retry import (add_study, analysed_pacs_study, series_in_pacs,
                                    stop_at_store, with_orthanc)

DEAD_PACS = "http://127.0.0.1:9/dicom-web"
CSRF_INPUT = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


VERDICT = {"label": "COVID", "covid_probability": 0.7, "positive_images": 1,
           "total_images": 1, "longest_positive_run": 1, "rule": "mean probability"}


def pacs_row(study_id: str, **values) -> None:
    """A finished PACS study's row, with what its page shows (in an app context)."""
    add_study(study_id, **{"verdict": VERDICT, "finished_at": utcnow_naive(), **values})


def retry(client, study_id: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post(f"/api/v1/studies/{study_id}/write-back", headers=headers)


def write_back_events(app) -> list[tuple]:
    with app.app_context():
        return [(e.action, e.actor_name, e.actor_method, e.outcome) for e in db.session.scalars(
            select(AuditEvent).where(AuditEvent.action.in_(
                (actions.WRITE_BACK_DONE, actions.WRITE_BACK_FAILED))).order_by(AuditEvent.seq))]


@with_orthanc
def test_an_analyst_retries_a_failed_write_back_once_the_pacs_is_back(
        tmp_path, tiny_model_dir, orthanc, instance_path, monkeypatch):
    app, client, study_uid, url = analysed_pacs_study(
        tmp_path, tiny_model_dir, orthanc, 2, "R", "Chest CT, retried by hand",
        PACS_WRITE_RETRY_S=3600, PACS_WRITE_LEASE_S=300)  # no automatic try meanwhile
    study_id = url.rsplit("/", 1)[1]
    stop_at_store(monkeypatch, orthanc, call=1)
    run_queued_jobs(app)
    assert client.get(url).get_json()["write_back"]["status"] == "retrying"
    orthanc.start()
    reader = signed_in(app, role="reader", name="rita")
    assert retry(app.test_client(), study_id, reader).status_code == 403

    analyst = signed_in(app, role="analyst", name="ana")
    answer = retry(app.test_client(), study_id, analyst)
    assert answer.status_code == 202, answer.get_json()
    assert answer.headers["Location"] == url
    assert answer.get_json() == {"id": study_id, "url": url, "write_back": {
        "status": "pending", "attempts": 0, "error": None, "next_try": None}}
    again = retry(app.test_client(), study_id, analyst)  # a second click: already queued
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "nothing_to_retry"
    assert app.extensions["tasks"].housekeeping() == 0  # held for the job just queued
    pending = app.extensions["job_queue"].huey.pending()
    assert [(task.name, task.args[0], task.args[1][1:4]) for task in pending] == [
        ("pacs_write_back", study_id, ["ana", "analyst", "token"])]

    assert run_queued_jobs(app) == 1
    view = client.get(url).get_json()
    assert view["write_back"]["status"] == "written"
    assert series_in_pacs(orthanc, study_uid)["SR"] == [view["written"][0]["sop_instance_uid"]]
    assert write_back_events(app) == [
        (actions.WRITE_BACK_FAILED, "system", "system", "failure"),
        (actions.WRITE_BACK_DONE, "ana", "token", "success")]
    written = retry(app.test_client(), study_id, analyst)
    assert written.status_code == 409
    assert "already written" in written.get_json()["error"]["message"]


@pytest.fixture
def rows(app_factory, tiny_model_dir):
    """An app (no PACS reachable) with one study row per case, and tokens."""
    app = app_factory(MODEL_DIR=str(tiny_model_dir), DICOMWEB_URL=DEAD_PACS)
    tokens = {role: signed_in(app, role=role, name=role) for role in
              ("reader", "analyst", "admin")}
    past, later = utcnow_naive() - timedelta(seconds=5), utcnow_naive() + timedelta(hours=1)
    with app.app_context():
        analyst_id, reader_id = accounts.get("analyst").id, accounts.get("reader").id
        pacs_row("retrying", write_attempts=1, write_error="down", write_after=later)
        add_study("worn-out", write_attempts=Config.PACS_WRITE_MAX_ATTEMPTS,
                  write_error="down", write_after=past)
        add_study("pending", write_after=later)  # its first write is under way
        add_study("off", write_after=None)
        add_study("written", written=[{"sop_instance_uid": "1.2"}], write_after=None)
        add_study("running", status="running")
        add_study("analysis-failed", status="failed", write_after=None)
        add_study("my-upload", source="upload", pacs_study_uid=None, owner_id=analyst_id,
                  write_after=None)
        add_study("their-upload", source="upload", pacs_study_uid=None, owner_id=reader_id,
                  write_after=None)
    return app, tokens


@pytest.mark.parametrize("study_id, status, words", [
    ("retrying", 202, None),
    ("worn-out", 202, None),  # past the automatic tries: a new round of them
    ("pending", 409, "still under way"),
    ("off", 409, "Write-back was off"),
    ("written", 409, "already written"),
    ("running", 409, "still running"),
    ("analysis-failed", 409, "analysis failed"),
    ("my-upload", 409, "did not come from the PACS"),
    ("their-upload", 404, "No study has this id"),
    ("no-such-study", 404, "No study has this id"),
])
def test_only_a_failed_pacs_write_back_is_retried(rows, study_id, status, words):
    app, tokens = rows
    answer = retry(app.test_client(), study_id, tokens["analyst"])
    assert answer.status_code == status, answer.get_json()
    if status == 202:
        assert answer.get_json()["write_back"] == {"status": "pending", "attempts": 0,
                                                   "error": None, "next_try": None}
        pending = app.extensions["job_queue"].huey.pending()
        assert [(task.name, task.args[0]) for task in pending] == [
            ("pacs_write_back", study_id)]
        return
    body = answer.get_json()["error"]
    assert body["code"] == ("nothing_to_retry" if status == 409 else "not_found")
    assert words in body["message"]
    assert app.extensions["job_queue"].huey.pending() == []


def test_readers_anonymous_callers_and_session_cookies_cannot_retry(rows):
    app, tokens = rows
    assert retry(app.test_client(), "retrying", tokens["reader"]).status_code == 403
    anonymous = retry(app.test_client(), "retrying")
    assert anonymous.status_code == 401 and "Bearer" in anonymous.headers["WWW-Authenticate"]
    browser = app.test_client()
    assert browser.post("/login", data={"username": "analyst", "password": TEST_PASSWORD}
                        ).status_code == 303
    assert browser.get("/studies/retrying").status_code == 200  # signed in by cookie...
    assert retry(browser, "retrying").status_code == 401  # ...which moves no API call
    assert app.extensions["job_queue"].huey.pending() == []


def page_form(client, study_id: str):
    """The study page and its retry form's CSRF token (None without the form)."""
    page = client.get(f"/studies/{study_id}").get_data(as_text=True)
    form = re.search(r'<form[^>]*id="retry-write-back-form".*?</form>', page, re.S)
    return page, (CSRF_INPUT.search(form[0])[1] if form else None)


def test_the_study_page_button_retries_with_its_csrf_token(app_factory, tiny_model_dir):
    app = app_factory(MODEL_DIR=str(tiny_model_dir), DICOMWEB_URL=DEAD_PACS,
                      WTF_CSRF_ENABLED=True)
    with app.app_context():
        for role in ("reader", "analyst"):
            accounts.create(role, role, TEST_PASSWORD)
        pacs_row("retrying", write_attempts=1, write_error="down",
                 write_after=utcnow_naive() + timedelta(hours=1))
        pacs_row("written", written=[{"sop_instance_uid": "1.2"}], write_after=None)
    browsers = {}
    for role in ("reader", "analyst"):
        browsers[role] = browser = app.test_client()
        login = browser.get("/login").get_data(as_text=True)
        assert browser.post("/login", data={
            "csrf_token": CSRF_INPUT.search(login)[1], "username": role,
            "password": TEST_PASSWORD}).status_code == 303
    assert page_form(browsers["reader"], "retrying")[1] is None  # readers see no button
    assert page_form(browsers["analyst"], "written")[1] is None  # nothing failed
    analyst = browsers["analyst"]
    _page, token = page_form(analyst, "retrying")
    assert token is not None
    assert analyst.post("/studies/retrying/write-back").status_code == 400  # no token
    assert app.extensions["job_queue"].huey.pending() == []
    done = analyst.post("/studies/retrying/write-back", data={"csrf_token": token})
    assert done.status_code == 303 and done.headers["Location"] == "/studies/retrying"
    page, token = page_form(analyst, "retrying")
    assert "The write-back into the PACS is queued again." in page and token is None
    assert 'id="write-back" data-status="pending"' in page
    assert [task.args[1][1] for task in app.extensions["job_queue"].huey.pending()] == [
        "analyst"]
    reader_page = browsers["reader"].get("/studies/retrying").get_data(as_text=True)
    reader_try = browsers["reader"].post("/studies/retrying/write-back", data={
        "csrf_token": CSRF_INPUT.search(reader_page)[1]})  # the delete form's token
    assert reader_try.status_code == 403
    with app.app_context():
        assert db.session.get(Study, "retrying").write_attempts == 0
