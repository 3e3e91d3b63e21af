"""End-to-end: what a visitor does in a real browser, at phone and desktop width."""

from __future__ import annotations

import re

import pytest

from inference.registry import ARCHITECTURES

from ..hostile_corpus import dicom_bytes, encode, noise

from .conftest import screenshot

PNG = {"name": "chest.png", "mimeType": "image/png",
       "buffer": encode(noise((300, 260), seed=11), "PNG")}
DICOM = {"name": "slice.dcm", "mimeType": "application/dicom", "buffer": dicom_bytes(96, 96)}
INSTALLED = {"ct": ["VGG16", "VGG19", "InceptionV3"], "xray": ["VGG16", "ResNet50"]}


def upload(page, modality: str, model: str, file: dict = PNG, heatmap: bool = False):
    page.goto("/")
    page.check(f"input[name=modality][value={modality}]")
    page.select_option("select[name=model]", model)
    page.set_input_files("input[name=image]", files=[file])
    if heatmap:
        page.check("input[name=explain]")
    with page.expect_navigation():
        page.click("button[type=submit]")


def test_upload_page(page):
    page.goto("/")
    assert page.locator("input[name=csrf_token]").get_attribute("value")
    # Models missing for the chosen modality are marked and cannot be picked.
    page.check("input[name=modality][value=xray]")
    assert page.locator("option[value=vgg19]").is_disabled()
    page.check("input[name=modality][value=ct]")
    assert page.locator("option[value=resnet50]").is_disabled()
    assert page.locator("option[value=vgg19]").is_enabled()
    screenshot(page, "index")


@pytest.mark.parametrize("modality, model", [("ct", "vgg16"), ("xray", "resnet50")])
def test_upload_flow_for_one_model(page, modality, model):
    upload(page, modality, model)
    verdict = page.locator("#verdict").inner_text()
    assert verdict in ("COVID", "Non-COVID")
    assert re.fullmatch(r"\d+\.\d %", page.locator("#covid-probability").inner_text())
    assert ARCHITECTURES[model].name in page.locator(".verdict-card").inner_text()
    assert page.locator(".disclaimer").is_visible()
    thumbnail = page.locator("figure.thumb img")
    assert thumbnail.evaluate("img => img.complete && img.naturalWidth > 0")
    screenshot(page, f"result-{modality}-{model}")


@pytest.mark.parametrize("modality", ["ct", "xray"])
def test_upload_flow_for_all_models(page, modality):
    upload(page, modality, "all")
    rows = page.locator("#model-results tbody tr")
    assert rows.count() == len(INSTALLED[modality])
    names = [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())]
    assert sorted(names) == sorted(INSTALLED[modality])
    assert f"Combined verdict of {len(INSTALLED[modality])} models" in page.content()
    screenshot(page, f"result-{modality}-all")


def test_dicom_upload(page):
    upload(page, "ct", "vgg16", DICOM)
    assert page.locator("#verdict").inner_text() in ("COVID", "Non-COVID")
    assert "DICOM" in page.locator("#analysed-at").inner_text()


def test_bad_file_shows_the_error_on_the_upload_page(page):
    upload(page, "ct", "all", {"name": "chest.png", "mimeType": "image/png",
                               "buffer": b"<html><script>alert(1)</script></html>"})
    alert = page.locator(".alert-error")
    assert "not a readable image" in alert.inner_text()
    assert page.locator("#upload-form").is_visible()  # the form is there to try again
    screenshot(page, "upload-error")


def test_missing_file_is_a_field_error(page):
    page.goto("/")
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert "Choose an image file to analyse." in page.locator(".field-error").inner_text()


def test_contact_form_with_its_real_csrf_token(page):
    page.goto("/contact")
    token = page.locator("#contact-form input[name=csrf_token]").get_attribute("value")
    assert token and len(token) > 20
    page.fill("input[name=name]", "Ada Lovelace")
    page.fill("input[name=email]", "ada@example.org")
    page.select_option("select[name=category]", "suggestion")
    page.fill("input[name=subject]", "<b>Idea</b>")
    page.fill("textarea[name=message]", "Please add a dark theme <script>x()</script>.")
    with page.expect_navigation():
        page.click("#contact-form button[type=submit]")
    assert "your message was received" in page.locator(".alert-success").inner_text()
    screenshot(page, "contact-sent")


def test_contact_validation_error(page):
    page.goto("/contact")
    screenshot(page, "contact")
    page.fill("input[name=name]", "Ada")
    page.fill("input[name=email]", "not-an-email")
    page.fill("input[name=subject]", "Hi")
    page.fill("textarea[name=message]", "short")
    with page.expect_navigation():
        page.click("#contact-form button[type=submit]")
    errors = page.locator(".field-error").all_inner_texts()
    assert "This does not look like an email address." in errors
    assert "Between 10 and 5000 characters, please." in errors
    assert page.locator("input[name=email]").get_attribute("aria-invalid") == "true"
    assert page.locator("input[name=name]").input_value() == "Ada"  # nothing retyped
    screenshot(page, "contact-error")


def test_about_and_not_found_pages(page):
    page.goto("/about")
    assert page.locator("h1").inner_text() == "About this tool"
    screenshot(page, "about")
    response = page.goto("/no-such-page")
    assert response.status == 404
    assert page.locator(".error-message").is_visible()
    screenshot(page, "not-found")


def test_heatmap_choice_and_report_download(page):
    upload(page, "ct", "all", heatmap=True)
    figures = page.locator("#heatmaps figure.heatmap[id^=heatmap-]")
    assert figures.count() == len(INSTALLED["ct"])
    for i in range(figures.count()):
        assert figures.nth(i).locator("img").evaluate(
            "img => img.complete && img.naturalWidth > 0")
    screenshot(page, "result-heatmap")
    with page.expect_download() as download_info:
        page.click("#download-report")
    download = download_info.value
    assert download.suggested_filename.endswith(".html")
    report = open(download.path(), encoding="utf-8").read()
    assert "analysis report" in report and page.locator("#verdict").inner_text() in report
    assert "<script" not in report.lower()
