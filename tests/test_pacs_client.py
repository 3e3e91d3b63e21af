"""The PACS client against a real Orthanc: search, list, fetch, store, log in, fail plainly."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from inference.errors import InvalidRequest
from config import Config
from pacs.client import PacsClient, PacsError, PacsNotConfigured, PacsSettings, PacsTimeout
from settings import pacs_settings

from .dicom_factory import PATIENT_ID, PATIENT_NAME, to_bytes, xray_file
from .orthanc_server import needs_orthanc
from .study_helpers import ct_series

pytestmark = needs_orthanc

USER, PASSWORD, TOKEN = "lungscan-reader", "Pw-9f3b-SECRET", "tok-51c2-SECRET"


def with_study(file_bytes: bytes, study_uid: str, **fields) -> bytes:
    """The file, moved into one study with the given study-level attributes."""
    ds = pydicom.dcmread(io.BytesIO(file_bytes))
    ds.StudyInstanceUID = study_uid
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    return to_bytes(ds)


def ct_study(count: int, study_uid: str) -> list[bytes]:
    return [with_study(data, study_uid, StudyDate="20240102", StudyTime="101500",
                       StudyDescription="CT chest low dose", SeriesDescription="Axial 1mm",
                       Manufacturer="ACME", AccessionNumber="ACC-1")
            for _, data in ct_series(count, size=32)]


def dx_study(study_uid: str) -> list[bytes]:
    series_uid = generate_uid()
    values = np.arange(24 * 24, dtype=np.uint16).reshape(24, 24)
    return [with_study(xray_file(values + n), study_uid, StudyDate="20230630",
                       StudyDescription="Chest PA and lateral", SeriesInstanceUID=series_uid,
                       InstanceNumber=n + 1) for n in range(2)]


def secondary_capture(study_uid: str) -> pydicom.Dataset:
    """A dataset made in memory, as the write-back makes its overlays: no file meta."""
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.Modality, ds.ConversionType, ds.SeriesNumber, ds.InstanceNumber = "OT", "WSD", 99, 1
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.SeriesDescription = "Heatmap overlay (research use only)"
    ds.set_pixel_data(np.full((16, 16, 3), 200, dtype=np.uint8), "RGB", 8)
    return ds


@pytest.fixture(scope="module")
def orthanc_credentials():
    return USER, PASSWORD


@pytest.fixture(scope="module")
def orthanc(module_orthanc):
    """The module's Orthanc (with a user), its studies kept from test to test."""
    return module_orthanc


@pytest.fixture
def restarted_after(orthanc):
    """For the test that stops the module's Orthanc: running again after it, however
    the test ended."""
    yield orthanc
    orthanc.ensure_running()


@pytest.fixture(scope="module")
def uploaded(orthanc) -> dict:
    ct_uid, dx_uid = generate_uid(), generate_uid()
    ct_files = ct_study(5, ct_uid)
    for data in ct_files + dx_study(dx_uid):
        orthanc.upload(data)
    by_sop = {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID: d for d in ct_files}
    return {"ct": ct_uid, "dx": dx_uid, "ct_files": by_sop}


@pytest.fixture
def client(orthanc) -> PacsClient:
    return PacsClient(PacsSettings(orthanc.dicomweb_url, USER, PASSWORD, timeout_s=10))


def test_studies_lists_both_with_counts_dates_descriptions_and_modalities(client, uploaded):
    studies = {s["study_uid"]: s for s in client.studies()}
    ct, dx = studies[uploaded["ct"]], studies[uploaded["dx"]]
    assert ct["date"] == "2024-01-02" and ct["time"] == "10:15:00"
    assert (ct["description"], ct["modalities"], ct["series"], ct["images"]) == \
        ("CT chest low dose", ["CT"], 1, 5)
    assert ct["accession"] == "ACC-1" and ct["patient_id"] == PATIENT_ID
    assert ct["patient_name"] == PATIENT_NAME
    assert (dx["date"], dx["time"], dx["description"]) == ("2023-06-30", None,
                                                          "Chest PA and lateral")
    assert (dx["modalities"], dx["series"], dx["images"]) == (["DX"], 1, 2)
    order = [s["study_uid"] for s in client.studies()]
    assert order.index(uploaded["ct"]) < order.index(uploaded["dx"])  # newest first


