"""The write-back as a reader sees it in OHIF: a CT series in a real Orthanc is analysed
by the tool, then opened in OHIF's built viewer (nginx on loopback, Debian's Chromium);
the report must open without an error and list each image's COVID probability."""

from __future__ import annotations

import re
import time

import pytest

from .ohif_viewer import needs_ohif, ohif_viewer
from .orthanc_server import needs_orthanc
from .server import ROOT
from .study_helpers import ct_series, wait_for_study
from .conftest import signed_in
from .test_pacs_analysis import pacs_app, upload_study, wait_written  # noqa: F401 - a fixture

pytestmark = needs_orthanc + needs_ohif

SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
DESKTOP = {"width": 1600, "height": 1000}
REPORT_SERIES = "9901"
# A reader who has seen OHIF's first-visit tour: its overlay would cover the study list.
TOUR_SEEN = "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))"
ERROR_SIGNS = ("Error Boundary", "Something went wrong")


def analysed_study(pacs_app, orthanc, images: int = 3) -> tuple[str, list[float]]:  # noqa: F811
    """A CT series analysed with write-back; its StudyInstanceUID and the COVID
    probability of each image in reading order."""
    study_uid = upload_study(orthanc, ct_series(images, prefix="V"), "Chest CT for OHIF")
    client = pacs_app.test_client()
    signed_in(pacs_app, client, name="dr-viewer")
    answer = client.post(f"/api/v1/pacs/studies/{study_uid}/analyses",
                         data={"modality": "ct", "model": "vgg16", "explain": "1"})
    assert answer.status_code == 202, answer.get_json()
    url = answer.get_json()["url"]
    assert wait_for_study(client, url)["status"] == "done"
    view = wait_written(client, url)
    return study_uid, [r["covid_probability"] for i in view["images"] for r in i["results"]]


def open_page(browser, messages: list[str]):
    """A desktop page that records every console message and uncaught error."""
    context = browser.new_context(viewport=DESKTOP)
    context.set_default_timeout(60_000)
    context.add_init_script(TOUR_SEEN)
    page = context.new_page()
    page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda error: messages.append(f"pageerror: {error}"))
    return context, page


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"ohif-{name}.png"))


def errors_in(messages: list[str]) -> list[str]:
    return [m for m in messages if m.startswith(("pageerror", "error:"))
            or any(sign in m for sign in ERROR_SIGNS)]


def test_the_report_lists_each_images_probability_in_ohif(pacs_app, orthanc, browser,  # noqa: F811
                                                           tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    study_uid, probabilities = analysed_study(pacs_app, orthanc)
    messages: list[str] = []
    with ohif_viewer(tmp_path / "ohif", orthanc) as viewer:
        context, page = open_page(browser, messages)
        try:
            page.goto(viewer.study_url(study_uid))
            report = page.locator(f"[data-series='{REPORT_SERIES}']")
            report.wait_for()
            shot(page, "study")
            assert errors_in(messages) == []
            report.dblclick()
            try:  # OHIF asks whether to track the report's measurements
                page.get_by_role("button", name="Yes").click(timeout=30_000)
            except PlaywrightTimeout:
                shot(page, "report")
                pytest.fail(f"OHIF offered no measurements to track: {errors_in(messages)}")
            page.locator("[data-cy='trackedMeasurements-btn']").click()
            labels = page.get_by_text(re.compile(r"vgg16: COVID-19 probability \d\.\d\d"))
            labels.first.wait_for()
            shot(page, "report")
            listed = re.findall(r"probability (\d\.\d\d)", " ".join(labels.all_inner_texts()))
            assert errors_in(messages) == []
            assert sorted(listed) == sorted(f"{p:.2f}" for p in probabilities), listed
        finally:
            context.close()


def located_series(count: int) -> list[tuple[str, bytes]]:
    """CT slices with the geometry an overlay needs (frame of reference, spacing)."""
    import io

    import pydicom
    from pydicom.uid import generate_uid

    from .dicom_factory import to_bytes

    frame = generate_uid()
    files = []
    for name, data in ct_series(count, prefix="G"):
        dataset = pydicom.dcmread(io.BytesIO(data))
        dataset.FrameOfReferenceUID, dataset.PixelSpacing = frame, [0.7, 0.7]
        dataset.SliceThickness = 2.5
        files.append((name, to_bytes(dataset)))
    return files


def coloured_share(page) -> float:
    """The share of the viewport's pixels that are clearly coloured: a CT alone is
    grey, so colour there is the overlay's."""
    import io

    import numpy as np
    from PIL import Image

    canvas = page.locator("canvas").first
    pixels = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB"), int)
    spread = pixels.max(axis=2) - pixels.min(axis=2)
    return float(np.mean(spread > 40))


def test_the_heatmap_parametric_map_is_laid_over_the_ct_series(pacs_app, orthanc,  # noqa: F811
                                                               browser, tmp_path):
    from .conftest import reconfigure

    reconfigure(pacs_app, PACS_HEATMAP_FORMAT="pmap")
    study_uid = upload_study(orthanc, located_series(3), "Chest CT overlay for OHIF")
    client = pacs_app.test_client()
    signed_in(pacs_app, client, name="dr-overlay")
    answer = client.post(f"/api/v1/pacs/studies/{study_uid}/analyses",
                         data={"modality": "ct", "model": "vgg16", "explain": "1"})
    url = answer.get_json()["url"]
    assert wait_for_study(client, url)["status"] == "done"
    written = wait_written(client, url)["written"]
    assert any(w["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.30" for w in written)
    messages: list[str] = []
    with ohif_viewer(tmp_path / "ohif", orthanc) as viewer:
        context, page = open_page(browser, messages)
        try:
            page.goto(viewer.study_url(study_uid))
            overlay = page.locator("[data-series='9903']")
            overlay.wait_for()
            page.locator("[data-series='0']").first.wait_for()
            page.wait_for_timeout(2000)  # the CT drawn alone first
            alone = coloured_share(page)
            overlay.dblclick()
            deadline = time.monotonic() + 60
            while (fused := coloured_share(page)) < 0.05 and time.monotonic() < deadline:
                page.wait_for_timeout(500)
            shot(page, "overlay")
            assert errors_in(messages) == []
            assert alone < 0.01 and fused >= 0.05, (alone, fused)
        finally:
            context.close()
