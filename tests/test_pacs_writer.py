"""PACS write-back: the Structured Report and the heatmap captures, read back and validated
with Debian's dciodvfy (dicom3tools)."""

from __future__ import annotations

import io
import logging
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage, generate_uid

from pacs import captures as capture_module
from pacs.captures import heatmap_captures
from pacs.report_sr import RESEARCH_WARNING, SOFTWARE_NAME, structured_report
from studies.result import ImageResult, StudyResult

from .dicom_factory import PATIENT_ID, PATIENT_NAME, new_dataset
from .study_helpers import ct_series



def needs_dciodvfy(test):
    """A validation test: CI must run it (services), elsewhere it may skip."""
    return pytest.mark.services(pytest.mark.skipif(
        not shutil.which("dciodvfy"),
        reason="dciodvfy (Debian's dicom3tools) is not installed")(test))


ARCHS = ["vgg16", "resnet50", "inception_v3"]
VERSIONS = {"vgg16": "VGG16 sha256:1a2b3c4d5e6f7a8b", "resnet50": "ResNet50 sha256:99aa88bb",
            "inception_v3": "InceptionV3 sha256:0f0f0f0f"}
THRESHOLDS = {"vgg16": 0.5, "resnet50": 0.42, "inception_v3": 0.61}
HEATMAPS = [(0, "vgg16", 224), (2, "resnet50", 600), (4, "inception_v3", 96)]  # size in px
FAILED = 3  # reading position of the image that could not be analysed
RULE = "COVID if at least 5 consecutive slices of one series, or at least 25 % of all images."
DISCLAIMER = "Research and teaching tool, not a medical device."


@pytest.fixture
def evidence() -> list[pydicom.Dataset]:
    """Five CT slice headers of one study, as a PACS returns them (no pixel data)."""
    study_uid, frame_uid = generate_uid(), generate_uid()
    headers = []
    for _, data in ct_series(5, size=32, seed=3):
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = study_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20240305", "101500", "S-17"
        ds.AccessionNumber, ds.PatientSex, ds.ReferringPhysicianName = "ACC-991", "F", ""
        ds.SeriesNumber, ds.PixelSpacing, ds.SliceThickness = 3, [0.7, 0.7], 2.5
        headers.append(ds)
    headers.sort(key=lambda ds: ds.InstanceNumber)
    del headers[FAILED].PixelSpacing  # a thin header: evidence, not in the Image Library
    return headers


def probability(position: int, arch: str) -> float:
    return round(0.05 + 0.17 * position + 0.031 * ARCHS.index(arch) + 1e-7, 9)


def make_view(headers: list[pydicom.Dataset], modality: str = "ct") -> dict:
    images = []
    for position, ds in enumerate(headers):
        results = [{"architecture": arch, "covid_probability": probability(position, arch),
                    "threshold": THRESHOLDS[arch],
                    "label": "COVID" if probability(position, arch) >= THRESHOLDS[arch]
                    else "Non-COVID", "agreement": 1.0} for arch in ARCHS]
        mean = sum(r["covid_probability"] for r in results) / len(results)
        images.append({"index": position, "name": f"IMG{position:04d}.dcm",
                       "series_uid": str(ds.SeriesInstanceUID),
                       "instance_number": int(ds.InstanceNumber), "status": "done",
                       "results": results, "covid_probability": mean,
                       "positive": mean >= 0.5, "warnings": []})
    if len(images) > FAILED:
        images[FAILED].update(status="failed", results=[], covid_probability=None, positive=None,
                              error={"code": "undecodable_image",
                                     "message": "cannot decode"})
    return {"id": "study-1234", "status": "done", "modality": modality, "model": "all",
            "models": [{"architecture": a, "threshold": THRESHOLDS[a]} for a in ARCHS],
            "images": images, "warnings": ["1 image could not be analysed"],
            "disclaimer": DISCLAIMER,
            "verdict": {"label": "COVID", "covid_probability": 0.512345, "positive_images": 2,
                        "total_images": 4, "positive_share": 0.5, "longest_positive_run": 2,
                        "rule": RULE, "rule_id": "consecutive_or_share",
                        "rule_parameters": {"min_run": 5, "min_share": 0.25}}}


