"""Turn uploaded bytes into the exact array a model was trained on.

Two steps, each one function used by the web app, the API and the training tool alike:

* ``decode_image(data)``: bytes (PNG, JPEG, BMP, TIFF, DICOM) -> 8-bit RGB array,
  with EXIF orientation applied and 16-bit, palette, CMYK and alpha images handled.
  Size limits are checked from the header before any pixel is decoded.
* ``model_input(pixels, card)``: RGB array -> float32 model input, driven by the model card.
  The default reproduces the published pipeline (OpenCV bilinear resize to 224 x 224,
  then pixel / 255); ``imagenet`` uses the architecture's own ``preprocess_input``.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .cards import ModelCard
from .dicom import decode_dicom
from .errors import UnsupportedImage, UnusableImage
from .image import DecodedImage, check_size, gray_to_rgb, stretch_to_uint8
from .registry import ARCHITECTURES

DEFAULT_MAX_PIXELS = 50_000_000
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")

# Pillow's own bomb guard must never fire before ours: we check the header ourselves
# against the configured limit and raise a clear 422.
Image.MAX_IMAGE_PIXELS = None


def is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                 filename: str | None = None) -> DecodedImage:
    """Decode an upload (raster image or DICOM) into 8-bit RGB, or raise 415 / 422.

    The content decides, not the name: a PNG called ``scan.dcm`` is read as a PNG.
    The ``.dcm`` name only lets DICOM files without the standard preamble through.
    """
    if not data:
        raise UnusableImage("The uploaded file is empty.")
    if is_dicom(data):
        return _decode_dicom(data, max_pixels)
    try:
        return _decode_raster(data, max_pixels)
    except UnsupportedImage:
        if not (filename or "").lower().endswith((".dcm", ".dicom")):
            raise
        return _decode_dicom(data, max_pixels)


def _decode_dicom(data: bytes, max_pixels: int) -> DecodedImage:
    return decode_dicom(data, max_pixels=max_pixels)


def _decode_raster(data: bytes, max_pixels: int) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UnsupportedImage(
            "The file is not a readable image: upload a PNG, JPEG, BMP, TIFF or DICOM file."
        ) from exc
    check_size(image.width, image.height, max_pixels)
    try:
        image = ImageOps.exif_transpose(image) or image
        rgb = to_rgb(image)
    except Image.DecompressionBombError as exc:  # pragma: no cover - guarded above
        raise UnusableImage(str(exc)) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UnsupportedImage(
            "The image could not be decoded: the file is truncated or corrupt."
        ) from exc
    return DecodedImage(pixels=rgb, source_format=image.format or "PNG")


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8. High bit depths are stretched, not clipped."""
    mode = image.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        array = np.asarray(image, dtype=np.float64)
        return gray_to_rgb(stretch_to_uint8(array))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # Composite on black: scans exported with alpha are dark-background images.
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(array)


_CV2_INTERPOLATION = {
    "bilinear": "INTER_LINEAR",
    "nearest": "INTER_NEAREST",
    "bicubic": "INTER_CUBIC",
    "area": "INTER_AREA",
    "lanczos": "INTER_LANCZOS4",
}


def resize(pixels: np.ndarray, size: tuple[int, int], method: str = "bilinear") -> np.ndarray:
    """Resize (H, W, C) to ``size`` = (h, w) with OpenCV, as the published pipeline did."""
    import cv2

    height, width = int(size[0]), int(size[1])
    if pixels.shape[:2] == (height, width):
        return pixels
    interpolation = getattr(cv2, _CV2_INTERPOLATION[method])
    return cv2.resize(pixels, (width, height), interpolation=interpolation)


def model_input(pixels: np.ndarray, card: ModelCard) -> np.ndarray:
    """8-bit RGB (H, W, 3) -> float32 (h, w, 3) model input, as the card says.

    This is the one preprocessing function: serving, evaluation and training call it.
    """
    resized = resize(pixels, card.input_size, card.resize).astype(np.float32)
    if card.preprocessing == "rescale":
        return resized / np.float32(255.0)
    return imagenet_preprocess(resized, card.architecture)


# Keras's ImageNet ``preprocess_input`` modes, restated so that a model served by ONNX
# Runtime needs no TensorFlow import; tests check them against Keras itself.
_CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def imagenet_preprocess(batch: np.ndarray, architecture: str) -> np.ndarray:
    """The architecture's ImageNet ``preprocess_input`` (``caffe`` or ``tf`` mode)."""
    values = np.asarray(batch, dtype=np.float32)
    if ARCHITECTURES[architecture].imagenet_mode == "tf":  # InceptionV3: to [-1, 1]
        return values / np.float32(127.5) - np.float32(1.0)
    return values[..., ::-1] - _CAFFE_BGR_MEAN  # VGG, ResNet50: BGR, mean-centred
