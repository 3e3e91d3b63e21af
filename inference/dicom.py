"""DICOM uploads -> 8-bit RGB, the way a radiologist's viewer would show them.

Order of operations follows the standard (PS3.3 C.11): the modality LUT (rescale slope
and intercept to Hounsfield units for CT, or a Modality LUT Sequence), then the file's
VOI LUT Sequence or its first window (centre / width, with its VOI LUT function), or a
lung window (centre -600 HU, width 1500 HU) for CT files that carry neither, then
``MONOCHROME1`` inversion. Multi-frame files are reduced to one frame, the middle one
by default. Compressed transfer syntaxes are decoded by pydicom's plug-ins (pylibjpeg,
Pillow); one without a decoder is a 415 that names it.

Patient data never enters this module: the file is parsed with ``specific_tags``, so
only the pixel and display attributes below are read at all.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np

from .anatomy import KEYWORDS as ANATOMY_KEYWORDS
from .anatomy import body_part
from .errors import UnsupportedImage, UnusableImage
from .image import DecodedImage, check_size, gray_to_rgb, stretch_to_uint8

LUNG_WINDOW = (-600.0, 1500.0)  # centre, width in HU
MAX_FRAMES_PIXELS_FACTOR = 4  # a multi-frame file may hold 4x the single-image limit

PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Everything this module reads; nothing else (names, IDs, dates...) is ever parsed.
READ_KEYWORDS = [
    *PIXEL_DATA_KEYWORDS,
    "Modality", "Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "PhotometricInterpretation", "PlanarConfiguration",
    "NumberOfFrames", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence",
    "WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence",
    "RedPaletteColorLookupTableDescriptor", "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor", "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData", "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData", "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData", *ANATOMY_KEYWORDS,
]


def decode_dicom(data: bytes, max_pixels: int, frame: int | None = None) -> DecodedImage:
    """Decode a DICOM file, or raise 415 (unreadable / unsupported) or 422 (no pixels).

    ``frame`` picks one frame of a multi-frame file (0-based, clamped); the default is
    the middle frame.
    """
    dataset = _read(data)
    if len(dataset) == 0 and "MediaStorageSOPClassUID" not in getattr(dataset, "file_meta", {}):
        # Forced parsing of garbage yields an empty dataset: not DICOM, not "no pixels".
        raise UnsupportedImage("The file is not a readable DICOM file.")
    if not any(keyword in dataset for keyword in PIXEL_DATA_KEYWORDS):
        raise UnusableImage("The DICOM file has no pixel data (it may be a report or a "
                            "structured document): upload an image file.")
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise UnsupportedImage("The DICOM file has no valid image size.") from exc
    check_size(columns, rows, max_pixels)
    if frames < 1 or frames * rows * columns > MAX_FRAMES_PIXELS_FACTOR * max_pixels:
        raise UnusableImage("The DICOM file holds too many frames to process.")
    index = frames // 2 if frame is None else min(max(int(frame), 0), frames - 1)
    pixels = _frame_pixels(dataset, index, frames)
    notes = []
    if frames > 1:
        notes.append(f"The DICOM file holds {frames} frames; frame {index + 1} "
                     f"({'the middle one' if frame is None else 'as chosen'}) was analysed.")
    modality = str(dataset.get("Modality", "") or "").strip().upper() or None
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        rgb = _palette_to_rgb(dataset, pixels)
    elif pixels.ndim == 3 and pixels.shape[-1] == 3:  # colour: ultrasound, secondary capture
        rgb = pixels if pixels.dtype == np.uint8 else stretch(pixels)
    else:
        rgb = gray_to_rgb(display_gray(dataset, pixels, modality))
    return DecodedImage(np.ascontiguousarray(rgb), "DICOM", warnings=notes,
                        dicom_modality=modality, body_part=body_part(dataset))


def _read(data: bytes):
    """Parse only the attributes this module needs (415 when it is not DICOM at all)."""
    import pydicom
    from pydicom.errors import BytesLengthException, InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings may quote element values
            return pydicom.dcmread(io.BytesIO(data), force=True, specific_tags=READ_KEYWORDS)
    except (InvalidDicomError, OSError, ValueError, TypeError, KeyError, AttributeError,
            IndexError, EOFError, NotImplementedError, OverflowError, RuntimeError,
            struct.error, BytesLengthException) as exc:
        raise UnsupportedImage("The file is not a readable DICOM file.") from exc


def transfer_syntax_name(dataset) -> str:
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if not syntax:
        return "unknown transfer syntax"
    name = getattr(syntax, "name", "") or ""
    return name if name and name != str(syntax) else f"transfer syntax {syntax}"


def _has_decoder(dataset) -> bool:
    from pydicom.pixels import get_decoder

    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if not syntax:
        return True  # read as implicit little endian, which needs no plug-in
    try:
        return get_decoder(syntax).is_available
    except (NotImplementedError, ValueError):
        return False


def _preferred_plugin(dataset) -> str:
    """Pillow decodes 8-bit baseline JPEG 3-4x faster than pylibjpeg (bench/explain.py);
    anything else goes to pydicom's default order."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGBaseline8Bit

    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax == JPEGBaseline8Bit and "pillow" in get_decoder(syntax).available_plugins:
        return "pillow"
    return ""


