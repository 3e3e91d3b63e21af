"""Does the upload look like a chest CT slice or X-ray at all? Warnings, never rejections.

A classifier answers COVID or Non-COVID for any picture, including a holiday photo or
a blank page, with the same apparent confidence. These checks catch the common wrong
uploads cheaply (a few milliseconds on a downscaled copy) and say so above the verdict.
"""

from __future__ import annotations

import numpy as np

from .image import DecodedImage
from .registry import MODALITIES

MIN_SIDE = 128  # pixels: the models see 224 x 224, so smaller images are blown up
COLOUR_SATURATION = 0.25  # HSV saturation above which a pixel counts as coloured
COLOUR_SHARE = 0.10  # share of coloured pixels that makes a colour photograph
BLANK_CONTRAST = 12  # grey levels between the 1st and 99th percentile
CHECK_SIDE = 256  # the checks look at a sample at most this large


def _sample(pixels: np.ndarray) -> np.ndarray:
    """Every n-th pixel, at most ``CHECK_SIDE`` a side: shares and percentiles need no
    more, and striding costs nothing where resizing a radiograph costs tens of ms."""
    step = max(1, -(-max(pixels.shape[:2]) // CHECK_SIDE))
    return pixels[::step, ::step]


def is_grey(pixels: np.ndarray) -> bool:
    """Whether every pixel has R = G = B (a DICOM or greyscale file, decoded to RGB)."""
    return bool(np.array_equal(pixels[..., 0], pixels[..., 1])
                and np.array_equal(pixels[..., 1], pixels[..., 2]))


def coloured_share(pixels: np.ndarray) -> float:
    """Share of visible pixels with strong colour; CT and X-ray images have none."""
    import cv2

    if is_grey(pixels):  # saturation 0 everywhere: no need to convert (a study's CPU)
        return 0.0
    hsv = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2HSV)
    saturation = hsv[..., 1].astype(np.float32) / 255.0
    visible = hsv[..., 2] > 40  # near-black pixels have meaningless hue and saturation
    return float(np.mean((saturation > COLOUR_SATURATION) & visible))


def contrast(pixels: np.ndarray) -> float:
    """Grey levels between the 1st and 99th percentile of the luminance."""
    if is_grey(pixels):  # the luminance of R = G = B is that value: count, not sort
        low, high = uint8_percentiles(pixels[..., 0], (1, 99))
        return high - low
    gray = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    low, high = np.percentile(gray, [1, 99])
    return float(high - low)


def uint8_percentiles(values: np.ndarray, percents) -> list[float]:
    """``np.percentile`` (linear) of 8-bit values from their histogram: the k-th
    smallest value is the first level whose running count exceeds k."""
    running = np.cumsum(np.bincount(values.ravel(), minlength=256))
    found = []
    for percent in percents:
        rank = percent / 100 * (running[-1] - 1)
        below, above = (int(np.searchsorted(running, k, side="right"))
                        for k in (np.floor(rank), np.ceil(rank)))
        found.append(below + (rank - np.floor(rank)) * (above - below))
    return [float(value) for value in found]


def sanity_warnings(decoded: DecodedImage, modality: str,
                    input_size: tuple[int, int] = (224, 224)) -> list[str]:
    """Reasons to doubt the upload is a usable image of the chosen modality.

    ``input_size`` is what the chosen models look at, named in the size warning.
    """
    label = MODALITIES[modality].label
    pixels = decoded.pixels
    height, width = pixels.shape[:2]
    found = []
    if min(height, width) < MIN_SIDE:
        found.append(
            f"The image is only {width} x {height} pixels: far too small for a reliable "
            f"result (the models look at {input_size[1]} x {input_size[0]}). Upload the "
            f"original {label}.")
    small = _sample(pixels)
    share = coloured_share(small)
    if share > COLOUR_SHARE:
        found.append(
            f"The image is in strong colour ({share:.0%} of it), like a photograph: a "
            f"{label} is greyscale. The result is probably meaningless.")
    if contrast(small) < BLANK_CONTRAST:
        found.append(
            f"The image is almost blank (nearly uniform): it does not look like a {label}.")
    return found
