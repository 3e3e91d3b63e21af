"""The write-back into the PACS survives a PACS that is down, a lost queue message and
several workers: a real Orthanc on loopback, real models, the app's own queue. What
reached the PACS is read back through Orthanc's REST API."""

from __future__ import annotations

import html as html_module
import logging
import re
import threading
import time
from datetime import timedelta

import requests
from sqlalchemy import update

from config import Config
from extensions import db
from jobs.retry import doubling_delay
from pacs import writeback
from pacs.client import PacsClient
from settings import settings_of
from studies.models import Study, utcnow_naive

from .conftest import reconfigure, run_queued_jobs, signed_in, testing_config
from .orthanc_server import needs_orthanc
from .study_helpers import ct_series
from .test_pacs_analysis import upload_study, wait_written


def with_orthanc(test):
    for mark in needs_orthanc:
        test = mark(test)
    return test


def make_app(tmp_path, model_dir, orthanc=None, **overrides):
    from app import create_app

    settings = dict(MODEL_DIR=str(model_dir), PACS_WRITE_RETRY_S=0.001,
                    PACS_WRITE_LEASE_S=1, WORKER_SWEEP_S=3600,
                    DICOMWEB_URL=orthanc.dicomweb_url if orthanc else
                    "http://127.0.0.1:9/dicom-web")
    settings.update(overrides)
    return create_app(testing_config(tmp_path, **settings))


def analyse(client, study_uid: str, **fields) -> str:
    answer = client.post(f"/api/v1/pacs/studies/{study_uid}/analyses",
                         data={"modality": "ct", "model": "vgg16", **fields})
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["url"]


def analysed_pacs_study(tmp_path, model_dir, orthanc, slices: int, prefix: str,
                        description: str, fields: dict | None = None, **overrides):
    """A CT series uploaded to Orthanc and its analysis requested through the API, by
    an app with these setting ``overrides``: (app, a client signed in as an analyst,
    study UID, the study's API url)."""
    app = make_app(tmp_path, model_dir, orthanc, **overrides)
    study_uid = upload_study(orthanc, ct_series(slices, prefix=prefix), description)
    client = app.test_client()
    signed_in(app, client)  # the PACS routes need a signed-in analyst
    return app, client, study_uid, analyse(client, study_uid, **(fields or {}))


def series_in_pacs(orthanc, study_uid: str) -> dict[str, list[str]]:
    """Modality -> SOP Instance UIDs of the PACS study, from Orthanc's own index."""
    found = requests.post(f"{orthanc.url}/tools/find", auth=orthanc.auth, timeout=30,
                          json={"Level": "Instance", "Expand": True,
                                "Query": {"StudyInstanceUID": study_uid}})
    found.raise_for_status()
    by_modality: dict[str, list[str]] = {}
    for instance in found.json():
        series = requests.get(f"{orthanc.url}/series/{instance['ParentSeries']}",
                              auth=orthanc.auth, timeout=30).json()
        by_modality.setdefault(series["MainDicomTags"]["Modality"], []).append(
            instance["MainDicomTags"]["SOPInstanceUID"])
    return by_modality


def sweep_until_queued(app, deadline_s: float = 60) -> int:
    """Housekeeping until it queues something (the retry's time must come first)."""
    tasks, end = app.extensions["tasks"], time.monotonic() + deadline_s
    while (queued := tasks.housekeeping()) == 0:
        assert time.monotonic() < end, "housekeeping never queued the write-back"
        time.sleep(0.05)
    return queued


def stop_at_store(monkeypatch, orthanc, call: int) -> list:
    """Orthanc stops at the ``call``-th STOW request, which then really fails."""
    real_store, calls = PacsClient.store, []

    def store(self, datasets):
        calls.append(len(datasets))
        if len(calls) == call:
            orthanc.stop()
        return real_store(self, datasets)

    monkeypatch.setattr(PacsClient, "store", store)
    return calls


def write_back_line(client, url: str) -> tuple[str, str]:
    """The study page's write-back line: its status and its words."""
    html = client.get(url.replace("/api/v1/studies/", "/studies/")).get_data(as_text=True)
    found = re.search(r'id="write-back" data-status="(\w+)">(.*?)</p>', html, re.S)
    assert found, "the study page has no write-back line"
    words = " ".join(html_module.unescape(re.sub(r"<[^>]+>", "", found[2])).split())
    return found[1], words


def study_row(app, url: str) -> Study:
    with app.app_context():
        row = db.session.get(Study, url.rsplit("/", 1)[1])
        db.session.expunge(row)
        return row


