"""Heatmaps written back as overlays (PACS_HEATMAP_FORMAT): Parametric Maps and fractional
Segmentations built from the stored Grad-CAM maps, validated with dciodvfy, and, through a
real Orthanc with real models, read back frame by frame against the maps and the source
instances they sit on."""

from __future__ import annotations

import base64
import io
import logging

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.uid import ParametricMapStorage, SegmentationStorage, generate_uid

from extensions import db
from inference.explain import map_from_bytes, overlay, png_base64
from inference.preprocess import decode_image
from pacs import overlays
from pacs.overlays import Heatmap, heatmap_overlays
from pacs.writeback import write_back
from settings import settings_of
from studies import service as studies
from studies.models import StudyHeatmap

from .conftest import run_queued_jobs, signed_in, testing_config
from .dicom_factory import PATIENT_ID, PATIENT_NAME
from .study_helpers import ct_series
from .test_pacs_analysis import upload_study
from .test_pacs_write_retry import analyse, make_app, series_in_pacs, with_orthanc
from .test_pacs_writer import ARCHS, FAILED, as_result, dciodvfy, make_view, needs_dciodvfy
from .test_pacs_writer import reread, xray_evidence

STUDY_SERIES = {"pmap": 9903, "seg": 9904}


def with_geometry(ds: pydicom.Dataset, frame_uid: str) -> pydicom.Dataset:
    """What a scanner's CT slice carries and the factory's leaves out."""
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 2.5
    return ds


def ct_headers(count: int = 5, size: int = 32) -> list[pydicom.Dataset]:
    """CT slice headers of one study in reading order, as the PACS returns them."""
    study_uid, frame_uid = generate_uid(), generate_uid()
    headers = []
    for _, data in ct_series(count, size=size, seed=4):
        ds = with_geometry(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True),
                           frame_uid)
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, "20240305", "101500"
        ds.StudyID, ds.AccessionNumber, ds.PatientSex = "S-17", "ACC-991", "F"
        headers.append(ds)
    return sorted(headers, key=lambda ds: ds.InstanceNumber)


def cams(positions, archs=ARCHS, shape=(7, 7)) -> list[Heatmap]:
    """Made-up Grad-CAM maps, peak 1 as the runner stores them."""
    found = []
    for position in positions:
        for number, arch in enumerate(archs):
            cam = np.random.default_rng(10 * position + number).random(shape, np.float32)
            found.append(Heatmap(position, arch, cam / cam.max()))
    return found


def build(kind, headers, heatmaps, view=None):
    result = as_result(view or make_view(headers))
    return [reread(o) for o in heatmap_overlays(
        kind, result, headers, heatmaps, {a: f"{a} sha256:00ff" for a in ARCHS}, "2.1.0",
        "1.2.826.0.1.3680043.8.498.7", lambda arch, n: generate_uid(entropy_srcs=[arch, str(n)]))]


