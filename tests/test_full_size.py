"""The four real architectures, full size, in the published layout, served end to end."""

from __future__ import annotations

import io

import numpy as np
import pytest

from app import create_app
from inference.preprocess import decode_image, model_input
from inference.cards import ModelCard

from .conftest import testing_config
from .model_factory import install, png_bytes

PUBLISHED = [("vgg16", "ct"), ("vgg19", "xray"), ("inceptionv3", "ct"), ("resnet50", "xray")]


@pytest.fixture(scope="module")
def full_size(tmp_path_factory, full_size_models):
    """Each architecture saved as .h5 without a card (the published defaults apply)."""
    root = tmp_path_factory.mktemp("full_size_models")
    expected = {}
    image = decode_image(png_bytes(size=(300, 260), seed=11)).pixels
    for arch, modality in PUBLISHED:
        model = full_size_models(arch)
        install(model, root, arch, modality)
        batch = model_input(image, ModelCard(arch, modality))[None]
        expected[(modality, arch)] = model.predict(batch, verbose=0)[0]
    return root, expected


@pytest.mark.parametrize("arch,modality", PUBLISHED)
def test_published_file_answers_like_keras(full_size, tmp_path, arch, modality):
    root, expected = full_size
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(root), MAX_LOADED_MODELS=1))
    response = app.test_client().post("/api/v1/predict", data={
        "image": (io.BytesIO(png_bytes(size=(300, 260), seed=11)), "scan.png"),
        "modality": modality, "model": arch}, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data(as_text=True)
    (result,) = response.get_json()["results"]
    assert result["covid_probability"] == pytest.approx(float(expected[(modality, arch)][1]),
                                                        abs=1e-4)
    assert np.isclose(expected[(modality, arch)].sum(), 1.0, atol=1e-4)