@with_orthanc
def test_a_pacs_down_mid_write_is_written_by_housekeeping_once_it_is_back(
        tmp_path, tiny_model_dir, orthanc, instance_path, monkeypatch):
    app, client, study_uid, url = analysed_pacs_study(
        tmp_path, tiny_model_dir, orthanc, 3, "W", "Chest CT, PACS goes down", {"explain": "1"},
        PACS_HEATMAP_FORMAT="sc")  # the report, then one store of three captures
    assert client.get(url).get_json()["write_back"]["status"] == "pending"
    # The report is stored, then the PACS stops before the heatmap captures.
    calls = stop_at_store(monkeypatch, orthanc, call=2)
    run_queued_jobs(app)
    view = client.get(url).get_json()
    assert view["status"] == "done" and calls == [1, 3] and view["written"] == []
    write_back = view["write_back"]
    assert (write_back["status"], write_back["attempts"]) == ("retrying", 1)
    assert write_back["error"] == f"The PACS at http://127.0.0.1:{orthanc.port} cannot be reached."
    assert write_back["next_try"].endswith("Z")
    assert write_back_line(client, url) == (
        "retrying", f"PACS write-back: try 1 failed ({write_back['error']}); the next try is "
        f"at {write_back['next_try'].replace('T', ' ').replace('Z', ' UTC')}.")

    orthanc.start()
    assert {k: len(v) for k, v in series_in_pacs(orthanc, study_uid).items()} == {
        "CT": 3, "SR": 1}
    assert sweep_until_queued(app) == 1
    assert run_queued_jobs(app) == 1
    view = client.get(url).get_json()
    assert view["write_back"] == {"status": "written", "attempts": 1, "error": None,
                                  "next_try": None}
    in_pacs = series_in_pacs(orthanc, study_uid)
    report, captures = view["written"][0], view["written"][1:]
    assert write_back_line(client, url) == (
        "written", "PACS write-back: the report and 3 heatmap instances are stored in the "
        "PACS study.")
    assert in_pacs["SR"] == [report["sop_instance_uid"]]  # written twice, stored once
    assert len(captures) == 3 and {uid for modality, uids in in_pacs.items()
                                   if modality not in ("CT", "SR") for uid in uids} == {
        capture["sop_instance_uid"] for capture in captures}
    assert app.extensions["tasks"].housekeeping() == 0  # nothing left to do


@with_orthanc
def test_a_lost_queue_message_is_queued_again_after_the_lease(
        tmp_path, tiny_model_dir, orthanc, instance_path, monkeypatch):
    app = make_app(tmp_path, tiny_model_dir, orthanc, EMBEDDED_WORKER=True,
                   WORKER_SWEEP_S=0.2)
    huey, lost = app.extensions["job_queue"].huey, []
    real_enqueue = huey.enqueue

    def enqueue(task):
        if task.name == "pacs_write_back" and not lost:
            lost.append(task.args)
            raise ConnectionError("the broker went away")
        return real_enqueue(task)

    monkeypatch.setattr(huey, "enqueue", enqueue)
    study_uid = upload_study(orthanc, ct_series(2, prefix="Q"), "Chest CT, job lost")
    client = app.test_client()
    signed_in(app, client)  # the PACS routes need a signed-in analyst
    try:
        url = analyse(client, study_uid)
        view = wait_written(client, url)
    finally:
        app.extensions["job_queue"].stop_embedded_worker()
    assert len(lost) == 1  # the job queued after the study was lost...
    assert view["write_back"] == {"status": "written", "attempts": 0, "error": None,
                                  "next_try": None}  # ...housekeeping queued another
    assert series_in_pacs(orthanc, study_uid)["SR"] == [view["written"][0]["sop_instance_uid"]]


def add_study(study_id: str, **values) -> None:
    row = dict(id=study_id, status="done", modality="ct", model="vgg16", source="pacs",
               pacs_study_uid="1.2.3.4", write_after=utcnow_naive() - timedelta(seconds=5))
    row.update(values)
    db.session.add(Study(**row))
    db.session.commit()


def test_two_apps_sweeping_one_database_reserve_a_due_study_once(tmp_path, instance_path):
    database = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    apps = [make_app(tmp_path / name, tmp_path / "models", SQLALCHEMY_DATABASE_URI=database)
            for name in ("a", "b")]
    with apps[0].app_context():
        add_study("due")
        add_study("later", write_after=utcnow_naive() + timedelta(hours=1))
        add_study("off", write_after=None)  # finished while write-back was off
        add_study("written", written=[{"sop_instance_uid": "1.2"}])
        add_study("worn-out", write_attempts=Config.PACS_WRITE_MAX_ATTEMPTS)
        add_study("running", status="running")
        add_study("upload", source="upload", pacs_study_uid=None)
    seen = []
    for app in apps:  # both look before either reserves: the UPDATE decides
        with app.app_context():
            seen.append(writeback.due_ids(settings_of(app).pacs))
    assert seen == [["due"], ["due"]]
    won = []
    for app in apps:
        with app.app_context():
            won.append(writeback.take("due", settings_of(app).pacs))
    assert won == [True, False]
    with apps[1].app_context():
        assert writeback.reserve_due(settings_of(apps[1]).pacs) == []  # held until its lease ends

    with apps[0].app_context():  # the lease ended (its job was lost)
        db.session.execute(update(Study).where(Study.id == "due")
                           .values(write_after=utcnow_naive() - timedelta(seconds=1)))
        db.session.commit()
    # Two housekeeping sweeps at once (the job queue is one per process: the last app's).
    tasks, start, counts = apps[1].extensions["tasks"], threading.Barrier(2), []

    def sweep():
        start.wait()
        counts.append(tasks.housekeeping())

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(counts) == [0, 1]
    pending = apps[1].extensions["job_queue"].huey.pending()
    assert [(task.name, task.args) for task in pending] == [
        ("pacs_write_back", ("due",))]


