"""The study pages, run by the app's real embedded worker on its real SQLite queue.

A study uploaded through the page is analysed by tiny real Keras models; the pages are
then read the way a browser reads them (HTML, the plot PNG, the heatmaps).
"""

from __future__ import annotations

import io
import re

import pytest
from markupsafe import escape

from app import create_app
from studies.plot import model_series, probability_plot_png, series_boundaries

from .conftest import testing_config
from .model_factory import scan_like_png
from .study_helpers import ct_series, wait_for_study, zip_of

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STUDY_URL = re.compile(r"/studies/([A-Za-z0-9_-]{20,})$")


def wait_done(client, study_id: str) -> dict:
    return wait_for_study(client, f"/api/v1/studies/{study_id}", deadline_s=120.0)


def post_study(client, files=(), archive: bytes | None = None, **fields):
    data = {"modality": "ct", "model": "all", **fields}
    if files:
        data["images"] = [(io.BytesIO(content), name) for name, content in files]
    if archive is not None:
        data["archive"] = (io.BytesIO(archive), "series.zip")
    return client.post("/studies/new", data=data, content_type="multipart/form-data")


@pytest.fixture
def study_app(tmp_path, tiny_model_dir, instance_path):
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_model_dir),
                                    EMBEDDED_WORKER=True, EMBEDDED_POLL_S=0.2))
    yield app
    app.extensions["job_queue"].stop_embedded_worker()


@pytest.fixture
def client(study_app):
    return study_app.test_client()


@pytest.fixture
def done_study(client):
    """A 12-slice CT series sent as a zip with explain on, analysed to the end."""
    response = post_study(client, archive=zip_of(ct_series(12)), model="vgg16", explain="1")
    assert response.status_code == 303, response.get_data(as_text=True)
    study_id = STUDY_URL.search(response.headers["Location"]).group(1)
    view = wait_done(client, study_id)
    assert view["status"] == "done", view.get("error")
    return study_id, view


def test_new_study_page_has_the_form_and_the_limits(client, study_app):
    html = client.get("/studies/new").get_data(as_text=True)
    assert 'name="modality"' in html and 'name="model"' in html
    assert re.search(r'<input[^>]*multiple[^>]*name="images"|<input[^>]*name="images"[^>]*multiple',
                     html)
    assert re.search(r'name="archive"[^>]*type="file"|type="file"[^>]*name="archive"', html)
    assert re.search(r'name="explain"[^>]*value="1"|value="1"[^>]*name="explain"', html)
    assert f"up to {study_app.config['MAX_STUDY_IMAGES']} images" in html
    assert f"{study_app.config['MAX_STUDY_BYTES'] // 1048576} MiB" in html
    assert "/static/css/study.css" in html and "/static/js/study.js" in html
    assert 'href="/studies/new"' in html  # the navigation link


def test_a_zipped_series_runs_and_the_done_page_shows_verdict_plot_and_table(client, done_study):
    study_id, view = done_study
    html = client.get(f"/studies/{study_id}").get_data(as_text=True)
    verdict = re.search(r'id="verdict">([^<]+)<', html).group(1)
    assert verdict == view["verdict"]["label"]
    assert str(escape(view["verdict"]["rule"])) in html
    assert f"{view['verdict']['positive_images']}</strong> of 12 analysed images" in html
    assert 'id="longest-run"' in html
    assert f'src="/studies/{study_id}/plot.png"' in html
    assert f'href="/api/v1/studies/{study_id}/results.csv"' in html
    assert f'href="/studies/{study_id}/report"' in html
    assert 'id="study-progress"' not in html and 'http-equiv="refresh"' not in html
    # Rows in reading order: InstanceNumber 1..12, whatever the zip's order and names.
    instances = re.findall(r'<td data-label="Instance" class="instance">(\d+)</td>', html)
    assert instances == [str(n) for n in range(1, 13)]
    for index in range(12):
        assert f'href="/studies/{study_id}/images/{index}"' in html
    probability = view["images"][0]["results"][0]["covid_probability"]
    assert f"{probability * 100:.1f} %" in html
    # A warning every slice carries (they are 64 x 64) is said once, not on 12 rows.
    warning = view["images"][0]["warnings"][0]
    assert all(warning in image["warnings"] for image in view["images"])
    assert html.count(str(escape(warning))) == 1 and "Every image: " in html