def as_result(view: dict) -> StudyResult:
    """The typed result the writers are fed, from a view-shaped dict a test can edit."""
    images = tuple(ImageResult(
        index=i["index"], name=i["name"], series_uid=i["series_uid"],
        instance_number=i["instance_number"], status=i["status"], results=tuple(i["results"]),
        covid_probability=i["covid_probability"], positive=i["positive"],
        error_code=(i.get("error") or {}).get("code")) for i in view["images"])
    return StudyResult(id=view["id"], study_uid=None, status=view["status"],
                       modality=view["modality"], explain=False, models=tuple(view["models"]),
                       images=images, verdict=view.get("verdict"),
                       warnings=tuple(view["warnings"]), written=None,
                       disclaimer=view["disclaimer"])


def make_report(evidence, view):
    return structured_report(as_result(view), evidence, VERSIONS, "2.1.0", "1.2.826.0.1.3680043.8.498.2",
                             "1.2.826.0.1.3680043.8.498.1")


def png(seed: int, size: int = 224) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def uid_for(index: int, arch: str) -> str:
    return generate_uid(entropy_srcs=["study-1234", "heatmap", str(index), arch])


def make_captures(evidence, view, heatmaps=None):
    heatmaps = heatmaps or [
        (index, arch, png(index, size)) for index, arch, size in HEATMAPS]
    return heatmap_captures(as_result(view), evidence, heatmaps, "2.1.0", "1.2.826.0.1.3680043.8.498.3",
                            uid_for)


