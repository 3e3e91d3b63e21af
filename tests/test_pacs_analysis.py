"""Analysing studies where they live: a real Orthanc on loopback, the real queue, real
models; the report and heatmaps read back from Orthanc."""

from __future__ import annotations

import io
import time

import pydicom
import pytest
from pydicom.uid import generate_uid

from extensions import db
from pacs.writeback import write_back
from settings import settings_of
from studies import service as studies
from studies.models import Study

from .conftest import run_queued_jobs, signed_in, testing_config
from .dicom_factory import PATIENT_ID, PATIENT_NAME, to_bytes, xray_file
from .orthanc_server import needs_orthanc
from .study_helpers import ct_series, wait_for_study

pytestmark = needs_orthanc


def upload_study(orthanc, files: list[tuple[str, bytes]], description: str) -> str:
    """Send the files to Orthanc as one study; its StudyInstanceUID."""
    study_uid = generate_uid()
    for _, data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.StudyInstanceUID, ds.StudyDescription = study_uid, description
        ds.StudyDate, ds.StudyTime = time.strftime("%Y%m%d"), "101500"
        if "SeriesInstanceUID" not in ds:
            ds.SeriesInstanceUID = generate_uid()
        orthanc.upload(to_bytes(ds))
    return study_uid


@pytest.fixture
def pacs_app(tmp_path, tiny_model_dir, instance_path, orthanc):
    from app import create_app

    app = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_model_dir),
                                    EMBEDDED_WORKER=True, DICOMWEB_URL=orthanc.dicomweb_url,
                                    PACS_HEATMAP_FORMAT="sc"))  # test_pacs_overlays: the others
    yield app
    app.extensions["job_queue"].stop_embedded_worker()


def wait_written(client, url: str, deadline_s: float = 120) -> dict:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        view = client.get(url).get_json()
        if view.get("written"):
            return view
        time.sleep(0.2)
    raise AssertionError("nothing was written back")


def test_the_api_lists_pacs_studies_without_patient_data(pacs_app, orthanc):
    ct_uid = upload_study(orthanc, ct_series(3, prefix="L"), "Chest CT for listing")
    client = pacs_app.test_client()
    signed_in(pacs_app, client)  # the PACS routes need a signed-in analyst
    answer = client.get("/api/v1/pacs/studies")
    assert answer.headers["Cache-Control"] == "no-store"  # what a PACS holds is not cached
    listed = answer.get_json()["studies"]
    mine = next(s for s in listed if s["study_uid"] == ct_uid)
    assert mine["modalities"] == ["CT"] and mine["images"] == 3
    assert mine["description"] == "Chest CT for listing"
    text = client.get("/api/v1/pacs/studies?modality=CT").get_data(as_text=True)
    assert ct_uid in text and PATIENT_NAME not in text and PATIENT_ID not in text
    assert ct_uid not in client.get("/api/v1/pacs/studies?modality=DX").get_data(as_text=True)