def _frame_pixels(dataset, index: int, frames: int) -> np.ndarray:
    """Decode only the wanted frame, with colour converted to RGB by pydicom."""
    from pydicom.pixels import pixel_array

    if not _has_decoder(dataset):
        raise UnsupportedImage(
            f"The DICOM file is compressed as {transfer_syntax_name(dataset)}, which this "
            f"service cannot decode: export it uncompressed or as JPEG / JPEG 2000.")
    frame = index if frames > 1 else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plugin = _preferred_plugin(dataset)
            if plugin:
                try:
                    return np.asarray(pixel_array(dataset, index=frame,
                                                  decoding_plugin=plugin))
                except (RuntimeError, ValueError, NotImplementedError, OSError):
                    pass  # the other plug-ins may still manage
            return np.asarray(pixel_array(dataset, index=frame))
    except (NotImplementedError, RuntimeError) as exc:
        raise UnsupportedImage(
            f"The DICOM pixel data ({transfer_syntax_name(dataset)}) could not be decoded: "
            f"the compressed data is corrupt or not conformant.") from exc
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, OSError,
            EOFError) as exc:
        raise UnsupportedImage("The DICOM pixel data is corrupt or incomplete.") from exc


def display_gray(dataset, pixels: np.ndarray, modality: str | None) -> np.ndarray:
    """Modality LUT, then VOI LUT / window (or a lung window for CT), then polarity."""
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(pixels, dataset), dtype=np.float32)
    if pixels.ndim == 3:  # a frame stack without a frame choice: keep the first
        values = values[0]
    gray = _voi(dataset, values)
    if gray is None:
        gray = window(values, *LUNG_WINDOW) if modality == "CT" else stretch(values)
    if str(dataset.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        gray = 255 - gray
    return gray


def _voi(dataset, values: np.ndarray) -> np.ndarray | None:
    """The file's own VOI LUT, else its first window, as 8 bits; None if it has neither.

    pydicom does the arithmetic (LINEAR, LINEAR_EXACT and SIGMOID windows); its output
    range is made 0..255 by windowing on a view that declares 8-bit output.
    """
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_voi, apply_windowing

    if dataset.get("VOILUTSequence"):
        try:
            mapped = np.asarray(apply_voi(values, dataset, index=0), dtype=np.float64)
            lut = np.asarray(dataset.VOILUTSequence[0].LUTData, dtype=np.float64)
            top = float(lut.max()) if lut.size else 0.0
            if top > 0:
                return np.clip(np.rint(mapped * (255.0 / top)), 0, 255).astype(np.uint8)
        except (ValueError, TypeError, AttributeError, KeyError, IndexError):
            pass  # a broken LUT: fall back to the window, as viewers do
    centre, width = _first(dataset.get("WindowCenter")), _first(dataset.get("WindowWidth"))
    if centre is None or width is None:
        return None
    view = Dataset()
    view.PhotometricInterpretation = "MONOCHROME2"
    view.BitsStored, view.PixelRepresentation = 8, 0
    view.WindowCenter, view.WindowWidth = centre, width
    view.VOILUTFunction = str(dataset.get("VOILUTFunction", "") or "LINEAR").upper()
    try:
        return np.clip(np.rint(apply_windowing(values.copy(), view)), 0, 255).astype(np.uint8)
    except ValueError:  # zero width or an unknown function: treat as no window
        return None


def _first(value) -> float | None:
    """The first of a possibly multi-valued DS element, as a float."""
    if value is None or value == "":
        return None
    try:
        if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
            value = value[0] if len(value) else None
        return None if value is None else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _palette_to_rgb(dataset, pixels: np.ndarray) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    try:
        rgb = np.asarray(apply_color_lut(pixels, dataset))
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise UnsupportedImage("The DICOM palette colour table is missing or corrupt.") from exc
    return rgb if rgb.dtype == np.uint8 else stretch(rgb)


def stretch(values: np.ndarray) -> np.ndarray:
    """The array's own min..max to 0..255 (flat images become black).

    OpenCV does it in a few milliseconds on a 5-megapixel radiograph, where NumPy's
    float64 arithmetic takes a few hundred; non-finite values take the careful path.
    """
    import cv2

    values = np.asarray(values, dtype=np.float32)
    if not np.isfinite(values).all():
        return stretch_to_uint8(values)
    flat = values.reshape(values.shape[0], -1)  # one channel: one min and max for all
    gray = cv2.normalize(flat, None, 0, 255, cv2.NORM_MINMAX, dtype=cv2.CV_8U)
    return gray.reshape(values.shape)


def window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Linear window to 0..255, as DICOM PS3.3 C.11.2.1.2 defines it."""
    low = centre - width / 2.0
    scaled = (np.asarray(values, dtype=np.float32) - np.float32(low)) * np.float32(
        255.0 / max(width, 1.0))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
