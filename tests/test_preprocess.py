"""Decoding every image kind the service accepts, and the one preprocessing function."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from inference.errors import UnsupportedImage, UnusableImage
from inference.preprocess import decode_image, model_input, resize
from inference.cards import ModelCard


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient(width=40, height=30) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float64)
    y = np.linspace(0, 255, height, dtype=np.float64)
    return np.stack([np.add.outer(y, x) / 2] * 3, axis=-1).astype(np.uint8)


RGB = gradient()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF"])
def test_rgb_formats_decode_to_same_shape(fmt):
    decoded = decode_image(encode(Image.fromarray(RGB), fmt))
    assert decoded.pixels.shape == (30, 40, 3)
    assert decoded.pixels.dtype == np.uint8
    tolerance = 12 if fmt == "JPEG" else 0
    assert np.abs(decoded.pixels.astype(int) - RGB.astype(int)).max() <= tolerance


def test_grayscale_becomes_three_equal_channels():
    gray = Image.fromarray(RGB[:, :, 0], mode="L")
    pixels = decode_image(encode(gray, "PNG")).pixels
    assert pixels.shape == (30, 40, 3)
    assert (pixels[:, :, 0] == pixels[:, :, 2]).all()
    assert (pixels[:, :, 0] == RGB[:, :, 0]).all()


def test_sixteen_bit_is_stretched_not_clipped():
    # 12-bit data in a 16-bit PNG: a naive cast would clip almost everything to 255.
    values = np.linspace(0, 4095, 40 * 30).reshape(30, 40).astype(np.uint16)
    image = Image.fromarray(values)  # uint16 -> mode I;16
    pixels = decode_image(encode(image, "PNG")).pixels
    assert pixels.min() == 0 and pixels.max() == 255
    assert 100 < pixels.mean() < 155  # a linear ramp stays a linear ramp


def test_rgba_is_composited_on_black():
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:5, :, 3] = 255  # top half opaque red, bottom transparent
    pixels = decode_image(encode(Image.fromarray(rgba, mode="RGBA"), "PNG")).pixels
    assert tuple(pixels[0, 0]) == (255, 0, 0)
    assert tuple(pixels[9, 9]) == (0, 0, 0)


def test_palette_image():
    image = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pixels = decode_image(encode(image, "PNG")).pixels
    assert pixels.shape == (30, 40, 3)
    assert np.abs(pixels.astype(int) - RGB.astype(int)).mean() < 20


def test_cmyk_jpeg():
    image = Image.fromarray(RGB).convert("CMYK")
    pixels = decode_image(encode(image, "JPEG", quality=95)).pixels
    assert pixels.shape == (30, 40, 3)
    assert np.abs(pixels.astype(int) - RGB.astype(int)).mean() < 20


def test_exif_orientation_is_applied():
    image = Image.fromarray(RGB)  # 40 wide, 30 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.pixels.shape == (40, 30, 3)


def test_empty_upload_is_422():
    with pytest.raises(UnusableImage):
        decode_image(b"")


def test_text_is_415():
    with pytest.raises(UnsupportedImage):
        decode_image(b"this is not an image at all")


def test_truncated_png_is_415():
    data = encode(Image.fromarray(RGB), "PNG")
    with pytest.raises(UnsupportedImage):
        decode_image(data[: len(data) // 2])


def test_pixel_limit_is_checked_from_the_header():
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(UnusableImage, match="limit"):
        decode_image(data, max_pixels=1_000_000)


def test_prepare_defaults_match_the_published_pipeline():
    """OpenCV bilinear resize to 224 x 224 then / 255, as the published models expect."""
    import cv2

    pixels = decode_image(encode(Image.fromarray(RGB), "PNG")).pixels
    card = ModelCard("vgg16", "ct")
    prepared = model_input(pixels, card)
    expected = cv2.resize(RGB, (224, 224)).astype(np.float32) / 255.0
    assert prepared.shape == (224, 224, 3) and prepared.dtype == np.float32
    np.testing.assert_allclose(prepared, expected, atol=1e-6)


def test_prepare_imagenet_equals_keras_preprocess_input():
    from keras.applications import inception_v3, resnet50, vgg16

    card = ModelCard("vgg16", "ct", input_size=(30, 40), preprocessing="imagenet")
    np.testing.assert_allclose(model_input(RGB, card),
                               vgg16.preprocess_input(RGB.astype(np.float32)), atol=1e-4)
    card = ModelCard("resnet50", "ct", input_size=(30, 40), preprocessing="imagenet")
    np.testing.assert_allclose(model_input(RGB, card),
                               resnet50.preprocess_input(RGB.astype(np.float32)), atol=1e-4)
    card = ModelCard("inceptionv3", "ct", input_size=(30, 40), preprocessing="imagenet")
    np.testing.assert_allclose(model_input(RGB, card),
                               inception_v3.preprocess_input(RGB.astype(np.float32)),
                               atol=1e-5)


def test_resize_respects_height_width_order():
    assert resize(RGB, (10, 20)).shape == (10, 20, 3)
