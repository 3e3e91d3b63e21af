"""The HTML pages: upload, result, about, errors."""

from __future__ import annotations

import io
import re

from .model_factory import install, png_bytes, tiny_model


def upload(client, data, modality="ct", model="all", filename="scan.png"):
    return client.post("/", data={"image": (io.BytesIO(data), filename), "modality": modality,
                                  "model": model}, content_type="multipart/form-data")


def test_every_page_has_navigation_and_local_assets(client):
    for path in ("/", "/about", "/contact"):
        html = client.get(path).get_data(as_text=True)
        assert 'href="/about"' in html and 'href="/contact"' in html
        assert "/static/css/style.css" in html
        assert not re.search(r'(src|href)="(https?:)?//', html), "no external assets"


def test_upload_page_lists_models_and_missing_files(client):
    html = client.get("/").get_data(as_text=True)
    assert 'name="modality"' in html and 'name="model"' in html and 'type="file"' in html
    assert "All models" in html
    # installed CT models, and the published X-ray VGG19 slot shown as missing
    assert "vgg19/VGG19_CXR_model.h5" in html
    assert 'data-xray="missing"' in html and 'data-ct="installed"' in html


def test_upload_page_without_models_says_what_is_missing(empty_app):
    html = empty_app.test_client().get("/").get_data(as_text=True)
    for path in ("vgg16/VGG16_CT_model.h5", "inceptionv3/InceptionV3_CT_model.h5",
                 "resnet50/ResNet50_CXR_model.h5"):
        assert path in html


def test_single_model_result_page(client):
    response = upload(client, png_bytes(size=(60, 90)), model="vgg16")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    verdict = re.search(r'id="verdict">([^<]+)<', html).group(1)
    assert verdict in ("COVID", "Non-COVID")
    assert re.search(r'id="covid-probability">\d+\.\d %<', html)
    assert "<meter" in html
    assert "VGG16" in html and " ms" in html
    assert 'src="data:image/jpeg;base64,' in html  # the thumbnail, inline
    assert "not a medical device" in html


def test_all_models_result_page_has_table_and_combined_verdict(client):
    html = upload(client, png_bytes(), model="all").get_data(as_text=True)
    for name in ("VGG16", "VGG19", "InceptionV3"):
        assert f'<td data-label="Model">{name}</td>' in html
    assert "Combined verdict of 3 models" in html
    assert re.search(r"\d of 3 agree", html)


def test_bad_file_shows_friendly_error_on_the_form(client):
    response = upload(client, b"GIF89a not really", filename="x.png")
    assert response.status_code == 415
    html = response.get_data(as_text=True)
    assert "not a readable image" in html
    assert 'id="upload-form"' in html
    assert "Traceback" not in html


def test_missing_file_is_a_field_error(client):
    response = client.post("/", data={"modality": "ct", "model": "all"})
    assert response.status_code == 400
    assert "Choose an image file" in response.get_data(as_text=True)


def test_not_installed_model_on_the_page_is_503_with_path(client):
    response = upload(client, png_bytes(), modality="xray", model="vgg19")
    assert response.status_code == 503
    assert "vgg19/VGG19_CXR_model.h5" in response.get_data(as_text=True)


def test_unknown_page_is_friendly_404(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    html = response.get_data(as_text=True)
    assert "Something went wrong (404)" in html and "Traceback" not in html


def test_about_page_shows_card_metrics(tmp_path, app):
    card = {"input_size": [32, 32], "metrics": {"per_class": {
        "NonCOVID": {"precision": 0.91, "recall": 0.93, "f1": 0.92, "support": 246},
        "COVID": {"precision": 0.935, "recall": 0.9, "f1": 0.917, "support": 251}}}}
    install(tiny_model(), tmp_path / "m", "vgg16", "ct", card)
    app.extensions["inference"].model_dir = str(tmp_path / "m")
    html = app.test_client().get("/about").get_data(as_text=True)
    assert "0.935" in html and "251" in html
    assert "SARS-CoV-2 CT-scan dataset" in html and "COVID-19 Radiography Database" in html
    assert "not a medical device" in html


def test_dropped_in_model_appears_without_restart(empty_app, tmp_path):
    client = empty_app.test_client()
    assert upload(client, png_bytes(), model="vgg16").status_code == 503
    install(tiny_model(), tmp_path / "models", "vgg16", "ct", {"input_size": [32, 32]})
    assert upload(client, png_bytes(), model="vgg16").status_code == 200
