"""Model cards are checked when read: a bad one makes its model unavailable (503 with
the reason), never a 500 or a silently wrong answer, and the other models keep working."""

from __future__ import annotations

import io
import json
import os

import pytest

from inference.registry import discover
from inference.cards import ModelCard, check_output_width

from .conftest import testing_config
from .model_factory import constant_model, install, scan_like_png, tiny_model

CARD_32 = {"input_size": [32, 32]}
THRESHOLD_PROBLEM = "threshold must be a number between 0 and 1"
BAD_CARDS = {
    "threshold NaN": ('{"input_size": [32, 32], "threshold": NaN}', THRESHOLD_PROBLEM),
    "threshold inf": ('{"input_size": [32, 32], "threshold": Infinity}', THRESHOLD_PROBLEM),
    "threshold 1.5": ('{"input_size": [32, 32], "threshold": 1.5}', THRESHOLD_PROBLEM),
    "threshold 0": ('{"input_size": [32, 32], "threshold": 0}', THRESHOLD_PROBLEM),
    "threshold 1": ('{"input_size": [32, 32], "threshold": 1}', THRESHOLD_PROBLEM),
    "threshold abc": ('{"input_size": [32, 32], "threshold": "abc"}', THRESHOLD_PROBLEM),
    "threshold true": ('{"input_size": [32, 32], "threshold": true}', THRESHOLD_PROBLEM),
    "no COVID class": ('{"input_size": [32, 32], "classes": ["NonCOVID", "Pneumonia"]}',
                       "classes must name COVID exactly once"),
    "one class": ('{"input_size": [32, 32], "classes": ["COVID"]}',
                  "classes must be at least 2 unique names"),
    "repeated class": ('{"input_size": [32, 32], "classes": ["COVID", "COVID"]}',
                       "classes must be at least 2 unique names"),
    "unknown preprocessing": ('{"input_size": [32, 32], "preprocessing": "magic"}',
                              "use one of rescale, imagenet"),
    "unknown resize": ('{"input_size": [32, 32], "resize": "cubic"}',
                       "use one of bilinear, nearest"),
    "fractional input_size": ('{"input_size": [32, 32.5]}', "input_size must be"),
}


def post(client, model, modality="ct"):
    form = {"image": (io.BytesIO(scan_like_png()), "scan.png"), "modality": modality,
            "model": model}
    return client.post("/api/v1/predict", data=form, content_type="multipart/form-data")


def client_for(tmp_path_factory, model_dir):
    from app import create_app

    config = testing_config(tmp_path_factory.mktemp("instance"), MODEL_DIR=str(model_dir))
    return create_app(config).test_client()


@pytest.fixture(scope="module")
def card_dir(tmp_path_factory):
    """CT VGG16 (its card rewritten by each test) and CT VGG19 with a good card."""
    root = tmp_path_factory.mktemp("card_models")
    install(tiny_model(seed=0), root, "vgg16", "ct", CARD_32)
    install(tiny_model(seed=1), root, "vgg19", "ct", CARD_32)
    return root


@pytest.fixture(scope="module")
def card_client(tmp_path_factory, card_dir):
    return client_for(tmp_path_factory, card_dir)


@pytest.mark.parametrize("text,problem", BAD_CARDS.values(), ids=BAD_CARDS.keys())
def test_bad_card_makes_its_model_unavailable_and_others_answer(card_dir, card_client,
                                                                text, problem):
    (card_dir / "vgg16" / "VGG16_CT_model.json").write_text(text, encoding="utf-8")
    broken = post(card_client, "vgg16")
    assert broken.status_code == 503, broken.get_data(as_text=True)
    message = broken.get_json()["error"]["message"]
    assert "VGG16_CT_model.json" in message and problem in message
    models = card_client.get("/api/v1/models").get_json()["models"]
    listed = next(m for m in models if (m["modality"], m["architecture"]) == ("ct", "vgg16"))
    assert listed["card_error"].startswith("VGG16_CT_model.json: ")
    assert problem in listed["card_error"]
    combined = post(card_client, "all")
    assert combined.status_code == 200
    body = combined.get_json()
    assert [r["architecture"] for r in body["results"]] == ["vgg19"]
    assert any("VGG16 skipped" in w and problem in w for w in body["warnings"])