def test_studies_filters_by_modality(client, uploaded):
    ct_only = {s["study_uid"] for s in client.studies("CT")}
    dx_only = {s["study_uid"] for s in client.studies("dx")}
    assert uploaded["ct"] in ct_only and uploaded["dx"] not in ct_only
    assert uploaded["dx"] in dx_only and uploaded["ct"] not in dx_only
    assert client.studies("MR") == []
    assert len(client.studies(limit=1)) == 1


def test_instances_lists_every_slice_with_its_series_and_number(client, uploaded):
    instances = client.instances(uploaded["ct"])
    assert {i["sop_instance_uid"] for i in instances} == set(uploaded["ct_files"])
    assert [i["instance_number"] for i in instances] == [1, 2, 3, 4, 5]
    assert len({i["series_uid"] for i in instances}) == 1
    first = instances[0]
    assert first["sop_class_uid"] == pydicom.uid.CTImageStorage
    assert (first["modality"], first["series_description"], first["manufacturer"]) == \
        ("CT", "Axial 1mm", "ACME")
    assert client.instances(generate_uid()) == []


def test_retrieve_gives_back_the_same_instance_and_pixels(client, uploaded):
    instance = client.instances(uploaded["ct"])[2]
    data = client.retrieve(uploaded["ct"], instance["series_uid"], instance["sop_instance_uid"])
    got = pydicom.dcmread(io.BytesIO(data))
    sent = pydicom.dcmread(io.BytesIO(uploaded["ct_files"][instance["sop_instance_uid"]]))
    assert data[128:132] == b"DICM"
    assert got.SOPInstanceUID == instance["sop_instance_uid"]
    assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert np.array_equal(got.pixel_array, sent.pixel_array)


def test_retrieve_of_an_unknown_instance_says_404(client, uploaded):
    series_uid = client.instances(uploaded["ct"])[0]["series_uid"]
    with pytest.raises(PacsError) as caught:
        client.retrieve(uploaded["ct"], series_uid, generate_uid())
    assert caught.value.status_code == 404


def test_store_of_a_dataset_made_in_memory_then_lists_it(client, orthanc):
    study_uid = generate_uid()
    orthanc.upload(ct_study(1, study_uid)[0])
    capture = secondary_capture(study_uid)
    client.store([capture])
    instances = client.instances(study_uid)
    stored = [i for i in instances if i["sop_instance_uid"] == capture.SOPInstanceUID]
    assert len(instances) == 2 and len(stored) == 1
    assert stored[0]["sop_class_uid"] == SecondaryCaptureImageStorage
    assert stored[0]["series_uid"] == capture.SeriesInstanceUID
    back = pydicom.dcmread(io.BytesIO(client.retrieve(study_uid, capture.SeriesInstanceUID,
                                                      capture.SOPInstanceUID)))
    assert np.array_equal(back.pixel_array, capture.pixel_array)


def test_an_instance_orthanc_refuses_to_store_is_a_pacs_error(client):
    orphan = secondary_capture(generate_uid())
    del orphan.StudyInstanceUID  # Orthanc needs the patient, study and series UIDs
    with pytest.raises(PacsError) as caught:
        client.store([orphan])
    assert caught.value.status_code == 400 and PATIENT_ID not in caught.value.message


def test_bad_uids_and_modalities_are_refused_before_any_request(client):
    with pytest.raises(InvalidRequest):
        client.instances("1.2.3/../../studies")
    with pytest.raises(InvalidRequest):
        client.retrieve("1.2", "1.2.3", "*")
    with pytest.raises(InvalidRequest):
        client.studies("CT\\MR*")


def test_a_search_answers_with_the_right_credentials(client):
    assert isinstance(client.studies(limit=1), list)


@pytest.mark.parametrize("username, password", [(USER, "wrong-pw-SECRET"),
                                                ("intruder-SECRET", PASSWORD), (None, None)])
def test_wrong_or_missing_credentials_are_refused_without_saying_them(orthanc, username,
                                                                     password):
    bad = PacsClient(PacsSettings(orthanc.dicomweb_url, username, password, timeout_s=10))
    with pytest.raises(PacsError) as caught:
        bad.studies()
    message = caught.value.message
    assert caught.value.status_code == 401 and "refused the credentials" in message
    assert f"http://127.0.0.1:{orthanc.port}" in message
    for secret in (USER, PASSWORD, username, password, "SECRET", "dicom-web"):
        assert secret is None or secret not in message


