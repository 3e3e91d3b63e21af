"""End-to-end: an analyst signs in; a study sent to Orthanc appears on /pacs; one click
analyses it and the report lands in the study in Orthanc, where its own viewer lists it."""

from __future__ import annotations

import shutil
import time

import pytest
import requests

from ..conftest import TEST_PASSWORD
from ..orthanc_server import needs_orthanc
from ..server import start_server
from ..study_helpers import ct_series
from ..test_pacs_analysis import upload_study
from .conftest import screenshot
from .signin import create_account, sign_in
from .test_study_pages import wait_for_verdict

pytestmark = needs_orthanc

ANALYST = "pacs-analyst"


@pytest.fixture(scope="module")
def pacs_site(tmp_path_factory, tiny_model_dir, module_orthanc):
    root = tmp_path_factory.mktemp("pacs_site")
    models = root / "models"
    shutil.copytree(tiny_model_dir, models)
    server = start_server(root / "web", models, workers=1,
                          env={"FLASK_DICOMWEB_URL": module_orthanc.dicomweb_url,
                               "FLASK_AUTH_METHODS": "local"})  # a PACS needs sign-in
    server.orthanc = module_orthanc
    try:
        create_account(server, ANALYST, "analyst", TEST_PASSWORD)
        yield server
    finally:
        server.stop()


@pytest.fixture
def pacs_page(browser, pacs_site, viewport):
    from .conftest import VIEWPORTS

    context = browser.new_context(viewport=VIEWPORTS[viewport], base_url=pacs_site.url)
    context.set_default_timeout(60_000)
    page = context.new_page()
    page.viewport_name = viewport
    yield page
    context.close()


def test_one_click_puts_a_report_into_the_pacs_study(pacs_page, pacs_site):
    page, orthanc = pacs_page, pacs_site.orthanc
    study_uid = upload_study(orthanc, ct_series(5, prefix=f"E{page.viewport_name}"),
                             f"Chest CT {page.viewport_name}")
    sign_in(page, pacs_site.url, ANALYST, TEST_PASSWORD, next_path="/pacs")
    row = page.locator(f"tr[data-study-uid='{study_uid}']")
    assert f"Chest CT {page.viewport_name}" in row.inner_text()
    screenshot(page, "pacs")
    with page.expect_navigation():
        row.locator("button[type=submit]").click()
    assert "/studies/" in page.url
    wait_for_verdict(page)
    screenshot(page, "pacs-study")

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the write-back job follows the analysis
        series = requests.get(f"{orthanc.url}/studies", timeout=10).json()
        found = [s for s in series
                 if requests.get(f"{orthanc.url}/studies/{s}", timeout=10).json()
                 ["MainDicomTags"].get("StudyInstanceUID") == study_uid]
        modalities = {requests.get(f"{orthanc.url}/series/{x}", timeout=10).json()
                      ["MainDicomTags"].get("Modality")
                      for x in requests.get(f"{orthanc.url}/studies/{found[0]}",
                                            timeout=10).json()["Series"]}
        if "SR" in modalities:
            break
        time.sleep(0.5)
    assert modalities == {"CT", "SR"}
    page.goto("/pacs")
    assert page.locator(f"tr[data-study-uid='{study_uid}'] a.analysis-link").inner_text() \
        .startswith("done")