def test_class_count_must_match_the_models_outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("width_models")
    three = {"input_size": [32, 32], "classes": ["NonCOVID", "COVID", "Pneumonia"]}
    install(tiny_model(seed=0), root, "vgg16", "ct", three)  # two outputs
    install(constant_model(0.7, outputs=3), root, "vgg19", "ct",
            {**three, "classes": ["NonCOVID", "Pneumonia", "COVID"]})
    client = client_for(tmp_path_factory, root)
    broken = post(client, "vgg16")
    assert broken.status_code == 503
    message = broken.get_json()["error"]["message"]
    assert "VGG16_CT_model.json" in message and "3 classes" in message
    body = post(client, "all").get_json()
    (result,) = body["results"]
    assert result["architecture"] == "vgg19" and result["label"] == "COVID"
    assert result["covid_probability"] == pytest.approx(0.7, abs=1e-5)
    assert any("VGG16 skipped" in w for w in body["warnings"])


def test_single_sigmoid_unit_is_the_probability_of_the_second_class(tmp_path_factory):
    root = tmp_path_factory.mktemp("sigmoid_models")
    install(constant_model(0.2, outputs=1), root, "vgg16", "xray",
            {"input_size": [32, 32], "classes": ["COVID", "NonCOVID"]})
    install(constant_model(0.2, outputs=1), root, "resnet50", "xray", CARD_32)
    body = post(client_for(tmp_path_factory, root), "all", modality="xray").get_json()
    answers = {r["architecture"]: (r["label"], r["covid_probability"])
               for r in body["results"]}
    assert answers["vgg16"][0] == "COVID"
    assert answers["vgg16"][1] == pytest.approx(0.8, abs=1e-5)
    assert answers["resnet50"][0] == "Non-COVID"
    assert answers["resnet50"][1] == pytest.approx(0.2, abs=1e-5)


@pytest.mark.parametrize("classes,width,fits", [
    (("NonCOVID", "COVID"), 2, True),
    (("NonCOVID", "COVID"), 1, True),
    (("NonCOVID", "COVID"), 3, False),
    (("NonCOVID", "COVID", "Pneumonia"), 3, True),
    (("NonCOVID", "COVID", "Pneumonia"), 2, False),
    (("NonCOVID", "COVID", "Pneumonia"), 1, False),
])
def test_check_output_width(classes, width, fits):
    problem = check_output_width(ModelCard("vgg16", "ct", classes=classes), width)
    if fits:
        assert problem is None
    else:
        assert f"{len(classes)} classes" in problem and f"gives {width} output" in problem


def test_covid_index_refuses_a_card_without_covid():
    with pytest.raises(ValueError, match="no COVID class"):
        ModelCard("vgg16", "ct", classes=("Normal", "Pneumonia")).covid_index  # noqa: B018


def test_card_signature_follows_the_card_file(tmp_path):
    install(tiny_model(), tmp_path, "vgg16", "ct")
    install(tiny_model(), tmp_path, "vgg19", "ct", CARD_32)

    def signature(arch):
        return next(e for e in discover(tmp_path) if e.key == ("ct", arch)).card_signature

    card = tmp_path / "vgg19" / "VGG19_CT_model.json"
    assert signature("vgg16") is None
    stat = card.stat()
    assert signature("vgg19") == (stat.st_mtime_ns, stat.st_size)
    card.write_text(json.dumps({**CARD_32, "threshold": 0.3}), encoding="utf-8")
    os.utime(card, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    edited = card.stat()
    assert signature("vgg19") == (edited.st_mtime_ns, edited.st_size) != (
        stat.st_mtime_ns, stat.st_size)
