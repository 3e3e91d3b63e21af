"""Analyse on arrival, against a real Orthanc: each study once (several pollers, a
restart), never the tool's own output, and a stopped PACS said plainly."""

from __future__ import annotations

import io
import threading
from dataclasses import replace

import pydicom
import pytest

from extensions import db
from inference.registry import parse_model_choices
from pacs import watch
from pacs.models import PacsArrival
from settings import settings_of
from studies.models import Study

from .conftest import signed_in, testing_config
from .dicom_factory import PATIENT_ID, PATIENT_NAME
from .orthanc_server import needs_orthanc
from .study_helpers import ct_series, wait_for_study
from .test_pacs_analysis import observers, upload_study, wait_written

pytestmark = needs_orthanc


def auto_app(tmp_path, model_dir, orthanc, **overrides):
    from app import create_app

    settings = dict(MODEL_DIR=str(model_dir), DICOMWEB_URL=orthanc.dicomweb_url,
                    PACS_AUTO_ANALYSE="ct:vgg16", PACS_STABLE_S=0, PACS_POLL_S=1,
                    SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'shared.sqlite3'}")
    settings.update(overrides)
    return create_app(testing_config(tmp_path, **settings))


def studies_for(app, study_uid: str) -> list[Study]:
    with app.app_context():
        return db.session.query(Study).filter_by(pacs_study_uid=study_uid).all()


def test_a_new_study_is_analysed_once_and_written_back(tmp_path, tiny_model_dir, orthanc,
                                                       instance_path):
    app = auto_app(tmp_path, tiny_model_dir, orthanc, EMBEDDED_WORKER=True)
    client = app.test_client()
    signed_in(app, client, role="reader")  # any reader opens a PACS study's analysis
    try:
        study_uid = upload_study(orthanc, ct_series(4, prefix="N"), "Arrived CT")
        client.get("/healthz")  # a first request starts the embedded worker and its poll
        deadline_view = None
        for _ in range(600):
            rows = studies_for(app, study_uid)
            if rows:
                deadline_view = wait_for_study(client, f"/api/v1/studies/{rows[0].id}")
                break
            threading.Event().wait(0.1)
        assert deadline_view is not None, "the arrival was never analysed"
        assert deadline_view["status"] == "done"
        written = wait_written(client, f"/api/v1/studies/{rows[0].id}")["written"]
        assert len(written) == 1  # the report (no heatmaps asked for)
        pacs = settings_of(app).pacs.client()
        report = pydicom.dcmread(io.BytesIO(pacs.retrieve(
            study_uid, written[0]["series_uid"], written[0]["sop_instance_uid"])))
        assert observers(report) == {"Device Observer Name": "LungScan AI"}  # no person
        # The report now sits in the study (its count changed): nothing starts again.
        for _ in range(3):
            with app.app_context():
                app.extensions["tasks"].pacs_poll()
        assert len(studies_for(app, study_uid)) == 1
    finally:
        app.extensions["job_queue"].stop_embedded_worker()

    # A restart (a new app on the same database) starts nothing either.
    again = auto_app(tmp_path, tiny_model_dir, orthanc)
    assert again.extensions["tasks"].pacs_poll() == 0
    assert len(studies_for(again, study_uid)) == 1


