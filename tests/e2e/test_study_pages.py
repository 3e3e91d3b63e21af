"""End-to-end: a whole study through the browser, on the real server and its worker.

The server's embedded worker (the default outside tests) analyses what the page
uploads; the page's script follows the progress through the JSON API.
"""

from __future__ import annotations

import re

from ..model_factory import scan_like_png
from ..study_helpers import ct_series, zip_of
from .conftest import screenshot

STUDY_PAGE = re.compile(r".*/studies/[A-Za-z0-9_-]{20,}$")
DONE_TIMEOUT_MS = 180_000


def submit(page, modality: str = "ct", model: str = "all", heatmaps: bool = False,
           archive: bytes | None = None, images: list[tuple[str, bytes]] = ()) -> None:
    page.goto("/studies/new")
    page.check(f"input[name=modality][value={modality}]")
    page.select_option("select[name=model]", model)
    if archive is not None:
        page.set_input_files("input[name=archive]", files=[
            {"name": "series.zip", "mimeType": "application/zip", "buffer": archive}])
    if images:
        page.set_input_files("input[name=images]", files=[
            {"name": name, "mimeType": "application/octet-stream", "buffer": data}
            for name, data in images])
    if heatmaps:
        page.check("input[name=explain]")
    with page.expect_navigation():
        page.click("button[type=submit]")


def progress_polls(page) -> list[str]:
    """The progress polls the page's script makes from now on (their URLs)."""
    polls = []
    page.on("request", lambda request: polls.append(request.url)
            if "images=0" in request.url else None)
    return polls


def saw_progress(page, total: int, polls: list[str] | None = None) -> bool:
    """On the running page: the bar, and the script's first poll updating it (or, when
    the study was over by the first poll, reloading the page into the verdict). Lenient
    (``strict=False``), a study over before the page showed is accepted too: a few
    images can take less than the script's first second; strict (``polls`` given), the
    script must have polled."""
    strict = polls is not None
    if not strict and page.locator("#verdict").count():
        return False
    assert page.locator("progress#progress-bar").is_visible()
    assert f"/ {total}" in page.locator("#progress-count").inner_text()
    polled = ("(Number(document.querySelector('#study-progress')?.dataset.polled || 0) >= 1"
              f" && document.querySelector('#progress-bar').max === {total})")
    page.wait_for_function(f"() => document.querySelector('#verdict') || {polled}",
                           timeout=DONE_TIMEOUT_MS)
    if strict:
        assert polls, "the page's script never asked for the study's progress"
    return True


def wait_for_verdict(page) -> str:
    page.wait_for_selector("#verdict", timeout=DONE_TIMEOUT_MS)
    page.wait_for_load_state("load")
    plot = page.locator("#study-plot")
    page.wait_for_function("() => { const img = document.querySelector('#study-plot');"
                           " return img && img.complete && img.naturalWidth > 0; }")
    assert plot.is_visible()
    return page.locator("#verdict").inner_text()


def instance_numbers(page) -> list[int]:
    cells = page.locator("#study-images tbody td.instance")
    return [int(text) for text in cells.all_inner_texts()]


def test_a_300_slice_ct_series_as_a_zip(page):
    files = ct_series(300, size=64, seed=7)
    polls = progress_polls(page)
    submit(page, archive=zip_of(files))
    assert STUDY_PAGE.match(page.url)
    # The script must have followed the progress at least once (it reloads the page
    # into the verdict once the study is over, which may be by its first poll).
    assert saw_progress(page, 300, polls)
    screenshot(page, "study-running")
    verdict = wait_for_verdict(page)
    assert verdict in ("COVID", "Non-COVID")
    assert re.search(r"of 300 analysed images positive", page.locator("#positive-images")
                     .inner_text())
    assert page.locator("#study-rule").inner_text().startswith("Rule: COVID if at least")
    assert instance_numbers(page) == list(range(1, 301))
    screenshot(page, "study-done-300")
    with page.expect_navigation():
        page.locator("#study-images tbody tr").nth(41).locator("a").first.click()
    assert page.url.endswith("/images/41")
    assert page.locator("#image-label").inner_text() in ("COVID", "Non-COVID")
    assert "Heatmaps were not requested" in page.locator("#heatmaps").inner_text()


def test_a_few_dicom_files_with_heatmaps_report_and_delete(page):
    files = ct_series(12, size=64, seed=3)
    submit(page, model="vgg16", heatmaps=True, images=files)
    saw_progress(page, 12)
    assert wait_for_verdict(page) in ("COVID", "Non-COVID")
    assert instance_numbers(page) == list(range(1, 13))
    assert page.locator("#study-images thead th").all_inner_texts()[4] == "VGG16"
    screenshot(page, "study-done-12")

    with page.expect_navigation():
        page.locator("#study-images tbody tr").nth(5).locator("a").first.click()
    heatmap = page.locator("#heatmaps img")
    assert heatmap.count() == 1
    page.wait_for_function("() => { const img = document.querySelector('#heatmaps img');"
                           " return img.complete && img.naturalWidth > 0; }")
    with page.expect_navigation():
        page.click("#next-image")
    assert page.url.endswith("/images/6")
    screenshot(page, "study-image")

    with page.expect_navigation():
        page.click("#back-to-study")
    with page.expect_navigation():
        page.click("#open-report")
    assert page.locator("#study-plot").evaluate("img => img.complete && img.naturalWidth > 0")
    assert page.locator("#print-report").is_visible()  # the script showed it
    assert page.locator("#study-images tbody tr").count() == 12
    screenshot(page, "study-report")

    page.go_back()
    study_url = page.url
    with page.expect_navigation():
        page.click("#delete-study")
    assert page.url.endswith("/studies/new")
    assert "Study deleted" in page.locator(".alert-success").inner_text()
    assert page.goto(study_url).status == 404
    assert "No study has this id" in page.locator(".error-message").inner_text()


def test_nothing_chosen_says_so_on_the_form(page):
    page.goto("/studies/new")
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert "Choose the images, or one .zip archive" in page.locator(".field-error").inner_text()
    assert page.locator("#upload-form").is_visible()
    screenshot(page, "study-new-error")


def test_x_rays_as_separate_files(page):
    images = [(f"xray-{n}.png", scan_like_png(size=(96, 96), seed=n)) for n in range(3)]
    submit(page, modality="xray", images=images)
    saw_progress(page, 3)
    assert wait_for_verdict(page) in ("COVID", "Non-COVID")
    names = page.locator("#study-images tbody td.name").all_inner_texts()
    assert names == ["xray-0.png", "xray-1.png", "xray-2.png"]
    assert page.locator("#longest-run").count() == 0
