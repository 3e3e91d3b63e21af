"""DICOM uploads -> 8-bit RGB, the way a radiologist's viewer would show them.

Order of operations follows the standard: modality LUT (rescale slope / intercept to
Hounsfield units for CT), then the file's VOI LUT or window, or a lung window for CT
files that carry none, then ``MONOCHROME1`` inversion. Multi-frame files are reduced
to one frame (the middle one by default). Patient data is never read into anything
that is shown, logged or stored: only pixel and display tags are used.
"""

from __future__ import annotations

import io

import numpy as np

from .errors import UnsupportedImage, UnusableImage
from .preprocess import DecodedImage, _check_size, gray_to_rgb, stretch_to_uint8

LUNG_WINDOW = (-600.0, 1500.0)  # centre, width in HU


def decode_dicom(data: bytes, max_pixels: int, frame: int | None = None) -> DecodedImage:
    """Decode a DICOM file, or raise 415 (unreadable / unsupported) or 422 (no pixels)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, OSError, ValueError, TypeError, KeyError,
            AttributeError, IndexError, EOFError, NotImplementedError) as exc:
        raise UnsupportedImage("The file is not a readable DICOM file.") from exc
    if "PixelData" not in dataset and "FloatPixelData" not in dataset \
            and "DoubleFloatPixelData" not in dataset:
        raise UnusableImage("The DICOM file has no pixel data.")
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise UnsupportedImage("The DICOM file has no valid image size.") from exc
    _check_size(columns, rows, max_pixels)
    if frames * rows * columns > 4 * max_pixels:
        raise UnusableImage("The DICOM file holds too many frames to process.")
    index = frames // 2 if frame is None else min(max(frame, 0), frames - 1)
    try:
        pixels = _frame_pixels(dataset, index, frames)
    except (NotImplementedError, RuntimeError) as exc:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or str(syntax or "unknown")
        raise UnsupportedImage(
            f"The DICOM file uses a compression this service cannot decode ({name})."
        ) from exc
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, OSError) as exc:
        raise UnsupportedImage("The DICOM pixel data is corrupt or incomplete.") from exc
    modality = str(getattr(dataset, "Modality", "") or "").upper() or None
    if pixels.ndim == 3 and pixels.shape[-1] == 3:  # colour (ultrasound, secondary capture)
        rgb = stretch_to_uint8(pixels) if pixels.dtype != np.uint8 else pixels
        return DecodedImage(np.ascontiguousarray(rgb), "DICOM", dicom_modality=modality)
    gray = _display_gray(dataset, pixels, modality)
    return DecodedImage(gray_to_rgb(gray), "DICOM", dicom_modality=modality)


def _frame_pixels(dataset, index: int, frames: int) -> np.ndarray:
    """Decode only the wanted frame of a multi-frame file."""
    if frames > 1:
        from pydicom.pixels import pixel_array

        return np.asarray(pixel_array(dataset, index=index))
    return np.asarray(dataset.pixel_array)


def _display_gray(dataset, pixels: np.ndarray, modality: str | None) -> np.ndarray:
    """Modality LUT, then VOI LUT / window (or a lung window for CT), then polarity."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float64)
    has_window = "WindowCenter" in dataset and "WindowWidth" in dataset
    has_voi_lut = "VOILUTSequence" in dataset
    if has_window or has_voi_lut:
        values = np.asarray(apply_voi_lut(values, dataset, index=0), dtype=np.float64)
        gray = stretch_to_uint8(values)
    elif modality == "CT":
        gray = window(values, *LUNG_WINDOW)
    else:
        gray = stretch_to_uint8(values)
    if str(getattr(dataset, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        gray = 255 - gray
    return gray


def window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Linear window to 0..255, as DICOM PS3.3 C.11.2.1.2 defines it."""
    low = centre - width / 2.0
    scaled = (values - low) / max(width, 1.0) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