def test_settings_take_credentials_only_from_the_environment():
    config = {"DICOMWEB_URL": " http://pacs.example:8042/dicom-web ", "DICOMWEB_TIMEOUT_S": "5",
              "DICOMWEB_USERNAME": "config-user", "DICOMWEB_PASSWORD": "config-pw",
              "DICOMWEB_TOKEN": "config-token", "DICOMWEB_ALLOW_HTTP_CREDENTIALS": True}
    bare = PacsSettings.from_config(config, environ={})
    assert (bare.url, bare.timeout_s) == ("http://pacs.example:8042/dicom-web", 5.0)
    assert (bare.username, bare.password, bare.token) == (None, None, None)
    basic = PacsSettings.from_config(config, {"DICOMWEB_USERNAME": USER,
                                              "DICOMWEB_PASSWORD": PASSWORD})
    assert (basic.username, basic.password, basic.token) == (USER, PASSWORD, None)
    defaults = {**vars(Config), "DICOMWEB_URL": "https://pacs.example/dw"}
    bearer = PacsSettings.from_config(defaults, {"DICOMWEB_TOKEN": TOKEN})
    assert (bearer.token, bearer.timeout_s, bearer.origin) == \
        (TOKEN, 30.0, "https://pacs.example:443")
    assert PacsSettings.from_config({"DICOMWEB_URL": ""}, {"DICOMWEB_TOKEN": TOKEN}) is None
    assert PacsSettings.from_config({}, {}) is None
    with pytest.raises(PacsNotConfigured):
        pacs_settings({**vars(Config), "DICOMWEB_URL": None}, {}).client()


@pytest.mark.parametrize("url, environ", [
    ("http://user:pw@pacs.example/dicom-web", {}),
    ("ftp://pacs.example/dicom-web", {}),
    ("http://pacs.example/dicom-web", {"DICOMWEB_USERNAME": USER}),
    ("http://pacs.example/dicom-web", {"DICOMWEB_USERNAME": USER, "DICOMWEB_PASSWORD": PASSWORD,
                                       "DICOMWEB_TOKEN": TOKEN}),
])
def test_unusable_settings_say_so_without_echoing_them(url, environ):
    with pytest.raises(PacsNotConfigured) as caught:
        PacsSettings.from_config({**vars(Config), "DICOMWEB_URL": url}, environ)
    assert "pw@" not in caught.value.message and PASSWORD not in caught.value.message


@pytest.mark.parametrize("url, allowed", [
    ("http://pacs.example/dicom-web", False), ("http://10.1.2.3:8042/dicom-web", False),
    ("https://pacs.example/dicom-web", True), ("http://127.0.0.1:8042/dicom-web", True),
    ("http://localhost:8042/dicom-web", True), ("http://[::1]:8042/dicom-web", True)])
def test_credentials_over_plain_http_to_another_machine_are_refused(url, allowed):
    environ = {"DICOMWEB_USERNAME": USER, "DICOMWEB_PASSWORD": PASSWORD}
    config = {**vars(Config), "DICOMWEB_URL": url}
    if allowed:
        assert PacsSettings.from_config(config, environ).username == USER
    else:
        with pytest.raises(PacsNotConfigured, match="use https://"):
            PacsSettings.from_config(config, environ)
        opted_in = PacsSettings.from_config({**config, "DICOMWEB_ALLOW_HTTP_CREDENTIALS": "1"},
                                            environ)
        assert opted_in.allow_http_credentials
    assert PacsSettings.from_config(config, {}).username is None  # no secret: nothing to hide


def test_repr_hides_the_password_and_the_token():
    basic = PacsSettings("https://pacs.example/dicom-web", USER, PASSWORD)
    bearer = PacsSettings("https://pacs.example/dicom-web", token=TOKEN)
    for text in (repr(basic), str(basic), repr(bearer), repr(PacsClient(basic)),
                 repr(PacsClient(bearer))):
        assert PASSWORD not in text and TOKEN not in text
    assert "pacs.example" in repr(basic)


def test_a_stopped_orthanc_cannot_be_reached_and_a_restarted_one_keeps_its_studies(
        restarted_after):
    server = restarted_after  # the module's Orthanc, with the studies of earlier tests
    study_uid = generate_uid()
    server.upload(ct_study(1, study_uid)[0])
    client = PacsClient(PacsSettings(server.dicomweb_url, USER, PASSWORD, timeout_s=5))
    client.studies(limit=1)
    before = sorted(s["study_uid"] for s in client.studies())
    assert study_uid in before
    server.stop()
    with pytest.raises(PacsError) as caught:
        client.studies()
    assert caught.value.message == \
        f"The PACS at http://127.0.0.1:{server.port} cannot be reached."
    server.start()
    assert sorted(s["study_uid"] for s in client.studies()) == before


