"""DICOM uploads: display pipeline, frames, compression, errors, privacy, modality check."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, MPEG2MPML, RLELossless

from inference.dicom import LUNG_WINDOW, decode_dicom
from inference.errors import UnsupportedImage, UnusableImage
from inference.preprocess import decode_image

from . import dicom_factory as make

MAX_PIXELS = 50_000_000
SIZE = 256
# Pixel positions inside the phantom (row, column): see dicom_factory.hu_phantom.
LUNG, BODY, AIR, BONE = (128, 100), (70, 128), (5, 5), (179, 128)


def gray(data: bytes, **kwargs) -> np.ndarray:
    decoded = decode_dicom(data, MAX_PIXELS, **kwargs)
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape[2] == 3
    assert (decoded.pixels[..., 0] == decoded.pixels[..., 2]).all()
    return decoded.pixels[..., 0].astype(int)


def lung_window_value(hu: float) -> int:
    centre, width = LUNG_WINDOW
    return int(np.clip(round((hu - (centre - width / 2)) / width * 255), 0, 255))


def post(client, data: bytes, modality: str = "ct", filename: str = "slice.dcm", **fields):
    form = {"image": (io.BytesIO(data), filename), "modality": modality, "model": "vgg16"}
    form.update(fields)
    return client.post("/api/v1/predict", data=form, content_type="multipart/form-data")


# --- display pipeline ---------------------------------------------------------------

def test_ct_without_window_gets_the_lung_window():
    image = gray(make.ct_file())
    assert image[LUNG] == pytest.approx(lung_window_value(-850), abs=1)
    assert image[BODY] == pytest.approx(lung_window_value(40), abs=1)
    assert image[AIR] == pytest.approx(lung_window_value(-1000), abs=1)
    assert image[BONE] == 255


def test_ct_window_from_the_file_wins_over_the_lung_window():
    image = gray(make.ct_file(window=(40, 400)))  # soft-tissue window
    assert image[LUNG] == 0 and image[AIR] == 0 and image[BONE] == 255
    assert image[BODY] == pytest.approx(128, abs=2)


def test_modality_lut_rescale_slope_and_intercept_are_applied():
    plain = gray(make.ct_file(slope=1.0, intercept=-1024.0))
    rescaled = gray(make.ct_file(slope=2.0, intercept=-2048.0))
    assert np.abs(plain - rescaled).max() <= 1


def test_monochrome1_is_inverted():
    values = np.tile(np.linspace(0, 4095, SIZE), (SIZE, 1)).astype(np.uint16)
    normal = gray(make.xray_file(values, "MONOCHROME2"))
    inverted = gray(make.xray_file(values, "MONOCHROME1"))
    assert normal[0, 0] == 0 and normal[0, -1] == 255
    assert (inverted == 255 - normal).all()


def test_monochrome1_is_inverted_after_the_window():
    values = np.tile(np.linspace(0, 4095, SIZE), (SIZE, 1)).astype(np.uint16)
    windowed = gray(make.xray_file(values, "MONOCHROME1", window=(2048, 1024)))
    assert windowed[0, 0] == 255 and windowed[0, -1] == 0  # low values show white
    assert windowed[0, SIZE // 2] == pytest.approx(128, abs=3)


def test_full_16_bit_range_is_kept_in_order():
    values = np.tile(np.linspace(0, 65535, SIZE), (SIZE, 1)).astype(np.uint16)
    image = gray(make.xray_file(values, bits=16))
    row = image[0]
    assert row[0] == 0 and row[-1] == 255
    assert (np.diff(row) >= 0).all() and len(np.unique(row)) > 200


def test_multiframe_uses_the_middle_frame_and_says_so():
    frames = np.zeros((5, 64, 64), dtype=np.uint16)
    for i in range(5):
        frames[i, :, i * 12:(i + 1) * 12] = 1000  # each frame has its own bright band
    decoded = decode_dicom(make.multiframe_file(frames, modality="MR"), MAX_PIXELS)
    bright_columns = np.flatnonzero(decoded.pixels[0, :, 0] == 255)
    assert bright_columns.min() == 24 and bright_columns.max() == 35  # frame index 2
    assert any("5 frames" in w and "frame 3" in w for w in decoded.warnings)
    first = decode_dicom(make.multiframe_file(frames, modality="MR"), MAX_PIXELS, frame=0)
    assert np.flatnonzero(first.pixels[0, :, 0] == 255).max() == 11


# --- compression --------------------------------------------------------------------

def test_jpeg_baseline_written_with_pillow_decodes():
    ramp = np.tile(np.linspace(0, 255, SIZE), (SIZE, 1)).astype(np.uint8)
    decoded = decode_image(make.jpeg_baseline_file(ramp), MAX_PIXELS)
    assert decoded.source_format == "DICOM" and decoded.dicom_modality == "CR"
    assert np.abs(decoded.pixels[..., 0].astype(int) - ramp).mean() < 3


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless], ids=["jpeg2000", "rle"])
def test_lossless_compression_decodes_to_the_same_image(syntax):
    assert (gray(make.compressed_ct_file(syntax)) == gray(make.ct_file())).all()


def test_compression_without_a_decoder_is_415_naming_it():
    with pytest.raises(UnsupportedImage) as error:
        decode_dicom(make.undecodable_file(MPEG2MPML), MAX_PIXELS)
    assert MPEG2MPML.name in error.value.message


def test_corrupt_compressed_data_is_415_naming_the_syntax():
    data = open(get_testdata_file("JPEG-lossy.dcm"), "rb").read()  # non-conformant JPEG
    with pytest.raises(UnsupportedImage) as error:
        decode_dicom(data, MAX_PIXELS)
    assert "JPEG Extended" in error.value.message


def test_no_pixel_data_is_422():
    with pytest.raises(UnusableImage):
        decode_dicom(make.no_pixel_data_file(), MAX_PIXELS)


def test_no_pixel_data_through_the_api_is_422(client):
    response = post(client, make.no_pixel_data_file())
    assert response.status_code == 422
    assert "pixel data" in response.get_json()["error"]["message"]


def test_undecodable_through_the_api_is_415_naming_the_syntax(client):
    response = post(client, make.undecodable_file(MPEG2MPML))
    assert response.status_code == 415
    assert "MPEG2" in response.get_json()["error"]["message"]


# --- pydicom's own sample files -------------------------------------------------------

@pytest.mark.parametrize("name, modality, shape", [
    ("CT_small.dcm", "CT", (128, 128)),
    ("MR_small.dcm", "MR", (64, 64)),
    ("MR_small_RLE.dcm", "MR", (64, 64)),
    ("MR_small_jpeg_ls_lossless.dcm", "MR", (64, 64)),
    ("MR_small_jp2klossless.dcm", "MR", (64, 64)),
    ("693_J2KI.dcm", "CT", (512, 512)),
    ("JPGExtended.dcm", "NM", (1024, 256)),
    ("SC_rgb_jpeg.dcm", "OT", (256, 256)),
    ("examples_ybr_color.dcm", "US", (240, 320)),
])
def test_pydicom_sample_files_decode(name, modality, shape):
    data = open(get_testdata_file(name), "rb").read()
    decoded = decode_image(data, MAX_PIXELS)
    assert decoded.dicom_modality == modality
    assert decoded.pixels.shape == (*shape, 3) and decoded.pixels.dtype == np.uint8
    assert decoded.pixels.max() > decoded.pixels.min()


def test_same_pixels_whatever_the_sample_compression():
    def pixels(name):
        return decode_image(open(get_testdata_file(name), "rb").read(), MAX_PIXELS).pixels

    reference = pixels("MR_small.dcm")
    for name in ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                 "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm"):
        assert (pixels(name) == reference).all(), name


# --- modality check and privacy, through the real routes ---------------------------------

def test_ct_sample_through_the_api_has_no_mismatch(client):
    data = open(get_testdata_file("CT_small.dcm"), "rb").read()
    body = post(client, data, modality="ct").get_json()
    assert not any("modality" in w for w in body["warnings"]), body["warnings"]


def test_mr_sample_chosen_as_ct_warns(client):
    data = open(get_testdata_file("MR_small.dcm"), "rb").read()
    body = post(client, data, modality="ct").get_json()
    assert any("MR" in w and "CT scan" in w for w in body["warnings"]), body["warnings"]


def test_ct_file_chosen_as_xray_warns_and_dx_as_xray_does_not(client):
    body = post(client, make.ct_file(), modality="xray").get_json()
    assert any("modality is CT" in w for w in body["warnings"]), body["warnings"]
    values = np.tile(np.linspace(0, 4095, SIZE), (SIZE, 1)).astype(np.uint16)
    body = post(client, make.xray_file(values), modality="xray").get_json()
    assert not any("modality is" in w for w in body["warnings"]), body["warnings"]


def test_patient_data_is_never_shown_or_logged(client, caplog):
    caplog.set_level(logging.DEBUG)
    data = make.ct_file()
    api = post(client, data, explain="1").get_data(as_text=True)
    page = client.post("/", data={"image": (io.BytesIO(data), "slice.dcm"), "modality": "ct",
                                  "model": "all", "explain": "y"},
                       content_type="multipart/form-data")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for secret in ("Testpatient", "Rosalind", make.PATIENT_ID, "19450317", "St Example"):
        assert secret not in api and secret not in html and secret not in caplog.text


def test_decoded_dataset_never_holds_patient_tags():
    from inference.dicom import _read

    dataset = _read(make.ct_file())
    assert "PatientName" not in dataset and "PatientID" not in dataset
    assert "InstitutionName" not in dataset and "PixelData" in dataset