def test_several_pollers_start_each_study_once(tmp_path, tiny_model_dir, orthanc,
                                               instance_path):
    uids = [upload_study(orthanc, ct_series(2, prefix=f"M{i}"), f"CT {i}") for i in range(3)]
    apps = [auto_app(tmp_path, tiny_model_dir, orthanc) for _ in range(4)]
    started, barrier = [], threading.Barrier(len(apps))

    def poll(app):
        barrier.wait()
        started.append(app.extensions["tasks"].pacs_poll())

    threads = [threading.Thread(target=poll, args=(app,)) for app in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(started) == 3
    for uid in uids:
        assert len(studies_for(apps[0], uid)) == 1


def test_a_growing_study_waits_until_it_is_stable(tmp_path, tiny_model_dir, orthanc,
                                                  instance_path):
    app = auto_app(tmp_path, tiny_model_dir, orthanc, PACS_STABLE_S=3600)
    upload_study(orthanc, ct_series(2, prefix="G"), "Still arriving")
    assert app.extensions["tasks"].pacs_poll() == 0
    with app.app_context():
        arrival = db.session.query(PacsArrival).one()
        assert arrival.study_id is None and arrival.images == 2
        # Arrivals keep UIDs and counts only, never a patient tag.
        assert PATIENT_NAME not in repr(vars(arrival)) and PATIENT_ID not in repr(vars(arrival))


def test_a_stopped_pacs_is_said_plainly_everywhere(tmp_path, tiny_model_dir, orthanc,
                                                   instance_path, caplog):
    app = auto_app(tmp_path, tiny_model_dir, orthanc)
    client = app.test_client()
    signed_in(app, client)  # the PACS routes need a signed-in analyst
    orthanc.stop()
    listed = client.get("/api/v1/pacs/studies")
    assert listed.status_code == 502
    assert listed.get_json()["error"]["code"] == "pacs_unavailable"
    assert "cannot be reached" in listed.get_json()["error"]["message"]
    analysed = client.post("/api/v1/pacs/studies/1.2.3/analyses",
                           data={"modality": "ct", "model": "vgg16"})
    assert analysed.status_code == 502
    page = client.get("/pacs")
    assert page.status_code == 502 and "cannot be reached" in page.get_data(as_text=True)
    assert "Traceback" not in page.get_data(as_text=True)
    with pytest.raises(Exception) as raised:
        with app.app_context():
            rules = replace(settings_of(app).pacs, stable_s=0,
                            auto_rules=tuple(parse_model_choices("ct:vgg16")))
            watch.poll_once(rules.client(), rules)
    assert "cannot be reached" in str(raised.value)
    result = app.test_cli_runner().invoke(args=["pacs", "list"])
    assert result.exit_code != 0 and "cannot be reached" in result.output


def test_a_study_that_failed_for_want_of_the_pacs_is_tried_again_later(
        tmp_path, tiny_model_dir, orthanc, instance_path):
    from datetime import timedelta

    from studies import store
    from studies.models import utcnow_naive

    app = auto_app(tmp_path, tiny_model_dir, orthanc)
    study_uid = upload_study(orthanc, ct_series(2, prefix="R"), "Retried CT")
    tasks = app.extensions["tasks"]
    assert tasks.pacs_poll() == 1
    with app.app_context():
        first = db.session.get(PacsArrival, study_uid).study_id
        store.fail(first, None, "pacs_unavailable", "The PACS at ... cannot be reached.")
        watch.retry_unreachable(settings_of(app).pacs)
        arrival = db.session.get(PacsArrival, study_uid)
        assert arrival.study_id is None and arrival.next_try_at > utcnow_naive()
    assert tasks.pacs_poll() == 0  # not before its delay
    with app.app_context():
        arrival = db.session.get(PacsArrival, study_uid)
        arrival.next_try_at = utcnow_naive() - timedelta(seconds=1)
        db.session.commit()
    assert tasks.pacs_poll() == 1
    assert len(studies_for(app, study_uid)) == 2  # a new attempt, the failed one kept


def test_a_study_an_analyst_already_started_is_skipped_and_the_round_goes_on(
        tmp_path, tiny_model_dir, orthanc, instance_path):
    taken = upload_study(orthanc, ct_series(2, prefix="A"), "Started by hand")
    other = upload_study(orthanc, ct_series(2, prefix="B"), "Left to the poller")
    app = auto_app(tmp_path, tiny_model_dir, orthanc)
    client = app.test_client()
    signed_in(app, client, role="analyst")
    response = client.post(f"/api/v1/pacs/studies/{taken}/analyses",
                           data={"modality": "ct", "model": "vgg16"})
    assert response.status_code == 202, response.get_data(as_text=True)
    assert app.extensions["tasks"].pacs_poll() == 1  # the other one; no IntegrityError
    assert [s.id for s in studies_for(app, taken)] == [response.get_json()["id"]]
    assert len(studies_for(app, other)) == 1