class CannedServer:
    """A loopback HTTP server answering every request with one canned response."""

    def __init__(self):
        self.status, self.content_type, self.body = 200, "text/plain", b"hello"
        self.headers: list[dict] = []
        canned = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                canned.headers.append(dict(self.headers))
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self.send_response(canned.status)
                self.send_header("Content-Type", canned.content_type)
                self.send_header("Content-Length", str(len(canned.body)))
                self.end_headers()
                self.wfile.write(canned.body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def answer(self, status: int, content_type: str, body: bytes | str) -> None:
        self.status, self.content_type = status, content_type
        self.body = body.encode() if isinstance(body, str) else body


@pytest.fixture
def canned():
    server = CannedServer()
    yield server
    server.server.shutdown()
    server.server.server_close()


def canned_client(canned, **settings) -> PacsClient:
    return PacsClient(PacsSettings(f"{canned.url}/dicom-web", **settings))


@pytest.mark.parametrize("content_type, body", [
    ("text/plain", "hello"),
    ("text/html", f"<html><body>Welcome {PATIENT_NAME}</body></html>"),
    ("application/dicom+json", json.dumps({"hello": PATIENT_NAME})),
    ("application/dicom+json", "[1, 2, 3]"),
    ("application/dicom+json", json.dumps([{"00100010": "not an element"}])),
])
@pytest.mark.filterwarnings("ignore:message sent by origin server")  # the library's, on retrieve
def test_a_server_that_answers_garbage_is_a_pacs_error(canned, content_type, body):
    canned.answer(200, content_type, body)
    client = canned_client(canned)
    for call in (lambda: client.studies(limit=1), client.studies, lambda: client.instances("1.2.3"),
                 lambda: client.retrieve("1.2.3", "1.2.3.4", "1.2.3.4.5")):
        with pytest.raises(PacsError) as caught:
            call()
        assert "is not DICOMweb" in caught.value.message
        assert "Testpatient" not in caught.value.message and "hello" not in caught.value.message


def test_a_busy_server_is_reported_at_once_with_its_status(canned):
    canned.answer(503, "text/plain", "busy")
    started = time.monotonic()
    with pytest.raises(PacsError) as caught:
        canned_client(canned).studies()
    assert caught.value.status_code == 503 and "HTTP 503" in caught.value.message
    assert len(canned.headers) == 1 and time.monotonic() - started < 1  # no retries


def test_a_bearer_token_goes_in_the_authorization_header(canned):
    canned.answer(200, "application/dicom+json", "[]")
    assert canned_client(canned, token=TOKEN).studies() == []
    assert canned.headers[-1]["Authorization"] == f"Bearer {TOKEN}"


def test_instances_the_server_refuses_to_store_are_a_pacs_error(canned):
    refusal = {"00081198": {"vr": "SQ", "Value": [{
        "00081150": {"vr": "UI", "Value": [SecondaryCaptureImageStorage]},
        "00081155": {"vr": "UI", "Value": ["1.2.3.4"]},
        "00081197": {"vr": "US", "Value": [0xA700]}}]}}
    canned.answer(200, "application/dicom+json", json.dumps(refusal))
    with pytest.raises(PacsError) as caught:
        canned_client(canned).store([secondary_capture(generate_uid())])
    assert "refused 1 of 1 instances (failure reason 0xA700)" in caught.value.message
    canned.answer(409, "application/dicom+json", json.dumps(refusal))
    with pytest.raises(PacsError) as caught:
        canned_client(canned).store([secondary_capture(generate_uid())])
    assert caught.value.status_code == 409


def test_a_server_that_never_answers_times_out():
    with socket.socket() as silent:  # accepts connections (the backlog) but never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/dicom-web"
        client = PacsClient(PacsSettings(url, timeout_s=1))
        started = time.monotonic()
        with pytest.raises(PacsTimeout) as caught:
            client.studies()
        assert time.monotonic() - started < 2.5  # one try: the library's retries are off
        assert caught.value.message == f"The PACS at http://127.0.0.1:{silent.getsockname()[1]} " \
                                       "did not answer within 1 s."


def test_a_url_to_the_wrong_path_reports_the_status(orthanc):
    client = PacsClient(PacsSettings(f"{orthanc.url}/not-dicom-web", USER, PASSWORD))
    with pytest.raises(PacsError) as caught:
        client.studies(limit=1)
    assert caught.value.status_code == 404 and "HTTP 404" in caught.value.message