def test_one_click_analysis_writes_a_report_and_heatmaps_back(pacs_app, orthanc):
    series = ct_series(6, prefix="A")
    study_uid = upload_study(orthanc, series, "Chest CT to analyse")
    client = pacs_app.test_client()
    signed_in(pacs_app, client, name="dr-ana")  # the PACS routes need a signed-in analyst
    answer = client.post(f"/api/v1/pacs/studies/{study_uid}/analyses",
                         data={"modality": "ct", "model": "all", "explain": "1"})
    assert answer.status_code == 202, answer.get_json()
    url = answer.get_json()["url"]
    view = wait_for_study(client, url)
    assert view["status"] == "done", view.get("error")
    assert view["source"] == "pacs" and view["study_uid"] == study_uid
    assert [i["instance_number"] for i in view["images"]] == list(range(1, 7))
    view = wait_written(client, url)
    pacs = settings_of(pacs_app).pacs.client()
    report_entry = view["written"][0]
    report = pydicom.dcmread(io.BytesIO(pacs.retrieve(
        study_uid, report_entry["series_uid"], report_entry["sop_instance_uid"])))
    assert report.Modality == "SR" and report.StudyInstanceUID == study_uid
    referenced = {sop.ReferencedSOPInstanceUID
                  for study in report.CurrentRequestedProcedureEvidenceSequence
                  for series_item in study.ReferencedSeriesSequence
                  for sop in series_item.ReferencedSOPSequence}
    assert referenced == {image["name"] for image in view["images"]}
    probabilities = sorted(round(r["covid_probability"], 4) for image in view["images"]
                           for r in image["results"])
    numbers = sorted(round(float(item.MeasuredValueSequence[0].NumericValue), 4)
                     for item in walk(report) if getattr(item, "ValueType", "") == "NUM"
                     and item.ConceptNameCodeSequence[0].CodeMeaning.lower().startswith(
                         "probability"))
    for value in probabilities:
        assert value in numbers
    assert observers(report) == {"Person Observer Name": "dr-ana",
                                 "Device Observer Name": "LungScan AI"}
    captures = [w for w in view["written"] if w["sop_class_uid"] != report.SOPClassUID]
    assert len(captures) == 6 * 3  # one per image and model
    instances = pacs.instances(study_uid)
    assert len(instances) == 6 + 1 + 18

    # Writing again replaces, never duplicates.
    with pacs_app.app_context():
        result = studies.result(settings_of(pacs_app).studies, view["id"])
        write_back(pacs, pacs_app.extensions["inference"], result)
    assert len(pacs.instances(study_uid)) == 6 + 1 + 18


def observers(report) -> dict[str, str]:
    """The report's observer names (TID 1002 person, TID 1004 device)."""
    named = {}
    for item in report.ContentSequence:
        meaning = item.ConceptNameCodeSequence[0].CodeMeaning
        if meaning in ("Person Observer Name", "Device Observer Name"):
            named[meaning] = str(item.get("PersonName") or item.get("TextValue"))
    return named


def walk(dataset):
    """Every content item of an SR tree, depth first."""
    for item in getattr(dataset, "ContentSequence", []):
        yield item
        yield from walk(item)


def test_an_xray_study_is_analysed_as_xray(pacs_app, orthanc):
    import numpy as np

    rng = np.random.default_rng(0)
    files = [(f"x{i}.dcm", xray_file(rng.integers(0, 4095, (64, 64)))) for i in range(2)]
    study_uid = upload_study(orthanc, files, "Chest X-ray")
    client = pacs_app.test_client()
    signed_in(pacs_app, client)  # the PACS routes need a signed-in analyst
    answer = client.post(f"/api/v1/pacs/studies/{study_uid}/analyses",
                         data={"modality": "xray", "model": "resnet50"})
    view = wait_for_study(client, answer.get_json()["url"])
    assert view["status"] == "done" and view["progress"]["total"] == 2
    refused = client.post(f"/api/v1/pacs/studies/{study_uid}/analyses",
                          data={"modality": "ct", "model": "vgg16"})
    assert refused.status_code == 404
    assert "holds no image of the chosen modality" in refused.get_json()["error"]["message"]


def test_bad_requests_never_reach_another_server(pacs_app):
    client = pacs_app.test_client()
    signed_in(pacs_app, client)  # the PACS routes need a signed-in analyst
    for uid in ("1.2.3;rm -rf", "http://evil.example/x", "1..2"):
        answer = client.post(f"/api/v1/pacs/studies/{uid}/analyses",
                             data={"modality": "ct", "model": "vgg16"})
        assert answer.status_code in (400, 404)
    answer = client.get("/api/v1/pacs/studies?url=http://evil.example/dicom-web")
    assert answer.status_code == 200  # the parameter is ignored: the server is config only
    with pacs_app.app_context():
        assert db.session.query(Study).count() == 0