def test_the_plot_is_a_png_that_is_not_cached(client, done_study):
    study_id, _ = done_study
    response = client.get(f"/studies/{study_id}/plot.png")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.data.startswith(PNG_SIGNATURE)
    assert response.headers["Cache-Control"] == "no-store"


def test_image_page_with_heatmap_and_neighbours(client, done_study):
    study_id, view = done_study
    html = client.get(f"/studies/{study_id}/images/3").get_data(as_text=True)
    image = view["images"][3]
    assert image["name"] in html and "VGG16" in html
    assert f'href="/studies/{study_id}/images/2"' in html
    assert f'href="/studies/{study_id}/images/4"' in html
    heatmap_url = f"/studies/{study_id}/images/3/heatmap/vgg16.png"
    assert f'src="{heatmap_url}"' in html
    heatmap = client.get(heatmap_url)
    assert heatmap.status_code == 200 and heatmap.data.startswith(PNG_SIGNATURE)
    first = client.get(f"/studies/{study_id}/images/0").get_data(as_text=True)
    assert 'id="previous-image"' not in first and 'id="next-image"' in first
    assert client.get(f"/studies/{study_id}/images/12").status_code == 404
    assert client.get(f"/studies/{study_id}/images/3/heatmap/vgg19.png").status_code == 404


def test_report_page_is_standalone_with_the_plot_inline(client, done_study):
    study_id, view = done_study
    response = client.get(f"/studies/{study_id}/report")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "/static/css/report.css" in html and 'class="topbar"' not in html
    assert 'src="data:image/png;base64,' in html
    assert str(escape(view["verdict"]["rule"])) in html
    assert str(escape(view["disclaimer"])) in html
    assert len(re.findall(r"<tr data-index=", html)) == 12


def test_csv_link_downloads_one_row_per_image(client, done_study):
    study_id, _ = done_study
    csv_text = client.get(f"/api/v1/studies/{study_id}/results.csv").get_data(as_text=True)
    assert len(csv_text.strip().splitlines()) == 1 + 12


def test_delete_removes_the_study_and_says_so(client, done_study):
    study_id, _ = done_study
    response = client.post(f"/studies/{study_id}/delete")
    assert response.status_code == 303 and response.headers["Location"].endswith("/studies/new")
    assert "Study deleted" in client.get("/studies/new").get_data(as_text=True)
    gone = client.get(f"/studies/{study_id}")
    assert gone.status_code == 404
    assert "No study has this id" in gone.get_data(as_text=True)
    assert client.get(f"/studies/{study_id}/plot.png").status_code == 404


def test_separate_images_without_heatmaps(client):
    files = [(f"xray-{n}.png", scan_like_png(size=(64, 64), seed=n)) for n in range(3)]
    response = post_study(client, files=files, modality="xray", model="all")
    assert response.status_code == 303
    study_id = STUDY_URL.search(response.headers["Location"]).group(1)
    view = wait_done(client, study_id)
    assert view["status"] == "done" and len(view["models"]) == 2
    html = client.get(f"/studies/{study_id}").get_data(as_text=True)
    assert 'id="longest-run"' not in html  # no slice order among X-rays
    assert "<th>VGG16</th>" in html and "<th>ResNet50</th>" in html
    names = re.findall(r'<td data-label="Name" class="name">([^<]+)</td>', html)
    assert names == ["xray-0.png", "xray-1.png", "xray-2.png"]
    image_html = client.get(f"/studies/{study_id}/images/1").get_data(as_text=True)
    assert "Heatmaps were not requested for this study" in image_html


