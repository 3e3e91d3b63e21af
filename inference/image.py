"""The decoded upload and the pixel helpers every decoder shares (a leaf module).

Raster decoding (``preprocess``) and DICOM decoding (``dicom``) both produce a
``DecodedImage`` and both need the same size check and gray-to-RGB helpers; keeping
them here lets each decoder import them without importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import UnusableImage


@dataclass
class DecodedImage:
    """An upload reduced to 8-bit RGB, plus what was learnt on the way."""

    pixels: np.ndarray  # (H, W, 3) uint8
    source_format: str  # "PNG", "JPEG", ..., "DICOM"
    warnings: list[str] = field(default_factory=list)
    dicom_modality: str | None = None  # CT, CR, DX... when the upload was DICOM
    body_part: str | None = None  # what a DICOM file says it shows (inference/anatomy.py)


def check_size(width: int, height: int, max_pixels: int) -> None:
    """Refuse an empty image or one over the pixel limit, from its header alone."""
    if width < 1 or height < 1:
        raise UnusableImage("The image has no pixels.")
    if width * height > max_pixels:
        raise UnusableImage(
            f"The image is {width} x {height} pixels, more than the limit of "
            f"{max_pixels:,} pixels. Downscale it and try again."
        )


def stretch_to_uint8(array: np.ndarray) -> np.ndarray:
    """Linearly map the array's own min..max to 0..255 (flat images become black)."""
    array = np.asarray(array, dtype=np.float64)
    finite = np.isfinite(array)
    if not finite.any():
        return np.zeros(array.shape, dtype=np.uint8)
    low, high = float(array[finite].min()), float(array[finite].max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = (np.where(finite, array, low) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """The grey plane as three equal channels (stacking: half the time of repeat)."""
    return np.stack([gray, gray, gray], axis=-1)
