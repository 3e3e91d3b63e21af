"""Study ordering: DICOM grouped by series and put in slice order from the header alone;
warnings about mixed uploads that never name a patient."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pydicom
import pytest

from studies import ordering
from studies.intake import StudyFile
from studies.ordering import OrderedFile, order_files

from . import dicom_factory as make
from .model_factory import png_bytes

SERIES_A, SERIES_B = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
STUDY = "1.2.826.0.1.3680043.8.498.100"
AXIAL = [1, 0, 0, 0, 1, 0]


def slice_file(series: str | None = SERIES_A, number: int | None = None, position=None,
               orientation=None, modality: str = "CT", study: str = STUDY,
               patient: tuple[str, str] | None = None) -> bytes:
    """A small real DICOM file with the ordering attributes given (None: absent)."""
    ds = make.new_dataset(modality)
    ds.set_pixel_data(np.zeros((8, 8), np.uint16), "MONOCHROME2", 16)
    ds.StudyInstanceUID = study
    if series is not None:
        ds.SeriesInstanceUID = series
    if number is not None:
        ds.InstanceNumber = number
    if position is not None:
        ds.ImagePositionPatient = [round(value, 4) for value in position]
    if orientation is not None:
        ds.ImageOrientationPatient = [round(value, 6) for value in orientation]
    if patient is not None:
        ds.PatientName, ds.PatientID = patient
    return make.to_bytes(ds)


def order(files: list[StudyFile]):
    ordered, warnings = order_files(files)
    assert sorted(id(item.file) for item in ordered) == sorted(id(f) for f in files)
    return [item.file.name for item in ordered], ordered, warnings


def test_a_shuffled_series_comes_back_in_instance_number_order_not_name_order():
    # IM10 sorts before IM2 by name; positions run against the numbers on purpose.
    files = [StudyFile(f"IM{n}.dcm", slice_file(number=n, position=[0, 0, -n * 5.0],
                                                orientation=AXIAL)) for n in range(1, 13)]
    random.Random(7).shuffle(files)
    files.sort(key=lambda file: file.name)  # the order a naive sort by name would give
    names, ordered, warnings = order(files)
    assert names == [f"IM{n}.dcm" for n in range(1, 13)]
    assert [item.instance_number for item in ordered] == list(range(1, 13))
    assert {(item.series_uid, item.dicom_modality) for item in ordered} == {(SERIES_A, "CT")}
    assert warnings == []


def tilted_slices(count: int) -> list[tuple[list[float], list[float]]]:
    """(position, orientation) of slices 30 degrees off axial, stepping 5 mm along the
    normal while sliding down the column direction, so their z runs the other way."""
    cos, sin = math.cos(math.radians(30)), math.sin(math.radians(30))
    row, column = [1.0, 0.0, 0.0], [0.0, cos, -sin]
    normal = [0.0, sin, cos]  # row x column
    slices = []
    for k in range(count):
        position = [5 * k * n + 20 * k * c for n, c in zip(normal, column)]
        slices.append((position, row + column))
    return slices


def test_equal_instance_numbers_are_ordered_along_the_tilted_slice_normal():
    geometry = tilted_slices(5)
    assert [position[2] for position, _ in geometry] == sorted(
        (position[2] for position, _ in geometry), reverse=True)  # z alone would reverse them
    files = [StudyFile(f"s{k}.dcm", slice_file(number=1, position=position,
                                               orientation=orientation))
             for k, (position, orientation) in enumerate(geometry)]
    names, _, _ = order([files[i] for i in (3, 0, 4, 2, 1)])
    assert names == ["s0.dcm", "s1.dcm", "s2.dcm", "s3.dcm", "s4.dcm"]


def test_missing_instance_numbers_come_after_the_numbered_ones_by_position():
    geometry = tilted_slices(4)
    unnumbered = [StudyFile(f"u{k}.dcm", slice_file(position=position, orientation=orientation))
                  for k, (position, orientation) in enumerate(geometry)]
    numbered = [StudyFile(f"n{n}.dcm", slice_file(number=n)) for n in (2, 1)]
    names, ordered, _ = order([unnumbered[2], numbered[0], unnumbered[0], unnumbered[3],
                               numbered[1], unnumbered[1]])
    assert names == ["n1.dcm", "n2.dcm", "u0.dcm", "u1.dcm", "u2.dcm", "u3.dcm"]
    assert [item.instance_number for item in ordered] == [1, 2, None, None, None, None]


def test_without_orientation_the_z_position_orders_and_upload_order_breaks_ties():
    files = [StudyFile("z10", slice_file(position=[0, 0, 10])),
             StudyFile("none-a", slice_file()),
             StudyFile("z-5", slice_file(position=[50, -50, -5])),
             StudyFile("none-b", slice_file()),
             StudyFile("z0", slice_file(position=[0, 0, 0]))]
    names, _, _ = order(files)
    assert names == ["z-5", "z0", "z10", "none-a", "none-b"]


def test_interleaved_series_are_grouped_by_first_appearance_with_a_warning():
    files = [StudyFile(f"{series[-1]}{n}.dcm", slice_file(series, number=n))
             for n in (3, 1, 2) for series in (SERIES_B, SERIES_A)]
    names, ordered, warnings = order(files)
    assert names == ["21.dcm", "22.dcm", "23.dcm", "11.dcm", "12.dcm", "13.dcm"]
    assert [item.series_uid for item in ordered] == [SERIES_B] * 3 + [SERIES_A] * 3
    assert warnings == ["The upload holds 2 series; each is ordered on its own and listed "
                        "in turn."]


def test_two_patients_are_warned_about_without_naming_either():
    other = ("Otherpatient^Ada", "PID-0001-OTHER")
    files = [StudyFile("a.dcm", slice_file(number=1)),
             StudyFile("b.dcm", slice_file(number=2, patient=other))]
    _, ordered, warnings = order(files)
    assert warnings == ["The upload holds images of more than one patient."]
    words = " ".join(warnings)
    for secret in (make.PATIENT_NAME, make.PATIENT_ID, *other, "Testpatient", "Rosalind"):
        assert secret not in words
    # Same ID, other name (or the other way round) is still two patients.
    for patient in ((make.PATIENT_NAME, "PID-2"), ("Someone^Else", make.PATIENT_ID)):
        files[1] = StudyFile("b.dcm", slice_file(number=2, patient=patient))
        assert order(files)[2] == ["The upload holds images of more than one patient."]


def test_one_patient_or_blank_patient_attributes_raise_no_patient_warning():
    files = [StudyFile("a.dcm", slice_file(number=1)),
             StudyFile("b.dcm", slice_file(number=2, patient=("testpatient^rosalind^^",
                                                              make.PATIENT_ID))),
             StudyFile("c.dcm", slice_file(number=3, patient=("", ""))),
             StudyFile("d.dcm", slice_file(number=4, patient=("ANONYMOUS", "")))]
    assert order(files[:3])[2] == []
    assert order(files)[2] == ["The upload holds images of more than one patient."]


def test_ordered_files_carry_no_patient_data():
    assert [field.name for field in dataclasses.fields(OrderedFile)] == [
        "file", "series_uid", "instance_number", "dicom_modality"]
    _, ordered, warnings = order([StudyFile("a.dcm", slice_file(number=1))])
    shown = repr([(item.series_uid, item.instance_number, item.dicom_modality)
                  for item in ordered]) + repr(warnings)
    assert make.PATIENT_NAME not in shown and make.PATIENT_ID not in shown


def test_only_the_header_attributes_needed_are_parsed(monkeypatch):
    calls = []
    real = pydicom.dcmread

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", recording)
    order([StudyFile("a.dcm", slice_file(number=1)), StudyFile("b.png", png_bytes())])
    assert len(calls) == 1  # the PNG is never parsed as DICOM
    assert calls[0]["stop_before_pixels"] is True
    assert set(calls[0]["specific_tags"]) == {
        "SeriesInstanceUID", "StudyInstanceUID", "InstanceNumber", "ImagePositionPatient",
        "ImageOrientationPatient", "Modality", "PatientID", "PatientName", "BodyPartExamined",
        "AnatomicRegionSequence"}


def test_other_images_keep_upload_order_after_the_series_with_a_warning():
    files = [StudyFile("z.png", png_bytes(seed=1)), StudyFile("s2.dcm", slice_file(number=2)),
             StudyFile("a.png", png_bytes(seed=2)), StudyFile("s1.dcm", slice_file(number=1))]
    names, ordered, warnings = order(files)
    assert names == ["s1.dcm", "s2.dcm", "z.png", "a.png"]
    assert ordered[2] == OrderedFile(files[0], None, None, None)
    assert warnings == ["The upload mixes DICOM files with other images (PNG, JPEG...): the "
                        "DICOM series come first, then the other images in upload order."]
    assert order([files[0], files[2]])[2] == []  # only PNGs: nothing to say
    png_named_dcm = StudyFile("scan.dcm", png_bytes(seed=3))  # read as the PNG it is
    names, _, warnings = order([png_named_dcm, files[3]])
    assert names == ["s1.dcm", "scan.dcm"] and "mixes DICOM files" in warnings[0]


def test_different_studies_and_modalities_are_warned_about():
    files = [StudyFile("ct.dcm", slice_file(SERIES_A, number=1)),
             StudyFile("cr.dcm", slice_file(SERIES_B, number=1, modality="CR",
                                            study=STUDY + ".2"))]
    _, ordered, warnings = order(files)
    assert [item.dicom_modality for item in ordered] == ["CT", "CR"]
    assert warnings == [
        "The upload holds 2 series; each is ordered on its own and listed in turn.",
        "The upload holds images from 2 different studies (examinations).",
        "The DICOM files are of different modalities: CT and CR."]


@pytest.mark.parametrize("broken", [
    b"\x00" * 128 + b"DICM" + b"\xff" * 40,  # a preamble, then nothing DICOM
    None])  # a real file cut inside its header
def test_a_file_whose_header_cannot_be_read_is_kept_after_the_series(broken):
    data = broken if broken is not None else slice_file(number=9)[:300]
    files = [StudyFile("bad.dcm", data), StudyFile("s1.dcm", slice_file(number=1))]
    names, ordered, warnings = order(files)
    assert names == ["s1.dcm", "bad.dcm"]
    assert ordered[1] == OrderedFile(files[0], None, None, None)
    assert warnings == []  # decoding reports the broken file; it is not "another image"


def test_a_missing_series_uid_is_a_series_of_its_own():
    files = [StudyFile("x2", slice_file(None, number=2)), StudyFile("a1", slice_file(number=1)),
             StudyFile("x1", slice_file(None, number=1))]
    names, ordered, warnings = order(files)
    assert names == ["x1", "x2", "a1"]
    assert ordered[0].series_uid is None and ordered[0].instance_number == 1
    assert len(warnings) == 1 and "2 series" in warnings[0]


def test_odd_header_values_do_not_break_ordering():
    ds = make.new_dataset("CT")
    ds.SeriesInstanceUID, ds.InstanceNumber = SERIES_A, "7"
    ds.ImagePositionPatient = [0, 0, 1]
    ds.ImageOrientationPatient = [0, 0, 0, 0, 0, 0]  # degenerate: falls back to z
    odd = make.to_bytes(ds)
    names, ordered, _ = order([StudyFile("odd", odd), StudyFile("n3", slice_file(number=3))])
    assert names == ["n3", "odd"] and ordered[1].instance_number == 7
    assert ordering._floats({"X": ["1", "nan", "2"]}, "X", 3) is None
    assert ordering._floats({"X": ["1", "2"]}, "X", 3) is None
