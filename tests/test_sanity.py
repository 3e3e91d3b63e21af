"""Input sanity: colour photographs, tiny images and blank images are warned about."""

from __future__ import annotations

import io

import numpy as np
import pytest

from inference.dicom import LUNG_WINDOW, window
from inference.image import DecodedImage, gray_to_rgb
from inference.sanity import coloured_share, contrast, sanity_warnings, uint8_percentiles

from .dicom_factory import hu_phantom
from .model_factory import png_bytes


def chest_like(size: int = 256) -> np.ndarray:
    """A greyscale CT-like slice with some noise, as 8-bit RGB."""
    rng = np.random.default_rng(3)
    hu = hu_phantom(size) + rng.normal(0, 30, (size, size))
    return gray_to_rgb(window(hu, *LUNG_WINDOW))


def colour_photo(size: int = 256) -> np.ndarray:
    """Saturated colours everywhere: sky, grass and a red patch."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[: size // 2] = (70, 130, 230)
    image[size // 2:] = (60, 170, 60)
    image[size // 4: size // 2, size // 4: size // 2] = (220, 40, 40)
    return image


def warnings_for(pixels: np.ndarray, modality: str = "ct") -> list[str]:
    return sanity_warnings(DecodedImage(pixels, "PNG"), modality)


def test_a_chest_like_greyscale_image_gets_no_warning():
    assert warnings_for(chest_like()) == []
    assert warnings_for(chest_like(), "xray") == []


def test_tinted_greyscale_scan_is_not_a_photograph():
    sepia = np.clip(chest_like().astype(float) * [1.0, 0.93, 0.8], 0, 255).astype(np.uint8)
    assert warnings_for(sepia) == []


def test_colour_photograph_is_flagged():
    (warning,) = warnings_for(colour_photo(), "xray")
    assert "colour" in warning and "Chest X-ray" in warning


def test_a_few_coloured_annotations_are_not_a_photograph():
    image = chest_like()
    image[10:20, 10:60] = (255, 0, 0)  # a red arrow or label
    assert warnings_for(image) == []


def test_far_too_small_image_is_flagged():
    (warning,) = warnings_for(chest_like(256)[::3, ::3])
    assert "86 x 86" in warning and "too small" in warning


def test_almost_blank_image_is_flagged():
    blank = np.full((256, 256, 3), 128, dtype=np.uint8)
    blank[100:102, 100:102] = 140  # a speck does not make an image
    (warning,) = warnings_for(blank)
    assert "almost blank" in warning


def test_black_image_is_blank_not_colour():
    assert [w for w in warnings_for(np.zeros((256, 256, 3), np.uint8)) if "blank" in w]
    assert not [w for w in warnings_for(np.zeros((256, 256, 3), np.uint8)) if "colour" in w]


def post(client, data: bytes, route: str = "/api/v1/predict"):
    form = {"image": (io.BytesIO(data), "upload.png"), "modality": "ct", "model": "vgg16"}
    return client.post(route, data=form, content_type="multipart/form-data")


@pytest.mark.parametrize("pixels, phrase", [
    (colour_photo(), "strong colour"),
    (chest_like()[::3, ::3].copy(), "too small"),
    (np.full((256, 256, 3), 90, np.uint8), "almost blank"),
])
def test_warnings_reach_the_api_and_the_verdict_still_comes(client, pixels, phrase):
    response = post(client, png_bytes(pixels))
    assert response.status_code == 200
    body = response.get_json()
    assert any(phrase in w for w in body["warnings"]), body["warnings"]
    assert body["results"][0]["label"] in ("COVID", "Non-COVID")


def test_clean_upload_through_the_api_has_no_warning(client):
    assert post(client, png_bytes(chest_like())).get_json()["warnings"] == []


def test_result_page_shows_warnings_above_the_verdict(client):
    response = post(client, png_bytes(colour_photo()), route="/")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "alert-warning" in html and "strong colour" in html
    assert html.index("strong colour") < html.index('id="verdict"')


@pytest.mark.parametrize("size", [1, 2, 3, 101, 65536])
def test_grey_fast_path_gives_what_the_general_one_gives(size):
    """Grey images (every DICOM) skip the colour conversion and count levels instead of
    sorting them: the same figures as the general path, which colour images take."""
    rng = np.random.default_rng(size)
    for values in (rng.integers(0, 256, size, dtype=np.uint8),
                   rng.integers(120, 124, size, dtype=np.uint8)):
        np.testing.assert_allclose(uint8_percentiles(values, (0, 1, 50, 99, 100)),
                                   np.percentile(values, [0, 1, 50, 99, 100]))
    grey = gray_to_rgb(rng.integers(0, 256, (64, 64), dtype=np.uint8))
    tinted = grey.copy()
    tinted[0, 0, 0] ^= 1  # one pixel off grey: the general path
    assert coloured_share(grey) == 0.0
    assert contrast(grey) == pytest.approx(contrast(tinted), abs=0.05)
    general = np.percentile(grey.astype(np.float32) @ np.array([0.299, 0.587, 0.114],
                                                               dtype=np.float32), [1, 99])
    assert contrast(grey) == pytest.approx(float(general[1] - general[0]), abs=1e-3)
