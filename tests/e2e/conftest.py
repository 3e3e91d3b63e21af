"""Playwright + Debian's Chromium against the real site served by gunicorn.

The server runs the production configuration: CSRF on, rate limits on. Every page
is opened at phone (390 x 844) and desktop (1280 x 800) size; screenshots go to
test-artifacts/screenshots/. Chromium must be at /usr/bin/chromium (``.ci/run``
installs it); without it these tests skip and say why, and under ``CI`` fail the run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ..browser import CHROMIUM
from ..server import ROOT, start_server

VIEWPORTS = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1280, "height": 800}}
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
            if not CHROMIUM.exists():
                item.add_marker(pytest.mark.skip(
                    reason=f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does)"))


@pytest.fixture(scope="session")
def site(tmp_path_factory, tiny_model_dir):
    models = tmp_path_factory.mktemp("e2e") / "models"
    shutil.copytree(tiny_model_dir, models)
    server = start_server(tmp_path_factory.mktemp("e2e_server"), models, workers=1,
                          env={"FLASK_RATELIMIT_ENABLED": "true",
                               "FLASK_CONTACT_RATE_LIMIT": "30 per minute"})
    yield server
    server.stop()


@pytest.fixture(params=sorted(VIEWPORTS))
def viewport(request) -> str:
    return request.param


@pytest.fixture
def page(browser, site, viewport):
    """A fresh browser context (own cookies) whose page fails the test on CSP errors."""
    context = browser.new_context(viewport=VIEWPORTS[viewport], base_url=site.url,
                                  accept_downloads=True)
    context.set_default_timeout(60_000)
    page = context.new_page()
    problems = []
    page.on("console", lambda message: problems.append(message.text)
            if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.viewport_name = viewport
    yield page
    context.close()
    csp = [p for p in problems if "Content Security Policy" in p or "Refused to" in p]
    assert not csp, csp
    scripts = [p for p in problems if "status of" not in p]  # 4xx answers are tested
    assert not scripts, scripts


def screenshot(page, name: str) -> Path:
    """Full-page screenshot, and the page must not scroll sideways at this width."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}-{page.viewport_name}.png"
    page.screenshot(path=str(path), full_page=True)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{name} at {page.viewport_name} width scrolls sideways by {overflow}px"
    return path
