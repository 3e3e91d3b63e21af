"""DICOM files written with pydicom for the tests: CT, X-ray, multi-frame, compressed.

Every file carries made-up patient data, so the tests can check it never comes out.
"""

from __future__ import annotations

import io

import numpy as np

PATIENT_NAME = "Testpatient^Rosalind"
PATIENT_ID = "PID-7731-SECRET"


def hu_phantom(size: int = 256) -> np.ndarray:
    """A chest-like CT slice in Hounsfield units: air outside, soft tissue body, two
    lungs (-850 HU) with a denser nodule (-100 HU) in the right one, bone (+700 HU)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    hu = np.full((size, size), -1000.0)
    body = ((xx - 0.5) / 0.42) ** 2 + ((yy - 0.5) / 0.32) ** 2 <= 1
    hu[body] = 40.0
    for cx in (0.32, 0.68):
        lung = ((xx - cx) / 0.14) ** 2 + ((yy - 0.5) / 0.22) ** 2 <= 1
        hu[lung] = -850.0
    hu[((xx - 0.3) ** 2 + (yy - 0.45) ** 2) <= 0.03 ** 2] = -100.0
    hu[((xx - 0.5) ** 2 + (yy - 0.7) ** 2) <= 0.04 ** 2] = 700.0
    return hu


def new_dataset(modality: str = "CT", transfer_syntax=None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (CTImageStorage, DigitalXRayImageStorageForPresentation,
                             ExplicitVRLittleEndian, generate_uid)

    storage = CTImageStorage if modality == "CT" else DigitalXRayImageStorageForPresentation
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = storage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19450317"
    ds.InstitutionName = "St Example Hospital"
    return ds


def to_bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def ct_file(hu: np.ndarray | None = None, window: tuple[float, float] | None = None,
            slope: float = 1.0, intercept: float = -1024.0) -> bytes:
    """A 16-bit signed CT file storing ``(hu - intercept) / slope``, optionally windowed."""
    hu = hu_phantom() if hu is None else hu
    ds = new_dataset("CT")
    stored = np.rint((hu - intercept) / slope).astype(np.int16)
    ds.set_pixel_data(stored, "MONOCHROME2", 16)
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    return to_bytes(ds)


def xray_file(values: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12,
              modality: str = "DX", window: tuple[float, float] | None = None) -> bytes:
    """An unsigned 16-bit-allocated X-ray (``bits`` stored), in either polarity."""
    ds = new_dataset(modality)
    ds.set_pixel_data(values.astype(np.uint16), photometric, bits)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    return to_bytes(ds)


def multiframe_file(frames: np.ndarray, modality: str = "CT") -> bytes:
    """``frames`` is (n, rows, columns) uint16; each frame stays distinguishable."""
    ds = new_dataset(modality)
    ds.set_pixel_data(frames.astype(np.uint16), "MONOCHROME2", 16)
    return to_bytes(ds)


def jpeg_baseline_file(gray: np.ndarray, modality: str = "CR") -> bytes:
    """An 8-bit greyscale image compressed as JPEG Baseline (Pillow) and encapsulated."""
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    buffer = io.BytesIO()
    Image.fromarray(gray.astype(np.uint8), mode="L").save(buffer, format="JPEG", quality=95)
    ds = new_dataset(modality, JPEGBaseline8Bit)
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    return to_bytes(ds)


def compressed_ct_file(transfer_syntax, hu: np.ndarray | None = None) -> bytes:
    """A CT file compressed by pydicom's own encoders (RLE, JPEG 2000 via pylibjpeg)."""
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(ct_file(hu)))
    ds.compress(transfer_syntax)
    return to_bytes(ds)


def undecodable_file(transfer_syntax) -> bytes:
    """A file that claims a compression no installed plug-in decodes."""
    from pydicom.encaps import encapsulate

    ds = new_dataset("CT", transfer_syntax)
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    return to_bytes(ds)


def no_pixel_data_file(modality: str = "CT") -> bytes:
    ds = new_dataset(modality)
    ds.Rows = ds.Columns = 64
    return to_bytes(ds)
