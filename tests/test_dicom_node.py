"""The DICOM node against real DICOM software on loopback: dcmtk's echoscu and storescu
as the modality, dcmtk's storescp as the result destination, pynetdicom for what dcmtk
will not send (broken data sets, held associations), and a real Orthanc sending a study
through its REST API and getting the report back over DICOMweb."""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from contextlib import contextmanager

import pydicom
import pytest
import requests
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import select

from pacs.node.models import NodeArrival, NodeInstance
from pacs.node.server import serve
from extensions import db
from settings import settings_of
from studies.models import Study

from .conftest import run_queued_jobs
from .dicom_factory import PATIENT_ID, PATIENT_NAME, to_bytes
from .orthanc_server import needs_orthanc
from .redis_server import free_port
from .study_helpers import ct_series

DCMTK = shutil.which("storescu") and shutil.which("echoscu") and shutil.which("storescp")
pytestmark = [pytest.mark.services,
              pytest.mark.skipif(not DCMTK, reason="dcmtk is missing: install Debian's "
                                                   "dcmtk (.ci/run does)")]
CALLERS = "MODALITY,ORTHANC"


def node_app(app_factory, model_dir, **overrides):
    settings = dict(MODEL_DIR=str(model_dir), DICOM_ALLOWED_CALLERS=CALLERS,
                    DICOM_BIND="127.0.0.1", DICOM_PORT=free_port(), DICOM_STABLE_S=0.2,
                    DICOM_ANALYSE="ct:vgg16", DICOM_TIMEOUT_S=10)
    settings.update(overrides)
    return app_factory(**settings)


@contextmanager
def listening(app):
    settings = settings_of(app)
    server = serve(app, settings.node, settings.studies.limits, block=False)
    try:
        yield settings.node.port
    finally:
        server.shutdown()


def one_study(series, study_uid: str | None = None) -> list[tuple[str, bytes]]:
    """The files as one study, the way a modality sends them."""
    study_uid = study_uid or generate_uid()
    files = []
    for name, data in series:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, "20261204", "101500"
        ds.AccessionNumber = "ACC-55"
        if "SeriesInstanceUID" not in ds:
            ds.SeriesInstanceUID = generate_uid()
        files.append((name, to_bytes(ds)))
    return files


def files_of(tmp_path, series, folder="send"):
    target = tmp_path / folder
    target.mkdir(exist_ok=True)
    for name, data in series:
        (target / name).write_bytes(data)
    return sorted(str(path) for path in target.iterdir())


def storescu(port: int, paths, caller: str = "MODALITY") -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", "-aet", caller, "-aec", "LUNGSCAN", "127.0.0.1",
                           str(port), *paths], capture_output=True, text=True, timeout=120)


def analyse_when_stable(app, settle_s: float = 0.3) -> int:
    """What workers do: start the stable studies, run every job; jobs run."""
    time.sleep(settle_s)
    loop = next(loop for loop in app.extensions["job_queue"].loops if loop.name == "dicom-node")
    loop.job()
    return run_queued_jobs(app)


def node_studies(app) -> list[Study]:
    with app.app_context():
        rows = list(db.session.scalars(select(Study).where(Study.source == "dicom-node")))
        db.session.expunge_all()
        return rows