def expected(cam: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """The map stretched over the image as the PNG overlay stretches it."""
    return np.clip(cv2.resize(cam, (columns, rows), interpolation=cv2.INTER_LINEAR), 0, 1)


def frame_sources(overlay: pydicom.Dataset) -> list[str]:
    """The source SOP Instance UID of each frame, in frame order."""
    return [frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for frame in overlay.PerFrameFunctionalGroupsSequence]


def values(overlay: pydicom.Dataset) -> np.ndarray:
    """Frames as 0..1 values (a fractional Segmentation stores 0..255)."""
    pixels = overlay.pixel_array.reshape(int(overlay.NumberOfFrames), overlay.Rows,
                                         overlay.Columns)
    if overlay.SOPClassUID == SegmentationStorage:
        return pixels.astype(np.float32) / overlay.MaximumFractionalValue
    return pixels


def assert_frames_hold_the_maps(overlay, headers, heatmaps, arch, tolerance):
    """Each frame sits on its source (position too) and holds that source's map."""
    by_uid = {ds.SOPInstanceUID: (position, ds) for position, ds in enumerate(headers)}
    maps = {h.index: h.cam for h in heatmaps if h.architecture == arch}
    sources = frame_sources(overlay)
    assert sources == [headers[p].SOPInstanceUID for p in sorted(maps)]  # reading order
    for frame, uid, pixels in zip(overlay.PerFrameFunctionalGroupsSequence, sources,
                                  values(overlay)):
        position, header = by_uid[uid]
        assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == \
            [float(v) for v in header.ImagePositionPatient]
        np.testing.assert_allclose(pixels, expected(maps[position], header.Rows,
                                                    header.Columns), atol=tolerance)


def test_a_parametric_map_holds_each_models_values_per_source_slice(caplog):
    headers = ct_headers()
    analysed = [p for p in range(len(headers)) if p != FAILED]
    heatmaps = cams(analysed)
    caplog.set_level(logging.INFO)
    maps = build("pmap", headers, heatmaps)
    assert len(maps) == len(ARCHS)  # one per model
    for pm, arch in zip(maps, ARCHS):
        assert pm.SOPClassUID == ParametricMapStorage and pm.Modality == "OT"
        assert (pm.StudyInstanceUID, pm.PatientID, pm.PatientName, pm.AccessionNumber) == (
            headers[0].StudyInstanceUID, PATIENT_ID, PATIENT_NAME, "ACC-991")
        assert (pm.SeriesNumber, pm.SeriesInstanceUID) == (9903, "1.2.826.0.1.3680043.8.498.7")
        assert pm.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
        assert pm.ContentQualification == "RESEARCH" and pm.ContentLabel == "COVID19_GRADCAM"
        assert "RESEARCH USE ONLY" in pm.ContentDescription and arch in pm.ContentDescription
        assert "research use only" in pm.SeriesDescription
        assert pm.BitsAllocated == 32 and "FloatPixelData" in pm
        assert (pm.Rows, pm.Columns, int(pm.NumberOfFrames)) == (32, 32, len(analysed))
        mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert mapping.LUTLabel == "COVID-19 GradCAM"
        assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"  # UCUM no units
        assert (float(mapping.RealWorldValueSlope), float(mapping.RealWorldValueIntercept)) \
            == (1.0, 0.0)
        assert_frames_hold_the_maps(pm, headers, heatmaps, arch, tolerance=1e-6)
    assert "heatmap pmap objects for study study-..." in caplog.text
    assert PATIENT_ID not in caplog.text and headers[0].SOPInstanceUID not in caplog.text


def test_a_fractional_segmentation_has_one_attention_segment_by_the_model():
    headers = ct_headers()
    heatmaps = cams([0, 1, 2], archs=["vgg16"], shape=(14, 9))
    (seg,) = build("seg", headers, heatmaps)
    assert seg.SOPClassUID == SegmentationStorage and seg.Modality == "SEG"
    assert (seg.SegmentationType, seg.MaximumFractionalValue) == ("FRACTIONAL", 255)
    assert seg.SeriesNumber == 9904 and seg.StudyInstanceUID == headers[0].StudyInstanceUID
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "COVID-19 attention"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "840539006"  # COVID-19
    assert segment.AnatomicRegionSequence[0].CodeValue == "39607008"  # lung
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("vgg16",
                                                                     "vgg16 sha256:00ff")
    assert "RESEARCH USE ONLY" in seg.ContentDescription
    # 255 steps: half a step off at most
    assert_frames_hold_the_maps(seg, headers, heatmaps, "vgg16", tolerance=0.5 / 255 + 1e-6)


@needs_dciodvfy
@pytest.mark.parametrize("kind", ["pmap", "seg"])
def test_the_overlays_validate(kind, tmp_path):
    headers = ct_headers()
    for number, written in enumerate(build(kind, headers, cams([0, 1, 2, 4], ["vgg16"]))):
        for warning in dciodvfy(written, tmp_path, f"{kind}{number}.dcm"):
            # highdicom's term for a Parametric Map's 4th value, not in dciodvfy's tables
            assert "<QUANTITY>" in warning, warning


def test_series_sizes_and_long_series_make_separate_objects(monkeypatch):
    headers = ct_headers(6)
    other_series = generate_uid()
    for ds in headers[4:]:
        ds.SeriesInstanceUID = other_series
    monkeypatch.setattr(overlays, "FRAMES_PER_OBJECT", 3)
    heatmaps = cams(range(6), ["vgg16"])
    view = make_view(headers)
    view["images"][FAILED].update(status="done")  # every image has a heatmap here
    maps = build("pmap", headers, heatmaps, view)
    assert [frame_sources(pm) for pm in maps] == [
        [ds.SOPInstanceUID for ds in headers[0:3]], [headers[3].SOPInstanceUID],
        [ds.SOPInstanceUID for ds in headers[4:6]]]
    assert [pm.InstanceNumber for pm in maps] == [1, 2, 3]
    assert len({pm.SOPInstanceUID for pm in maps}) == 3


@needs_dciodvfy
def test_a_radiograph_gets_a_segmentation_but_no_parametric_map(tmp_path, caplog):
    """Radiographs often have no frame of reference: a Segmentation frame then stands
    on its own in the source's orientation; highdicom builds no such Parametric Map."""
    headers = xray_evidence()
    for ds in headers:
        ds.Rows = ds.Columns = 64
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    view = make_view(headers, modality="xray")
    heatmaps = cams([0, 1], ["resnet50"])
    segs = build("seg", headers, heatmaps, view)
    assert [frame_sources(seg) for seg in segs] == [[h.SOPInstanceUID] for h in headers]
    for number, seg in enumerate(segs):
        assert seg.PatientOrientation == ["P", "F"] and "FrameOfReferenceUID" not in seg
        np.testing.assert_allclose(values(seg)[0], expected(heatmaps[number].cam, 64, 64),
                                   atol=0.5 / 255 + 1e-6)
        for warning in dciodvfy(seg, tmp_path, f"xray-seg{number}.dcm"):
            assert "needed to build DICOMDIR - Study" in warning, warning
    caplog.set_level(logging.WARNING)
    assert build("pmap", headers, heatmaps, view) == []
    assert "2 heatmaps not written as pmap: a Parametric Map needs a source with a frame " \
           "of reference" in caplog.text


def test_a_ct_slice_without_geometry_is_left_out_and_said(caplog):
    headers = ct_headers(3)
    del headers[1].PixelSpacing
    caplog.set_level(logging.WARNING)
    (pm,) = build("pmap", headers, cams([0, 1, 2], ["vgg16"]))
    assert frame_sources(pm) == [headers[0].SOPInstanceUID, headers[2].SOPInstanceUID]
    assert "1 heatmaps not written as pmap: the source lacks PixelSpacing" in caplog.text


def test_an_unknown_heatmap_format_is_refused_at_start(tmp_path):
    from app import create_app

    with pytest.raises(ValueError, match="PACS_HEATMAP_FORMAT must be one of pmap, seg, sc, "
                                         "none, not 'png'"):
        create_app(testing_config(tmp_path, PACS_HEATMAP_FORMAT="png"))
    app = create_app(testing_config(tmp_path, PACS_HEATMAP_FORMAT=" SEG "))
    assert settings_of(app).pacs.heatmap_format == "seg"


def geometric_series(count: int, prefix: str) -> list[tuple[str, bytes]]:
    """A CT series as a scanner writes it: frame of reference and pixel spacing."""
    frame_uid, files = generate_uid(), []
    for name, data in ct_series(count, prefix=prefix):
        ds = with_geometry(pydicom.dcmread(io.BytesIO(data)), frame_uid)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append((name, buffer.getvalue()))
    return files


def analysed_and_written(tmp_path, model_dir, orthanc, kind, model, prefix):
    """A CT series analysed with heatmaps by an app writing them as ``kind``: (app,
    study UID, the study's API view)."""
    app = make_app(tmp_path, model_dir, orthanc, PACS_HEATMAP_FORMAT=kind)
    study_uid = upload_study(orthanc, geometric_series(4, prefix), f"Chest CT {kind}")
    client = app.test_client()
    signed_in(app, client)  # the PACS routes need a signed-in analyst
    url = analyse(client, study_uid, model=model, explain="1")
    run_queued_jobs(app)  # the analysis, then its write-back
    run_queued_jobs(app)
    view = client.get(url).get_json()
    assert view["status"] == "done" and view["write_back"]["status"] == "written", view
    return app, study_uid, view


def stored_maps(app, study_id: str) -> dict[tuple[int, str], np.ndarray]:
    with app.app_context():
        return {(row.index, row.architecture): map_from_bytes(row.cam)
                for row in db.session.query(StudyHeatmap).filter_by(study_id=study_id)}


def assert_the_maps_are_what_the_pngs_show(app, view, pacs, study_uid):
    """Each stored map, overlaid on its source as the runner did, gives the stored PNG:
    the overlays carry the very map the study page shows."""
    with app.app_context():
        rows = db.session.query(StudyHeatmap).filter_by(study_id=view["id"]).all()
    images = {image["index"]: image for image in view["images"]}
    for row in rows:
        image = images[row.index]
        decoded = decode_image(pacs.retrieve(study_uid, image["series_uid"], image["name"]))
        shown = png_base64(overlay(decoded.pixels, map_from_bytes(row.cam)))
        assert base64.b64decode(shown) == row.png


@with_orthanc
@pytest.mark.parametrize("kind, model", [("pmap", "all"), ("seg", "vgg16")])
def test_overlays_written_through_orthanc_hold_the_stored_maps(
        kind, model, tmp_path, tiny_model_dir, orthanc, instance_path):
    app, study_uid, view = analysed_and_written(tmp_path, tiny_model_dir, orthanc, kind,
                                                model, f"O{kind[0].upper()}")
    report, written = view["written"][0], view["written"][1:]
    archs = [m["architecture"] for m in view["models"]]
    assert len(written) == len(archs)  # one object per model: one series of 4 slices
    pacs = settings_of(app).pacs.client()
    maps = stored_maps(app, view["id"])
    assert len(maps) == 4 * len(archs)
    peaks = {round(float(cam.max()), 6) for cam in maps.values()}
    assert 1.0 in peaks and peaks <= {0.0, 1.0}  # scaled to the peak; all 0: no evidence
    assert_the_maps_are_what_the_pngs_show(app, view, pacs, study_uid)
    names = [image["name"] for image in view["images"]]  # SOP Instance UIDs, reading order
    headers = {ds.SOPInstanceUID: ds for ds in pacs.headers(study_uid).values()}
    for entry, arch in zip(written, archs):
        overlay = pydicom.dcmread(io.BytesIO(pacs.retrieve(
            study_uid, entry["series_uid"], entry["sop_instance_uid"])))
        assert overlay.SeriesNumber == STUDY_SERIES[kind] and overlay.StudyInstanceUID == study_uid
        assert overlay.PatientName == PATIENT_NAME  # from the PACS's header, not a copy
        assert frame_sources(overlay) == names
        tolerance = 1e-6 if kind == "pmap" else 0.5 / 255 + 1e-6
        for position, pixels in enumerate(values(overlay)):
            source = headers[names[position]]
            assert pixels.shape == (source.Rows, source.Columns) == (64, 64)
            np.testing.assert_allclose(
                pixels, expected(maps[(view["images"][position]["index"], arch)], 64, 64),
                atol=tolerance)
    assert series_in_pacs(orthanc, study_uid).keys() == {"CT", "SR", "OT" if kind == "pmap"
                                                         else "SEG"}
    assert report["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.88.33"
    before = series_in_pacs(orthanc, study_uid)
    with app.app_context():  # writing again replaces, never duplicates
        again = write_back(pacs, app.extensions["inference"],
                           studies.result(settings_of(app).studies, view["id"]), kind)
    assert again == view["written"] and series_in_pacs(orthanc, study_uid) == before


@with_orthanc
def test_none_writes_the_report_only(tmp_path, tiny_model_dir, orthanc, instance_path):
    app, study_uid, view = analysed_and_written(tmp_path, tiny_model_dir, orthanc, "none",
                                                "vgg16", "ON")
    assert len(stored_maps(app, view["id"])) == 4  # the heatmaps were made...
    assert [w["sop_class_uid"] for w in view["written"]] == ["1.2.840.10008.5.1.4.1.1.88.33"]
    assert {k: len(v) for k, v in series_in_pacs(orthanc, study_uid).items()} == {
        "CT": 4, "SR": 1}  # ...and none was written