def test_the_retry_delay_doubles_up_to_an_hour():
    assert [doubling_delay(60, n, Config.PACS_WRITE_RETRY_MAX_S) for n in range(1, 9)] == [
        60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert doubling_delay(60, 10_000, Config.PACS_WRITE_RETRY_MAX_S) == 3600


@with_orthanc
def test_after_the_last_try_housekeeping_leaves_it_and_the_command_writes_it(
        tmp_path, tiny_model_dir, orthanc, instance_path, monkeypatch):
    app, client, study_uid, url = analysed_pacs_study(
        tmp_path, tiny_model_dir, orthanc, 2, "F", "Chest CT, long outage")
    stop_at_store(monkeypatch, orthanc, call=1)
    run_queued_jobs(app)
    assert client.get(url).get_json()["write_back"]["attempts"] == 1
    for attempts in range(2, Config.PACS_WRITE_MAX_ATTEMPTS + 1):  # the PACS stays down
        assert sweep_until_queued(app) == 1
        assert run_queued_jobs(app) == 1
        assert client.get(url).get_json()["write_back"]["attempts"] == attempts
    view = client.get(url).get_json()
    assert view["write_back"] == {
        "status": "failed", "attempts": Config.PACS_WRITE_MAX_ATTEMPTS, "next_try": None,
        "error": f"The PACS at http://127.0.0.1:{orthanc.port} cannot be reached."}
    status, words = write_back_line(client, url)
    assert status == "failed" and "flask pacs write-back" in words
    row = study_row(app, url)
    while utcnow_naive() <= row.write_after:  # past its time, yet out of automatic tries
        time.sleep(0.05)
    assert app.extensions["tasks"].housekeeping() == 0
    assert run_queued_jobs(app) == 0

    runner = app.test_cli_runner()
    study_id = url.rsplit("/", 1)[1]
    down = runner.invoke(args=["pacs", "write-back", study_id])
    assert down.exit_code != 0 and "cannot be reached" in down.output
    orthanc.start()
    done = runner.invoke(args=["pacs", "write-back", study_id])
    assert done.exit_code == 0, done.output
    assert "wrote 1 instances" in done.output
    view = client.get(url).get_json()
    assert view["write_back"]["status"] == "written" and view["write_back"]["error"] is None
    assert view["write_back"]["attempts"] == Config.PACS_WRITE_MAX_ATTEMPTS + 1
    assert view["written"][0]["sop_instance_uid"] in done.output
    assert series_in_pacs(orthanc, study_uid)["SR"] == [view["written"][0]["sop_instance_uid"]]
    again = runner.invoke(args=["pacs", "write-back", study_id])
    assert again.exit_code == 0 and "already written" in again.output
    unknown = runner.invoke(args=["pacs", "write-back", "no-such-study"])
    assert unknown.exit_code != 0


@with_orthanc
def test_a_study_done_while_write_back_was_off_is_never_written_by_housekeeping(
        tmp_path, tiny_model_dir, orthanc, instance_path):
    app, client, study_uid, url = analysed_pacs_study(
        tmp_path, tiny_model_dir, orthanc, 2, "O", "Chest CT, no write-back", PACS_WRITE_BACK=False)
    run_queued_jobs(app)
    view = client.get(url).get_json()
    assert view["status"] == "done" and view["written"] == []
    assert view["write_back"] == {"status": "off", "attempts": 0, "error": None,
                                  "next_try": None}
    assert write_back_line(client, url) == (
        "off", "PACS write-back: off: write-back was switched off when this study finished.")
    reconfigure(app, PACS_WRITE_BACK=True)  # switched on later: old studies stay as they are
    assert app.extensions["tasks"].housekeeping() == 0
    assert run_queued_jobs(app) == 0
    assert study_row(app, url).write_after is None
    assert "SR" not in series_in_pacs(orthanc, study_uid)


@with_orthanc
def test_an_unexpected_failure_is_recorded_by_its_type_only(
        tmp_path, tiny_model_dir, orthanc, instance_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    app, client, study_uid, url = analysed_pacs_study(
        tmp_path, tiny_model_dir, orthanc, 2, "U", "Chest CT, odd failure", PACS_WRITE_RETRY_S=3600)

    def store(self, datasets):
        raise RuntimeError("a response body that quotes Testpatient")

    monkeypatch.setattr(PacsClient, "store", store)
    run_queued_jobs(app)
    write_back = client.get(url).get_json()["write_back"]
    assert write_back["status"] == "retrying" and write_back["attempts"] == 1
    assert write_back["error"] == "The write-back failed (RuntimeError)."
    assert "Testpatient" not in caplog.text and "RuntimeError" in caplog.text
    assert app.extensions["tasks"].housekeeping() == 0  # its hour has not come