def reread(ds: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def texts(item, code_value: str) -> list[str]:
    """TEXT values with that concept code anywhere below ``item``."""
    found = []
    for child in item.get("ContentSequence", []):
        if child.ValueType == "TEXT" and \
                child.ConceptNameCodeSequence[0].CodeValue == code_value:
            found.append(child.TextValue)
        found += texts(child, code_value)
    return found


def groups_by_title(sr_path) -> dict:
    sr = hd.sr.srread(sr_path)
    report = hd.sr.MeasurementReport.from_sequence(sr.content)
    groups = [*report.get_planar_roi_measurement_groups(),
              *report.get_image_measurement_groups()]
    return {group.tracking_identifier: group for group in groups}


def dciodvfy(ds: pydicom.Dataset, tmp_path, name: str) -> list[str]:
    """dciodvfy's findings; fails on any error, prints the warnings."""
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    run = subprocess.run([shutil.which("dciodvfy"), str(path)], capture_output=True,
                         text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    print(f"dciodvfy {name}:", *lines, sep="\n  ")
    assert not [line for line in lines if line.startswith("Error")], lines
    return [line for line in lines if line.startswith("Warning")]


def test_report_belongs_to_the_study_in_a_new_series(evidence):
    sr = reread(make_report(evidence, make_view(evidence)))
    assert sr.SOPClassUID == ComprehensiveSRStorage and sr.Modality == "SR"
    assert sr.StudyInstanceUID == evidence[0].StudyInstanceUID
    assert (sr.PatientName, sr.PatientID) == (PATIENT_NAME, PATIENT_ID)
    assert sr.SOPInstanceUID == "1.2.826.0.1.3680043.8.498.1"
    assert sr.SeriesInstanceUID == "1.2.826.0.1.3680043.8.498.2"
    assert sr.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in evidence}
    assert sr.SeriesNumber == 9901 and sr.Manufacturer == SOFTWARE_NAME
    assert sr.SoftwareVersions == "2.1.0"
    assert sr.SeriesDescription == "LungScan AI COVID-19 report (research use only)"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99LUNGSCAN"


def test_report_holds_every_models_answer_for_every_image(evidence, tmp_path):
    view = make_view(evidence)
    make_report(evidence, view).save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    groups = groups_by_title(tmp_path / "sr.dcm")
    for position, image in enumerate(view["images"]):
        title = f"Image {position + 1} (instance {image['instance_number']})"
        for arch in ARCHS:
            group = groups.pop(f"{title} {arch}", None)
            if position == FAILED:
                assert group is None
                continue
            values = {m.name.value: m.value for m in group.get_measurements()}
            assert values["122157"] == pytest.approx(probability(position, arch), abs=1e-6)
            assert values["122411"] == pytest.approx(THRESHOLDS[arch], abs=1e-6)
            (label,) = group.get_qualitative_evaluations()
            assert label.name.value == "840539006"
            expected = [r["label"] for r in image["results"] if r["architecture"] == arch][0]
            assert label.value.meaning == ("Present" if expected == "COVID" else "Absent")
            assert texts(group[0], "111003") == [VERSIONS[arch]]
            region = group.roi  # the whole image, on its source instance
            assert region.ValueType == "SCOORD" and region.GraphicType == "POLYLINE"
            assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID \
                == evidence[position].SOPInstanceUID
            outline = region.value
            assert outline.min(axis=0).tolist() == [0.5, 0.5]
            assert outline.max(axis=0).tolist() == [evidence[position].Columns - 0.5,
                                                    evidence[position].Rows - 0.5]
            # What a viewer needs to place and label the number (OHIF): a SCOORD child
            # of the probability NUM, and a Comment naming the probability.
            (number,) = [m for m in group.get_measurements() if m.name.value == "122157"]
            (child,) = number[0].ContentSequence
            assert child.ValueType == "SCOORD" and child.RelationshipType == "INFERRED FROM"
            assert texts(group[0], "121106") == [
                f"{title} {arch}: COVID-19 probability {probability(position, arch):.2f}"]
        if position != FAILED:
            combined = groups.pop(f"{title} combined")
            assert combined.get_measurements()[0].value == \
                pytest.approx(image["covid_probability"], abs=1e-6)
    assert list(groups) == []  # the verdict is a qualitative evaluation, not a group


def test_report_holds_the_verdict_rule_versions_and_warning(evidence, tmp_path):
    view = make_view(evidence)
    sr = reread(make_report(evidence, view))
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    assert "Study verdict" not in groups_by_title(tmp_path / "sr.dcm")
    (evaluations,) = [item for item in sr.ContentSequence
                      if item.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    finding = evaluations.ContentSequence[0]
    assert finding.ConceptNameCodeSequence[0].CodeValue == "840539006"
    assert finding.ConceptCodeSequence[0].CodeMeaning == "Present"
    assert float(texts(sr, "MEANPROB")[0]) == pytest.approx(0.512345, abs=1e-6)
    assert (texts(sr, "POSIMAGES"), texts(sr, "IMAGES"), texts(sr, "LONGESTRUN")) == (
        ["2"], ["4"], ["2"])
    assert texts(sr, "VERDICT") == [
        "COVID: 2 of 4 images positive, mean COVID probability 0.512"]
    assert texts(sr, "RULE") == [RULE + " (consecutive_or_share: min_run=5, min_share=0.25)"]
    assert texts(sr, "DISCLAIMER") == [DISCLAIMER]
    assert texts(sr, "RESEARCHONLY") == [RESEARCH_WARNING]
    assert texts(sr, "NOTANALYSED") == ["Image 4 (instance 4): undecodable_image"]
    models = texts(sr, "MODELS")[0]
    assert all(version in models for version in VERSIONS.values())


def test_report_references_every_instance(evidence):
    sr = reread(make_report(evidence, make_view(evidence)))
    referenced = {item.ReferencedSOPInstanceUID
                  for study in sr.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence
                  for item in series.ReferencedSOPSequence}
    assert referenced == {ds.SOPInstanceUID for ds in evidence}
    assert "PertinentOtherEvidenceSequence" not in sr


def test_unfinished_studies_and_unknown_images_are_refused(evidence):
    view = make_view(evidence)
    with pytest.raises(ValueError, match="image 9"):
        make_captures(evidence, view, [(9, "vgg16", png(0))])
    del view["verdict"]
    with pytest.raises(ValueError, match="verdict"):
        make_report(evidence, view)


@needs_dciodvfy
def test_report_validates(evidence, tmp_path):
    warnings = dciodvfy(make_report(evidence, make_view(evidence)), tmp_path, "sr.dcm")
    # only our own coding scheme is unknown to the validator's tables
    assert all("99LUNGSCAN" in line for line in warnings), warnings


def test_captures_are_rgb_in_the_study_and_reference_their_source(evidence):
    heatmaps = [(index, arch, png(index, size)) for index, arch, size in HEATMAPS]
    captures = [reread(c) for c in make_captures(evidence, make_view(evidence), heatmaps)]
    assert len(captures) == 3
    for capture, (index, arch, _) in zip(captures, heatmaps):
        assert capture.SOPClassUID == SecondaryCaptureImageStorage
        assert capture.SOPInstanceUID == uid_for(index, arch)
        assert capture.StudyInstanceUID == evidence[index].StudyInstanceUID
        assert capture.SeriesInstanceUID == "1.2.826.0.1.3680043.8.498.3"
        assert (capture.PatientID, capture.SeriesNumber) == (PATIENT_ID, 9902)
        assert capture.PhotometricInterpretation == "RGB" and capture.SamplesPerPixel == 3
        assert (capture.BurnedInAnnotation, capture.PatientOrientation) == ("YES", ["L", "P"])
        assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == \
            evidence[index].SOPInstanceUID


def test_captures_carry_the_warning_and_the_answer_in_their_pixels(evidence):
    view = make_view(evidence)
    heatmaps = [(index, arch, png(index, size)) for index, arch, size in HEATMAPS]
    for capture, (index, arch, size) in zip(make_captures(evidence, view, heatmaps), HEATMAPS):
        pixels = reread(capture).pixel_array
        width = pixels.shape[1]
        label = capture_module.caption(index, as_result(view).images[index], arch)
        assert f"{arch} - Image {index + 1}" in label
        assert f"probability {probability(index, arch):.3f}" in label
        top = np.asarray(capture_module.band(width, [RESEARCH_WARNING, label]))
        bottom = np.asarray(capture_module.band(width, [RESEARCH_WARNING]))
        assert np.array_equal(pixels[:top.shape[0]], top)
        assert np.array_equal(pixels[-bottom.shape[0]:], bottom)
        other = np.asarray(capture_module.band(width, ["RESEARCH USE ONLY"]))
        assert not np.array_equal(bottom[:other.shape[0]], other)  # the text, not just a band
        assert (top == capture_module.TEXT_COLOUR).all(axis=2).sum() > 500
        middle = pixels[top.shape[0]:-bottom.shape[0]]
        assert middle.shape[1] == max(size, capture_module.MIN_WIDTH)
        if size >= capture_module.MIN_WIDTH:  # wide heatmaps keep every pixel
            assert np.array_equal(middle, np.asarray(Image.open(io.BytesIO(png(index, size)))))


@needs_dciodvfy
def test_captures_validate(evidence, tmp_path):
    for number, capture in enumerate(make_captures(evidence, make_view(evidence))):
        assert dciodvfy(capture, tmp_path, f"sc{number}.dcm") == []


def test_storing_again_gives_the_same_instances(evidence):
    view = make_view(evidence)
    first, second = make_report(evidence, view), make_report(evidence, view)
    assert first.SOPInstanceUID == second.SOPInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert first.ContentSequence[-2] == second.ContentSequence[-2]  # tracking UIDs too
    heatmaps = [(index, arch, png(index)) for index, arch, _ in HEATMAPS]
    whole = make_captures(evidence, view, heatmaps)
    batched = make_captures(evidence, view, heatmaps[:2]) + \
        make_captures(evidence, view, heatmaps[2:])
    assert [(c.SOPInstanceUID, c.InstanceNumber) for c in whole] == \
        [(c.SOPInstanceUID, c.InstanceNumber) for c in batched]
    assert len({c.InstanceNumber for c in whole}) == 3


def xray_evidence() -> list[pydicom.Dataset]:
    """Two chest radiographs whose headers lack the study date, time and ID."""
    study_uid, headers = generate_uid(), []
    for number in (1, 2):
        ds = new_dataset("DX")
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
        ds.InstanceNumber, ds.Rows, ds.Columns = number, 2048, 2048
        ds.PatientOrientation, ds.ImagerPixelSpacing = ["P", "F"], [0.15, 0.15]
        headers.append(ds)
    return headers


@needs_dciodvfy
def test_xray_report_and_captures_validate(tmp_path):
    headers = xray_evidence()
    view = make_view(headers, modality="xray")
    view["verdict"].update(longest_positive_run=0, total_images=2, positive_images=1)
    sr = make_report(headers, view)
    assert "LONGESTRUN" not in str(reread(sr))
    (capture,) = make_captures(headers, view, [(1, "vgg16", png(5))])
    assert capture.PatientOrientation == ["P", "F"]
    # these sources have no study date, time or ID: the new instances have them empty
    for warning in dciodvfy(sr, tmp_path, "xray-sr.dcm") + \
            dciodvfy(capture, tmp_path, "xray-sc.dcm"):
        assert "99LUNGSCAN" in warning or "needed to build DICOMDIR - Study" in warning


def test_nothing_logged_carries_patient_data(evidence, caplog):
    caplog.set_level(logging.DEBUG)
    view = make_view(evidence)
    make_report(evidence, view)
    make_captures(evidence, view)
    assert "structured report for study study-..." in caplog.text  # the writers did log
    assert "study-1234" not in caplog.text  # and only a prefix of the key to the results
    for secret in (PATIENT_NAME, PATIENT_ID, "Testpatient", "19450317", "ACC-991",
                   evidence[0].StudyInstanceUID, evidence[0].SOPInstanceUID, "IMG0000"):
        assert secret not in caplog.text
