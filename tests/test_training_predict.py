"""``python -m training predict``: a card that does not fit its model is named."""

from __future__ import annotations

import pytest

import inference.cache
from training.__main__ import main

from .model_factory import install, png_bytes, tiny_model


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(png_bytes(seed=4))
    return path


@pytest.fixture
def width_seen_only_when_scoring(monkeypatch):
    """Let the model load as if its output fitted the card, so the output rows read
    while scoring are the first to show the mismatch."""
    monkeypatch.setattr(inference.cache, "check_output_width", lambda card, width: None)


@pytest.mark.parametrize("card, names", [
    ({"input_size": [32, 32], "classes": ["COVID", "NonCOVID", "Other"]},
     "VGG16_CT_model.h5 does not fit its model card VGG16_CT_model.json: 3 classes"),
    (None, "VGG16_CT_model.h5 does not fit the published defaults (it has no card): "),
])
def test_misfitting_card_names_the_model_file_and_card(
        tmp_path, image, capsys, width_seen_only_when_scoring, card, names):
    outputs = 2 if card else 3
    install(tiny_model(input_size=(224, 224) if card is None else (32, 32),
                       outputs=outputs), tmp_path / "models", "vgg16", "ct", card)
    code = main(["predict", "--modality", "ct", "--model", "vgg16", "--model-dir",
                 str(tmp_path / "models"), "--no-progress", str(image)])
    err = capsys.readouterr().err
    assert code == 2
    assert names in err