def test_the_page_lists_studies_with_names_and_analyses_one(pacs_app, orthanc):
    study_uid = upload_study(orthanc, ct_series(3, prefix="P"), "Chest CT on the page")
    client = pacs_app.test_client()
    signed_in(pacs_app, client)  # the PACS routes need a signed-in analyst
    page = client.get("/pacs").get_data(as_text=True)
    assert "Chest CT on the page" in page and study_uid in page
    assert "Testpatient" in page  # shown to pick a study...
    answer = client.post("/pacs/analyse", data={"study_uid": study_uid, "modality": "ct",
                                                "model": "vgg16"})
    assert answer.status_code == 303
    study_id = answer.headers["Location"].rsplit("/", 1)[1]
    view = wait_for_study(client, f"/api/v1/studies/{study_id}")
    assert view["status"] == "done"
    with pacs_app.app_context():  # ...but never kept
        for row in db.session.query(Study).all():
            assert PATIENT_NAME not in repr(vars(row)) and PATIENT_ID not in repr(vars(row))
    assert f"/studies/{study_id}" in client.get("/pacs").get_data(as_text=True)


def test_the_command_line_lists_and_analyses(pacs_app, orthanc, caplog):
    import json
    import logging

    caplog.set_level(logging.INFO)  # the app's level (third parties log URLs at DEBUG)
    study_uid = upload_study(orthanc, ct_series(4, prefix="C"), "Chest CT from the CLI")
    runner = pacs_app.test_cli_runner()
    listed = runner.invoke(args=["pacs", "list", "--modality", "CT", "--json"])
    assert listed.exit_code == 0, listed.output
    assert study_uid in [s["study_uid"] for s in json.loads(listed.output)["studies"]]
    analysed = runner.invoke(args=["pacs", "analyse", study_uid, "--modality", "ct",
                                   "--model", "vgg16"])
    assert analysed.exit_code == 0, analysed.output
    answer = json.loads(analysed.output.split("\n", 1)[1])
    assert answer["verdict"]["total_images"] == 4
    assert len(answer["written"]) == 1 and answer["written"][0]["sop_instance_uid"]
    unknown = runner.invoke(args=["pacs", "analyse", "1.2.3.4.5", "--model", "vgg16"])
    assert unknown.exit_code != 0 and "no study with this UID" in unknown.output
    for secret in (PATIENT_NAME, PATIENT_ID, "Testpatient"):
        assert secret not in caplog.text  # no patient data reaches the logs
    with pacs_app.app_context():
        ids = {row.id for row in db.session.query(Study).all()}
    assert ids and not any(study_id in caplog.text for study_id in ids)  # nor a study's key


@pytest.mark.parametrize("limit", [{"MAX_STUDY_IMAGES": 2}, {"MAX_STUDY_BYTES": 4096}])
def test_a_pacs_study_past_the_study_limits_fails_plainly(tmp_path, tiny_model_dir,
                                                          instance_path, orthanc, limit):
    """A PACS study is held to the limits an upload is: more images or bytes than a
    study may have fail the study with the same message, and nothing fetched is kept."""
    from app import create_app
    from studies.models import StudyFile

    app = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_model_dir),
                                    DICOMWEB_URL=orthanc.dicomweb_url, **limit))
    study_uid = upload_study(orthanc, ct_series(3, prefix="T"), "Chest CT past the limits")
    client = app.test_client()
    signed_in(app, client)  # the PACS routes need a signed-in analyst
    answer = client.post(f"/api/v1/pacs/studies/{study_uid}/analyses",
                         data={"modality": "ct", "model": "vgg16"})
    assert answer.status_code == 202
    run_queued_jobs(app)
    view = client.get(answer.get_json()["url"]).get_json()
    assert view["status"] == "failed" and view["error"]["code"] == "study_too_large"
    assert "split it into smaller studies" in view["error"]["message"]
    with app.app_context():
        assert db.session.query(StudyFile).filter_by(study_id=view["id"]).count() == 0
