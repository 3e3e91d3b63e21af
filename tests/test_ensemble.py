"""The combined verdict measures each model against its own threshold (mean margin)."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest

from inference.predict import Prediction, combine, model_result
from inference.cards import ModelCard

from .conftest import testing_config
from .model_factory import constant_model, install, scan_like_png

RULE_SENTENCE = ("COVID when the models' probabilities are, on average, at or above their "
                 "own thresholds (mean of probability - threshold >= 0).")


def answer(probability: float, threshold: float, arch: str = "vgg16"):
    """One model's result as the service builds it, from a softmax row."""
    card = ModelCard(arch, "ct", threshold=threshold)
    return model_result(arch, np.array([1.0 - probability, probability]), card)


def test_models_above_their_own_low_thresholds_make_covid():
    results = [answer(0.4, 0.3) for _ in range(3)]
    assert [r.label for r in results] == ["COVID"] * 3
    ensemble = combine(results)
    assert ensemble.label == "COVID"
    assert (ensemble.agreeing, ensemble.total, ensemble.agreement) == (3, 3, 1.0)
    assert ensemble.covid_probability == pytest.approx(0.4)
    assert ensemble.margin == pytest.approx(0.1)
    assert ensemble.rule == "mean_margin"


def test_models_below_their_own_high_thresholds_make_non_covid():
    ensemble = combine([answer(0.6, 0.7) for _ in range(3)])
    assert ensemble.label == "Non-COVID"
    assert (ensemble.agreeing, ensemble.total) == (3, 3)
    assert ensemble.covid_probability == pytest.approx(0.6)
    assert ensemble.margin == pytest.approx(-0.1)


@pytest.mark.parametrize("answers,label,agreeing", [
    # mean probability 0.325 (< 0.5) but margins +0.1 and -0.05: COVID
    ([(0.2, 0.1), (0.45, 0.5)], "COVID", 1),
    # mean probability 0.725 (>= 0.5) but both below their thresholds: Non-COVID
    ([(0.9, 0.95), (0.55, 0.7)], "Non-COVID", 2),
    # margins -0.1 and +0.1 cancel exactly: a tie is COVID, as for one model
    ([(0.1, 0.2), (0.5, 0.4)], "COVID", 1),
])
def test_mixed_thresholds_follow_the_mean_margin_not_the_mean_at_half(answers, label,
                                                                     agreeing):
    ensemble = combine([answer(p, t) for p, t in answers])
    expected_margin = float(np.mean([p - t for p, t in answers]))
    assert ensemble.label == label
    assert ensemble.agreeing == agreeing and ensemble.total == len(answers)
    assert ensemble.margin == pytest.approx(expected_margin, abs=1e-6)


def test_ensemble_json_names_its_rule():
    prediction = Prediction("ct", [answer(0.4, 0.3), answer(0.35, 0.3)], None)
    prediction.ensemble = combine(prediction.results)
    ensemble = prediction.to_json()["ensemble"]
    assert ensemble["rule"] == "mean_margin"
    assert ensemble["rule_description"] == RULE_SENTENCE
    assert ensemble["label"] == "COVID" and ensemble["margin"] == pytest.approx(0.075)


@pytest.fixture(scope="module")
def low_threshold_models(tmp_path_factory):
    """Three CT models that each answer 0.4 whatever the image, each with threshold 0.3."""
    root = tmp_path_factory.mktemp("low_threshold_models")
    for arch in ("vgg16", "vgg19", "inceptionv3"):
        install(constant_model(0.4), root, arch, "ct",
                {"input_size": [32, 32], "threshold": 0.3})
    return root


@pytest.fixture
def low_threshold_client(tmp_path, low_threshold_models):
    from app import create_app

    config = testing_config(tmp_path, MODEL_DIR=str(low_threshold_models))
    return create_app(config).test_client()


def post_all(client, url):
    form = {"image": (io.BytesIO(scan_like_png()), "scan.png"), "modality": "ct",
            "model": "all"}
    response = client.post(url, data=form, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def test_api_ensemble_respects_the_cards_thresholds(low_threshold_client):
    body = post_all(low_threshold_client, "/api/v1/predict").get_json()
    assert [(r["label"], r["threshold"]) for r in body["results"]] == [("COVID", 0.3)] * 3
    for r in body["results"]:
        assert r["covid_probability"] == pytest.approx(0.4, abs=1e-5)
    ensemble = body["ensemble"]
    assert ensemble["label"] == "COVID"
    assert (ensemble["agreeing"], ensemble["total"]) == (3, 3)
    assert ensemble["covid_probability"] == pytest.approx(0.4, abs=1e-5)
    assert ensemble["margin"] == pytest.approx(0.1, abs=1e-5)
    assert ensemble["rule"] == "mean_margin"
    assert ensemble["rule_description"] == RULE_SENTENCE


def test_result_page_and_report_state_the_rule(low_threshold_client):
    html = post_all(low_threshold_client, "/").get_data(as_text=True)
    assert re.search(r'id="verdict">COVID<', html)
    assert "3 of 3 agree" in html
    escaped_rule = RULE_SENTENCE.replace("'", "&#39;").replace(">", "&gt;")
    assert f'id="ensemble-rule">Rule: {escaped_rule}<' in html
    link = re.search(r'id="download-report" href="data:text/html;charset=utf-8;base64,'
                     r'([A-Za-z0-9+/=]+)"', html)
    report = base64.b64decode(link.group(1)).decode("utf-8")
    assert 'id="verdict">COVID<' in report and "3 of 3 models agree" in report
    assert f'id="ensemble-rule">Rule: {escaped_rule}<' in report
