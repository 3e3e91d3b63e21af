"""A DICOM file that says it shows something other than the chest gets a warning in the
single-image answer, in each study image, in the study and in its report; a file that
names no body part, or the chest, gets none."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from inference.anatomy import anatomy_warning, body_part

from . import dicom_factory as make
from .conftest import run_queued_jobs
from .study_helpers import ct_series, image_fields, submit
from .test_dicom import post


def coded(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    return item


@pytest.mark.parametrize("attributes, warned", [
    ({"BodyPartExamined": "EXTREMITY"}, "EXTREMITY"),
    ({"BodyPartExamined": "knee"}, "KNEE"),
    ({"AnatomicRegionSequence": [coded("85562004", "Hand")]}, "Hand (85562004)"),
    ({"BodyPartExamined": "CHEST"}, None), ({"BodyPartExamined": "CHESTABDOMEN"}, None),
    ({"BodyPartExamined": "THORAX"}, None), ({"BodyPartExamined": "WHOLEBODY"}, None),
    ({"AnatomicRegionSequence": [coded("51185008", "Thoracic structure")]}, None),
    ({}, None), ({"BodyPartExamined": ""}, None),
])
def test_what_the_header_names_decides_the_warning(attributes, warned):
    dataset = Dataset()
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    warning = anatomy_warning(body_part(dataset))
    if warned is None:
        assert warning is None
    else:
        assert warning is not None and f"shows {warned}, not the chest" in warning


def xray_showing(part: str | None) -> bytes:
    values = np.tile(np.linspace(0, 4095, 64), (64, 1)).astype(np.uint16)
    dataset = pydicom.dcmread(io.BytesIO(make.xray_file(values)))
    if part is not None:
        dataset.BodyPartExamined = part
    return make.to_bytes(dataset)


def test_an_extremity_sent_as_a_chest_xray_is_answered_with_a_warning(client):
    warned = post(client, xray_showing("EXTREMITY"), modality="xray").get_json()
    assert warned["results"][0]["label"] in ("COVID", "Non-COVID")  # still answered
    assert any("shows EXTREMITY, not the chest" in w for w in warned["warnings"])
    for part in ("CHEST", None):
        quiet = post(client, xray_showing(part), modality="xray").get_json()
        assert not any("not the chest" in w for w in quiet["warnings"]), quiet["warnings"]


def test_a_study_of_knee_slices_says_so_in_the_study_its_images_and_its_report(app):
    series = []
    for name, data in ct_series(3):
        dataset = pydicom.dcmread(io.BytesIO(data))
        dataset.BodyPartExamined = "KNEE"
        series.append((name, make.to_bytes(dataset)))
    client = app.test_client()
    answer = submit(client, modality="ct", model="vgg16", images=image_fields(series))
    run_queued_jobs(app)
    view = client.get(answer.get_json()["url"]).get_json()
    assert any("3 of 3 DICOM files say they show KNEE, not the chest" in w
               for w in view["warnings"]), view["warnings"]
    assert all(any("shows KNEE" in w for w in image["warnings"]) for image in view["images"])
    report = client.get(f"/studies/{view['id']}/report").get_data(as_text=True)
    assert "Warning: 3 of 3 DICOM files say they show KNEE, not the chest" in report
