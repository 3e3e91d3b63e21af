"""An edited model card takes effect on the next request, with the ``.h5`` untouched:
the loaded model is kept per file and per card."""

from __future__ import annotations

import io
import json
import os

from app import create_app

from .conftest import testing_config
from .model_factory import install, scan_like_png, tiny_model


def predict(client):
    form = {"image": (io.BytesIO(scan_like_png()), "scan.png"), "modality": "ct",
            "model": "vgg16"}
    return client.post("/api/v1/predict", data=form, content_type="multipart/form-data")


def rewrite_card(card_path, card: dict) -> None:
    """New contents, and a modification time clearly later than the old one."""
    before = card_path.stat().st_mtime_ns
    card_path.write_text(json.dumps(card), encoding="utf-8")
    later = before + 5_000_000_000
    os.utime(card_path, ns=(later, later))


def test_edited_card_applies_to_the_next_request(tmp_path, instance_path):
    root = tmp_path / "models"
    model_path = install(tiny_model(seed=3), root, "vgg16", "ct",
                         {"input_size": [32, 32], "threshold": 0.5})
    card_path = model_path.with_suffix(".json")
    model_stat = model_path.stat()
    client = create_app(testing_config(tmp_path, MODEL_DIR=str(root))).test_client()

    first = predict(client)
    assert first.status_code == 200, first.get_data(as_text=True)
    (before,) = first.get_json()["results"]
    probability = before["covid_probability"]
    assert before["threshold"] == 0.5
    assert 0.0 < probability < 1.0
    # A threshold on the other side of this image's probability flips the label.
    if before["label"] == "COVID":
        threshold, flipped = round((probability + 1.0) / 2, 6), "Non-COVID"
    else:
        threshold, flipped = round(probability / 2, 6), "COVID"
    rewrite_card(card_path, {"input_size": [32, 32], "threshold": threshold})

    second = predict(client)
    assert second.status_code == 200, second.get_data(as_text=True)
    (after,) = second.get_json()["results"]
    assert after["threshold"] == threshold
    assert after["label"] == flipped
    assert after["covid_probability"] == probability  # same model, same image

    rewrite_card(card_path, {"input_size": [32, 32], "threshold": threshold,
                             "classes": ["NonCOVID", "COVID", "Pneumonia"]})
    third = predict(client)
    assert third.status_code == 503, third.get_data(as_text=True)
    message = third.get_json()["error"]["message"]
    assert "VGG16_CT_model.json" in message and "3 classes" in message

    assert (model_path.stat().st_mtime_ns, model_path.stat().st_size) == \
        (model_stat.st_mtime_ns, model_stat.st_size)
