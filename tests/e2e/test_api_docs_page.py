"""End-to-end: the API page renders Swagger UI under the site's CSP, offline."""

from __future__ import annotations

from playwright.sync_api import expect

from .conftest import screenshot

# Every CSP violation, also those that reach no console message (a blocked style
# attribute, an inline handler), is kept on the window for the test to read.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (event) {
  window.__cspViolations.push(event.violatedDirective + " " + event.blockedURI);
});
"""


def test_api_page_renders_the_operations(page, site):
    requests_off_site = []
    page.on("request", lambda request: requests_off_site.append(request.url)
            if not request.url.startswith(site.url) else None)
    page.add_init_script(RECORD_VIOLATIONS)
    page.goto("/")
    with page.expect_navigation():
        page.click("nav a:text-is('API')")
    assert page.url == f"{site.url}/api"

    predict = page.locator(".swagger-ui .opblock-post .opblock-summary-path",
                           has_text="/api/v1/predict")
    predict.wait_for(state="visible")
    assert page.locator(".swagger-ui .opblock-get .opblock-summary-path",
                        has_text="/api/v1/models").is_visible()
    assert page.locator(".swagger-ui .errors-wrapper").count() == 0
    assert page.locator(".swagger-ui .info .title").inner_text().startswith(
        "COVID-19 CT and X-ray classifier API")
    assert page.locator("#swagger-ui-fallback").is_hidden()  # the script ran

    # Opening the operation shows the form fields the curl example sends.
    predict.click()
    body = page.locator(".swagger-ui .opblock-post .opblock-body")
    body.locator("text=modality").first.wait_for(state="visible")
    for field in ("image", "model", "explain"):
        assert field in body.inner_text()

    assert "curl -F image=@scan.png" in page.locator("#curl-predict").inner_text()
    assert page.locator("a#openapi-json").get_attribute("href") == "/api/v1/openapi.json"
    screenshot(page, "api-docs")
    assert page.evaluate("window.__cspViolations") == []
    assert requests_off_site == []


def test_copy_button_copies_the_curl_command(page, site):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site.url)
    page.goto("/api")
    button = page.locator("button[data-copy=curl-models]")
    button.click()
    # writeText resolves asynchronously: wait (up to Playwright's deadline) for the label.
    expect(button).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == f"curl {site.url}/api/v1/models"


def test_authorize_sends_the_token_with_try_it_out(page, site):
    """Swagger UI's Authorize takes a personal token and Try it out sends it."""
    page.goto("/api")
    page.locator(".swagger-ui .btn.authorize").first.click()
    dialog = page.locator(".swagger-ui .modal-ux")
    dialog.locator("input").first.fill("lst_example-token")
    dialog.locator("button.authorize").first.click()
    dialog.locator("button.btn-done").first.click()
    sent = []
    page.on("request", lambda request: sent.append(request.headers.get("authorization"))
            if request.url.endswith("/api/v1/models") else None)
    models = page.locator(".swagger-ui .opblock-get", has_text="/api/v1/models")
    models.locator(".opblock-summary").click()
    models.locator("button.try-out__btn").click()
    models.locator("button.execute").click()
    models.locator(".responses-wrapper .live-responses-table").wait_for(state="visible")
    assert "Bearer lst_example-token" in sent
