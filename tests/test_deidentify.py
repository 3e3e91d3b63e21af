"""DICOM held for processing keeps only what analysis and ordering need: checked on the
function, then in the bytes of the database, its WAL and the queue file after uploads
of single files and a zip, and after a PACS fetch from a real Orthanc."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from inference.dicom import decode_dicom
from studies.deidentify import base_name, minimum_dicom

from .conftest import run_queued_jobs, signed_in, testing_config
from .dicom_factory import hu_phantom, new_dataset, to_bytes
from .orthanc_server import needs_orthanc
from .study_helpers import image_fields, submit, zip_of

# Values of attributes that PS3.15's Basic Application Level Confidentiality Profile
# removes or replaces; each is searched for in every byte the tool stored.
IDENTIFYING = {
    "PatientName": "Doe^Jane^Q", "PatientID": "MRN-777-4242",
    "PatientBirthDate": "19450317", "PatientSex": "F", "PatientAge": "079Y",
    "PatientAddress": "12 Elm Street Springfield", "OtherPatientIDs": "ALT-ID-99311",
    "PatientTelephoneNumbers": "555-0199-231", "EthnicGroup": "Testgroup",
    "MilitaryRank": "Commodorex", "ReferringPhysicianName": "Referrer^Robert",
    "PerformingPhysicianName": "Performer^Paula", "OperatorsName": "Operator^Otto",
    "NameOfPhysiciansReadingStudy": "Reader^Rhea",
    "InstitutionName": "St Example Hospital", "InstitutionAddress": "1 Hospital Way",
    "InstitutionalDepartmentName": "Radiology East Wing", "StationName": "CTSTATION07",
    "DeviceSerialNumber": "SN-55-0042-X", "AccessionNumber": "ACC20261204",
    "StudyID": "STUDYID-8812", "StudyDescription": "Chest of Jane Doe",
    "SeriesDescription": "Jane lungs axial", "ImageComments": "patient Jane anxious",
    "AdditionalPatientHistory": "smoker since 1962", "RequestingPhysician": "Req^Rita",
    "StudyDate": "20261111", "ContentDate": "20261112", "AcquisitionDateTime":
    "20261111093000",
}
PRIVATE_VALUE = "PRIVATE-JANE-DOE-NOTE"
NESTED_VALUE = "Nested^Patient^Name"
NEEDLES = [value.encode() for value in IDENTIFYING.values() if len(value) > 5] + [
    PRIVATE_VALUE.encode(), NESTED_VALUE.encode(), b"Doe^Jane", b"MRN-777"]


def identifying_slice(number: int, series_uid: str, study_uid: str) -> bytes:
    ds = new_dataset("CT")
    for keyword, value in IDENTIFYING.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [0.0, 0.0, -2.5 * number]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.BodyPartExamined = "CHEST"
    request = Dataset()
    request.PatientName = NESTED_VALUE
    ds.RequestAttributesSequence = [request]
    block = ds.private_block(0x0011, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", PRIVATE_VALUE)
    ds.set_pixel_data(np.rint(hu_phantom(64) + 1024 + number).astype(np.int16),
                      "MONOCHROME2", 16)
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1.0, -1024.0, "HU"
    return to_bytes(ds)


def identifying_series(count: int) -> list[tuple[str, bytes]]:
    series_uid, study_uid = generate_uid(), generate_uid()
    return [(f"DOE_JANE_MRN777/slice{n}.dcm", identifying_slice(n, series_uid, study_uid))
            for n in range(1, count + 1)]


def test_only_the_kept_attributes_remain_and_the_pixels_are_the_same():
    original = identifying_slice(3, "1.2.3.4", "1.2.3")
    kept = minimum_dicom(original)
    for needle in NEEDLES:
        assert needle in original and needle not in kept, needle
    dataset = pydicom.dcmread(io.BytesIO(kept))
    assert {element.keyword for element in dataset} == {
        "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
        "Modality", "BodyPartExamined", "InstanceNumber", "ImagePositionPatient",
        "ImageOrientationPatient", "SamplesPerPixel", "PhotometricInterpretation", "Rows",
        "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
        "RescaleIntercept", "RescaleSlope", "RescaleType", "PixelData"}
    before = decode_dicom(original, max_pixels=10**6).pixels
    after = decode_dicom(kept, max_pixels=10**6).pixels
    assert np.array_equal(before, after)


def test_rasters_pass_unchanged_and_a_broken_dicom_file_keeps_nothing_identifying():
    assert minimum_dicom(b"\x89PNG\r\n\x1a\n rest", "scan.png") == b"\x89PNG\r\n\x1a\n rest"
    original = identifying_slice(1, "1.2.3.4", "1.2.3")
    for cut in (200, 420, 900, len(original) - 100):
        kept = minimum_dicom(original[:cut])
        assert not [needle for needle in NEEDLES if needle in kept], cut
    assert base_name("DOE_JANE_MRN777/sub\\slice1.dcm") == "slice1.dcm"


def stored_bytes(app) -> dict[str, bytes]:
    """Every file of the app's database (and its WAL) and of its instance folder."""
    database = Path(app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///"))
    paths = list(database.parent.glob(database.name + "*"))
    paths += [p for p in Path(app.instance_path).rglob("*") if p.is_file()]
    return {str(path): path.read_bytes() for path in paths}


def leaks(app, caplog) -> list[str]:
    found = [f"{path}: {needle!r}" for path, data in stored_bytes(app).items()
             for needle in NEEDLES if needle in data]
    found += [f"log: {needle!r}" for needle in NEEDLES + [b"DOE_JANE"]
              if needle.decode() in caplog.text]
    return found


@pytest.mark.parametrize("how", ["images", "zip"])
def test_uploads_store_no_identifying_attribute(app_factory, tiny_model_dir, caplog, how):
    caplog.set_level(logging.DEBUG)
    app = app_factory(MODEL_DIR=str(tiny_model_dir))
    client = app.test_client()
    files = identifying_series(4)
    fields = ({"images": image_fields(files)} if how == "images"
              else {"archive": (io.BytesIO(zip_of(files)), "DOE_JANE.zip")})
    answer = submit(client, modality="ct", model="vgg16", **fields)
    assert answer.status_code == 202, answer.get_json()
    assert leaks(app, caplog) == []  # queued: the files wait in the database
    run_queued_jobs(app)
    view = client.get(answer.get_json()["url"]).get_json()
    assert view["status"] == "done"
    assert sorted(image["name"] for image in view["images"]) == [
        f"slice{n}.dcm" for n in range(1, 5)]
    assert [image["instance_number"] for image in view["images"]] == [1, 2, 3, 4]
    assert leaks(app, caplog) == []


class TestPacs:
    pytestmark = needs_orthanc

    def test_a_fetch_stores_no_identifying_attribute(self, tmp_path, tiny_model_dir,
                                                     instance_path, orthanc, caplog):
        from app import create_app

        caplog.set_level(logging.DEBUG)
        app = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_model_dir),
                                        DICOMWEB_URL=orthanc.dicomweb_url))
        files = identifying_series(3)
        for _, data in files:
            orthanc.upload(data)
        study_uid = pydicom.dcmread(io.BytesIO(files[0][1])).StudyInstanceUID
        client = app.test_client()
        signed_in(app, client, role="analyst")
        answer = client.post(f"/api/v1/pacs/studies/{study_uid}/analyses",
                             data={"modality": "ct", "model": "vgg16"})
        assert answer.status_code == 202, answer.get_json()
        run_queued_jobs(app)
        assert client.get(answer.get_json()["url"]).get_json()["status"] == "done"
        assert leaks(app, caplog) == []