@pytest.fixture
def destination(tmp_path):
    """dcmtk's storescp as the PACS the reports go to."""
    port, folder = free_port(), tmp_path / "received"
    folder.mkdir()
    process = subprocess.Popen(["storescp", "-aet", "RESULTS", "-od", str(folder), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    time.sleep(0.5)
    yield f"RESULTS@127.0.0.1:{port}", folder
    process.terminate()
    process.wait(10)


def test_echo_answers_an_allowed_caller_and_rejects_an_unknown_one(app_factory,
                                                                   tiny_model_dir):
    app = node_app(app_factory, tiny_model_dir)
    with listening(app) as port:
        ok = subprocess.run(["echoscu", "-aet", "MODALITY", "-aec", "LUNGSCAN", "127.0.0.1",
                             str(port)], capture_output=True, text=True, timeout=30)
        stranger = subprocess.run(["echoscu", "-aet", "STRANGER", "-aec", "LUNGSCAN",
                                   "127.0.0.1", str(port)], capture_output=True, text=True,
                                  timeout=30)
        wrong_called = subprocess.run(["echoscu", "-aet", "MODALITY", "-aec", "OTHERNODE",
                                       "127.0.0.1", str(port)], capture_output=True,
                                      text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert stranger.returncode != 0 and "Rejected" in stranger.stderr + stranger.stdout
    assert wrong_called.returncode != 0


def test_a_study_sent_twice_is_analysed_once_and_its_report_sent_back(
        app_factory, tiny_model_dir, tmp_path, destination):
    where, received = destination
    app = node_app(app_factory, tiny_model_dir, DICOM_RESULT_DESTINATION=where)
    paths = files_of(tmp_path, one_study(ct_series(5, prefix="CT")))
    study_uid = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
    with listening(app) as port:
        assert storescu(port, paths).returncode == 0
        assert storescu(port, paths).returncode == 0  # sent again before it was analysed
        with app.app_context():
            staged = db.session.scalars(select(NodeInstance.data)).all()
            assert len(staged) == 5  # kept once
            assert not any(PATIENT_NAME.encode() in data or PATIENT_ID.encode() in data
                           for data in staged)
        analyse_when_stable(app)
        assert storescu(port, paths).returncode == 0  # and again after
        analyse_when_stable(app)
    (study,) = node_studies(app)
    assert (study.status, study.total, study.pacs_study_uid) == ("done", 5, study_uid)
    reports = [pydicom.dcmread(path) for path in received.iterdir()]
    (report,) = [ds for ds in reports if ds.Modality == "SR"]
    assert (str(report.StudyInstanceUID), str(report.PatientID)) == (study_uid, PATIENT_ID)
    assert str(report.PatientName) == PATIENT_NAME  # filed with its images
    with app.app_context():
        arrival = db.session.get(NodeArrival, study_uid)
        assert arrival.patient is None and arrival.study_id == study.id
        assert db.session.scalars(select(NodeInstance)).all() == []  # nothing of it stays


def send_with_pynetdicom(port: int, datasets, caller: str = "MODALITY") -> list[int]:
    ae = AE(ae_title=caller)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    association = ae.associate("127.0.0.1", port, ae_title="LUNGSCAN")
    assert association.is_established
    try:
        return [association.send_c_store(ds).Status for ds in datasets]
    finally:
        association.release()


def test_broken_data_sets_and_a_study_over_the_limit_are_refused_alone(app_factory,
                                                                      tiny_model_dir):
    app = node_app(app_factory, tiny_model_dir, MAX_STUDY_IMAGES=3)
    good = [pydicom.dcmread(io.BytesIO(data)) for _, data in one_study(ct_series(4))]
    broken = pydicom.dcmread(io.BytesIO(one_study(ct_series(1, seed=3))[0][1]))
    del broken.StudyInstanceUID
    with listening(app) as port:
        statuses = send_with_pynetdicom(port, [good[0], broken, *good[1:]])
    assert statuses == [0x0000, 0xA900, 0x0000, 0x0000, 0xA700]
    with app.app_context():
        assert db.session.get(NodeArrival, str(good[0].StudyInstanceUID)).images == 3


def test_a_database_that_cannot_take_an_instance_is_a_processing_failure(app_factory,
                                                                        tiny_model_dir):
    import sqlite3

    app = node_app(app_factory, tiny_model_dir)
    good = [pydicom.dcmread(io.BytesIO(data)) for _, data in one_study(ct_series(2))]
    with listening(app) as port:
        assert send_with_pynetdicom(port, good[:1]) == [0x0000]
        database = sqlite3.connect(app.config["SQLALCHEMY_DATABASE_URI"]
                                   .removeprefix("sqlite:///"))
        database.execute("DROP TABLE node_instances")
        database.close()
        assert send_with_pynetdicom(port, good[1:]) == [0x0110]


def test_associations_beyond_the_limit_are_refused_as_busy(app_factory, tiny_model_dir):
    app = node_app(app_factory, tiny_model_dir, DICOM_MAX_ASSOCIATIONS=2)
    with listening(app) as port:
        held = []
        for _ in range(2):
            ae = AE(ae_title="MODALITY")
            ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
            held.append(ae.associate("127.0.0.1", port, ae_title="LUNGSCAN"))
        extra = subprocess.run(["echoscu", "-aet", "MODALITY", "-aec", "LUNGSCAN",
                                "127.0.0.1", str(port)], capture_output=True, text=True,
                               timeout=30)
        for association in held:
            assert association.is_established
            association.release()
        after = subprocess.run(["echoscu", "-aet", "MODALITY", "-aec", "LUNGSCAN",
                                "127.0.0.1", str(port)], capture_output=True, text=True,
                               timeout=30)
    assert extra.returncode != 0
    assert after.returncode == 0, after.stderr


def test_a_node_restarted_mid_study_analyses_it_once_whole(app_factory, tiny_model_dir,
                                                           tmp_path):
    app = node_app(app_factory, tiny_model_dir, DICOM_STABLE_S=1)
    paths = files_of(tmp_path, one_study(ct_series(6, prefix="R")))
    with listening(app) as port:
        assert storescu(port, paths[:3]).returncode == 0
    with listening(app) as port:  # the node restarted; the modality sends the study again
        assert storescu(port, paths).returncode == 0
        analyse_when_stable(app, settle_s=1.2)
    (study,) = node_studies(app)
    assert (study.status, study.total) == ("done", 6)


@needs_orthanc[1]
def test_orthanc_sends_a_study_and_gets_the_report_back(app_factory, tiny_model_dir,
                                                        orthanc):
    from .test_pacs_analysis import upload_study

    app = node_app(app_factory, tiny_model_dir, DICOMWEB_URL=orthanc.dicomweb_url,
                   AUTH_METHODS="local")
    study_uid = upload_study(orthanc, ct_series(4, prefix="O"), "Routed CT")
    port = settings_of(app).node.port
    rest = requests.Session()
    rest.auth = orthanc.auth
    rest.put(f"{orthanc.url}/modalities/lungscan", timeout=30, json={
        "AET": "LUNGSCAN", "Host": "127.0.0.1", "Port": port}).raise_for_status()
    (orthanc_id,) = rest.post(f"{orthanc.url}/tools/lookup", data=study_uid,
                              timeout=30).json()
    with listening(app):
        sent = rest.post(f"{orthanc.url}/modalities/lungscan/store", timeout=120,
                         json={"Resources": [orthanc_id["ID"]], "Synchronous": True})
        assert sent.ok, sent.text
        analyse_when_stable(app)
    (study,) = node_studies(app)
    assert study.status == "done" and study.written
    series = rest.get(f"{orthanc.url}/studies/{orthanc_id['ID']}/series", timeout=30).json()
    modalities = sorted(s["MainDicomTags"].get("Modality") for s in series)
    assert modalities == ["CT", "SR"]


def test_images_no_rule_analyses_are_taken_and_not_kept(app_factory, tiny_model_dir,
                                                        tmp_path):
    import numpy as np

    from .dicom_factory import xray_file

    app = node_app(app_factory, tiny_model_dir)  # ct:vgg16 only
    xray = one_study([("XR1.dcm", xray_file(np.full((64, 64), 900, dtype=np.uint16)))])
    with listening(app) as port:
        assert storescu(port, files_of(tmp_path, xray)).returncode == 0
    with app.app_context():
        assert db.session.scalars(select(NodeArrival)).all() == []


def test_a_purged_study_leaves_nothing_in_the_node(app_factory, tiny_model_dir, tmp_path):
    from studies import store

    app = node_app(app_factory, tiny_model_dir)
    paths = files_of(tmp_path, one_study(ct_series(2, prefix="P")))
    with listening(app) as port:
        storescu(port, paths)
        analyse_when_stable(app)
    (study,) = node_studies(app)
    with app.app_context():
        assert db.session.scalars(select(NodeArrival)).all() != []
        store.delete_study(study.id)
    analyse_when_stable(app, settle_s=0)
    with app.app_context():
        assert db.session.scalars(select(NodeArrival)).all() == []
