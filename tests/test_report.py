"""The downloadable report: everything a clinician files, nothing stored on the server."""

from __future__ import annotations

import base64
import io
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from .conftest import testing_config
from .model_factory import install, png_bytes, tiny_model

CARD = {"input_size": [32, 32], "metrics": {
    "evaluated_on": "test", "count": 412, "accuracy": 0.931, "sensitivity": 0.912,
    "specificity": 0.95, "roc_auc": 0.972,
    "per_class": {"NonCOVID": {"precision": 0.915, "recall": 0.95, "f1": 0.93, "support": 206},
                  "COVID": {"precision": 0.948, "recall": 0.912, "f1": 0.93, "support": 206}}}}
DOWNLOAD = re.compile(r'<a [^>]*id="download-report" href="data:text/html;charset=utf-8;'
                      r'base64,([A-Za-z0-9+/=]+)" download="([^"]+)"')
CHROME_URL_LIMIT = 2 * 1024 * 1024  # longer data: links fail to download in Chrome


@pytest.fixture(scope="module")
def carded_model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("carded_models")
    install(tiny_model(seed=0), root, "vgg16", "ct", CARD)
    install(tiny_model(seed=1), root, "vgg19", "ct", {"input_size": [32, 32]})  # no metrics
    return root


@pytest.fixture
def report_client(tmp_path, carded_model_dir):
    from app import create_app

    return create_app(testing_config(tmp_path, MODEL_DIR=str(carded_model_dir))).test_client()


def analyse(client, model: str = "all", explain: bool = True, size=(300, 240)):
    form = {"image": (io.BytesIO(png_bytes(size=size, mode="L")), "scan.png"),
            "modality": "ct", "model": model}
    if explain:
        form["explain"] = "y"
    response = client.post("/", data=form, content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def downloaded_report(response) -> tuple[str, str, int]:
    html = response.get_data(as_text=True)
    match = DOWNLOAD.search(html)
    assert match, "the result page has no report download link"
    return base64.b64decode(match.group(1)).decode("utf-8"), match.group(2), len(match.group(0))


def page_verdict(response) -> str:
    return re.search(r'id="verdict">([^<]+)<', response.get_data(as_text=True)).group(1)


def test_report_downloads_with_the_verdict_and_every_answer(report_client):
    response = analyse(report_client)
    report, filename, _ = downloaded_report(response)
    assert re.fullmatch(r"lungscan-report-ct-\d{8}-\d{6}\.html", filename)
    verdict = page_verdict(response)
    assert verdict in ("COVID", "Non-COVID")
    assert f'id="verdict">{verdict}<' in report
    assert "Combined verdict of 2 models" in report
    for name in ("VGG16", "VGG19"):
        assert f"<td>{name}</td>" in report
    assert "not a medical device" in report
    assert datetime.now(timezone.utc).strftime("%Y-%m-%d") in report


def test_report_carries_the_model_cards_test_metrics(report_client):
    report, _, _ = downloaded_report(analyse(report_client, explain=False))
    for value in ("Test images 412", "Accuracy 93.1 %", "Sensitivity 91.2 %",
                  "Specificity 95.0 %", "COVID precision 94.8 %", "ROC AUC 0.972"):
        assert value in report
    assert "none stated" in report  # VGG19's card has no metrics


def test_report_holds_the_image_and_each_heatmap(report_client):
    report, _, _ = downloaded_report(analyse(report_client))
    images = re.findall(r'<img src="data:image/jpeg;base64,[A-Za-z0-9+/=]+" alt="([^"]+)"',
                        report)
    assert images == ["The analysed image", "Grad-CAM heatmap of VGG16",
                      "Grad-CAM heatmap of VGG19"]
    without, _, _ = downloaded_report(analyse(report_client, explain=False))
    assert "Grad-CAM heatmap of" not in without and "The analysed image" in without


def test_report_is_self_contained_and_small_enough_to_download(report_client):
    report, _, link_length = downloaded_report(analyse(report_client, size=(2000, 1600)))
    assert "<script" not in report
    assert not re.search(r'(?:src|href)="(?!data:)', report)  # nothing fetched from anywhere
    assert link_length < CHROME_URL_LIMIT


def test_single_model_report(report_client):
    response = analyse(report_client, model="vgg16", explain=False)
    report, _, _ = downloaded_report(response)
    assert "Verdict of VGG16" in report and f'id="verdict">{page_verdict(response)}<' in report


def test_result_page_prints_without_inline_script_or_style(report_client):
    response = analyse(report_client)
    html = response.get_data(as_text=True)
    assert 'id="print-report"' in html
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    static = Path(__file__).resolve().parent.parent / "static"
    script = (static / "js" / "app.js").read_text(encoding="utf-8")
    assert "print-report" in script and "window.print()" in script
    assert "@media print" in (static / "css" / "style.css").read_text(encoding="utf-8")


def test_nothing_is_written_to_the_server(report_client, tmp_path):
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    analyse(report_client)
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before