def test_running_study_page_shows_progress_and_refreshes_without_script(
        tmp_path, tiny_model_dir, instance_path):
    """No worker runs here, so the study stays queued for the page to show."""
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_model_dir)))
    client = app.test_client()
    response = post_study(client, files=[("a.png", scan_like_png(seed=1)),
                                         ("b.png", scan_like_png(seed=2))])
    study_id = STUDY_URL.search(response.headers["Location"]).group(1)
    html = client.get(f"/studies/{study_id}").get_data(as_text=True)
    assert re.search(r'<progress id="progress-bar" max="2" value="0">', html)
    assert re.search(r'id="progress-done">0</span> / <span id="progress-total">2<', html)
    assert f'data-status-url="/api/v1/studies/{study_id}?images=0"' in html
    assert '<noscript><meta http-equiv="refresh" content="5"></noscript>' in html
    assert "Queued" in html and 'id="verdict"' not in html
    assert client.get(f"/studies/{study_id}/report").status_code == 404  # not finished


def test_no_file_is_a_400_with_the_form_and_a_message(client):
    response = post_study(client)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "Choose the images, or one .zip archive" in html and 'id="upload-form"' in html


def test_blank_file_inputs_as_browsers_send_them_are_ignored(client):
    """A browser sends the empty images input as a part with no name and no bytes."""
    response = client.post("/studies/new", data={
        "modality": "ct", "model": "vgg16", "images": (io.BytesIO(b""), ""),
        "archive": (io.BytesIO(zip_of(ct_series(2, seed=3))), "two.zip")},
        content_type="multipart/form-data")
    assert response.status_code == 303, response.get_data(as_text=True)


def test_service_errors_re_render_the_form_with_their_status(client):
    response = post_study(client, archive=b"not a zip at all")
    assert response.status_code == 415
    assert "not a readable .zip file" in response.get_data(as_text=True)
    both = post_study(client, files=[("a.png", scan_like_png())], archive=zip_of([]))
    assert both.status_code == 400 and "not both" in both.get_data(as_text=True)
    missing = post_study(client, files=[("a.png", scan_like_png())], modality="xray",
                         model="vgg19")
    assert missing.status_code == 503 and "not installed" in missing.get_data(as_text=True)


def test_unknown_study_is_the_friendly_404_page(client):
    for path in ("/studies/no-such-study", "/studies/no-such-study/report",
                 "/studies/no-such-study/images/0", "/studies/no-such-study/plot.png"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "No study has this id" in response.get_data(as_text=True)


def test_with_csrf_on_a_post_without_token_is_refused(tmp_path, tiny_model_dir, instance_path):
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_model_dir),
                                    WTF_CSRF_ENABLED=True))
    client = app.test_client()
    response = post_study(client, files=[("a.png", scan_like_png())])
    assert response.status_code == 400
    assert "The form expired or was not sent from this site" in response.get_data(as_text=True)
    assert client.post("/studies/anything/delete").status_code == 400
    page = client.get("/studies/new").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    accepted = post_study(client, files=[("a.png", scan_like_png())], csrf_token=token)
    assert accepted.status_code == 303


def test_plot_shows_failed_images_as_gaps_and_marks_series_boundaries():
    def image(series, *probabilities):
        return {"series_uid": series, "results": [
            {"architecture": arch, "covid_probability": p}
            for arch, p in zip(("vgg16", "vgg19"), probabilities)]}

    view = {"models": [{"architecture": "vgg16", "threshold": 0.4},
                       {"architecture": "vgg19", "threshold": 0.6}],
            "images": [image("a", 0.1, 0.2), image("a"), image("b", 0.7, 0.8)]}
    (first, threshold, values), (second, _, _) = model_series(view)
    assert (first, second, threshold) == ("vgg16", "vgg19", 0.4)
    assert values[0] == 0.1 and values[1] != values[1] and values[2] == 0.7  # NaN: a gap
    assert series_boundaries(view) == [1.5]
    assert series_boundaries({"images": [image("a", 0.1)] * 3}) == []
    png = probability_plot_png(view)
    assert png.startswith(PNG_SIGNATURE)
    assert probability_plot_png({"models": [], "images": []}).startswith(PNG_SIGNATURE)
