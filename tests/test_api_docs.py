"""The API page (``/api``): Swagger UI served from the installed package, curl examples."""

from __future__ import annotations

import html as html_lib
import re

import pytest

from .test_security import assert_no_inline_code

SCRIPT_SRC = re.compile(r'<script\b[^>]*\bsrc="([^"]+)"', re.I)
STYLESHEET_HREF = re.compile(r'<link\b[^>]*rel="stylesheet"[^>]*href="([^"]+)"', re.I)
JS_TYPES = {"text/javascript", "application/javascript"}


@pytest.fixture
def docs_client(empty_app):
    return empty_app.test_client()


def page_text(client) -> str:
    response = client.get("/api")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    return response.get_data(as_text=True)


def test_page_has_curl_examples_for_predict_and_models(docs_client):
    html = page_text(docs_client)
    text = html_lib.unescape(re.sub(r"<[^>]+>", "", html))
    predict = re.search(r"curl -F image=@scan\.png -F modality=ct -F model=all -F explain=1"
                        r" \\\n\s+(\S+)", text)
    assert predict and predict.group(1) == "http://localhost/api/v1/predict"
    assert "curl http://localhost/api/v1/models" in text
    # The answer's shape is shown beside the command.
    for key in ('"results"', '"covid_probability"', '"heatmap_png"', '"ensemble"',
                '"warnings"', '"disclaimer"', '"models"', '"available"'):
        assert key in text, key
    assert 'href="/api/v1/openapi.json"' in html  # the raw document stays one click away


def test_page_loads_local_script_and_styles_only(docs_client):
    html = page_text(docs_client)
    scripts, styles = SCRIPT_SRC.findall(html), STYLESHEET_HREF.findall(html)
    assert "/api/swagger-ui/swagger-ui-bundle.js" in scripts
    assert "/static/js/api-docs.js" in scripts
    assert scripts.index("/api/swagger-ui/swagger-ui-bundle.js") < \
        scripts.index("/static/js/api-docs.js")
    assert "/api/swagger-ui/swagger-ui.css" in styles
    assert "/static/css/api-docs.css" in styles
    assert all(url.startswith("/") and not url.startswith("//") for url in scripts + styles)
    assert_no_inline_code(html, "/api")


def test_every_referenced_asset_is_served_with_its_content_type(docs_client):
    html = page_text(docs_client)
    assets = SCRIPT_SRC.findall(html) + STYLESHEET_HREF.findall(html)
    assert len(assets) >= 5
    for url in assets:
        response = docs_client.get(url)
        assert response.status_code == 200, url
        assert len(response.get_data()) > 100, url
        if url.endswith(".js"):
            assert response.mimetype in JS_TYPES, (url, response.mimetype)
        else:
            assert response.mimetype == "text/css", (url, response.mimetype)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        response.close()


def test_swagger_ui_bundle_is_the_real_library(docs_client):
    response = docs_client.get("/api/swagger-ui/swagger-ui-bundle.js")
    assert b"SwaggerUIBundle" in response.get_data()
    response.close()


@pytest.mark.parametrize("path", [
    "/api/swagger-ui/../../app.py",
    "/api/swagger-ui/..%2F..%2Fapp.py",
    "/api/swagger-ui/%2E%2E%2Fflask_swagger_ui.py",
    "/api/swagger-ui/..%5C__init__.py",
    "/api/swagger-ui/%2Fetc%2Fpasswd",
    "/api/swagger-ui/oauth2-redirect.html",  # in the package folder, not on the list
    "/api/swagger-ui/swagger-ui-bundle.js%00.css",
    "/api/swagger-ui/",
])
def test_asset_route_serves_nothing_off_its_list(docs_client, path):
    response = docs_client.get(path)
    assert response.status_code == 404, path
    assert b"root:" not in response.get_data() and b"import" not in response.get_data()


def test_openapi_json_is_still_served(docs_client):
    response = docs_client.get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    document = response.get_json()
    assert document["openapi"] == "3.1.0"
    assert "/api/v1/predict" in document["paths"]


def test_navigation_links_to_the_page(docs_client):
    for path in ("/", "/about"):
        nav = re.search(r'<nav\b.*?</nav>', docs_client.get(path).get_data(as_text=True), re.S)
        assert 'href="/api"' in nav.group(0)
        assert "openapi.json" not in nav.group(0)
    nav = re.search(r'<nav\b.*?</nav>', page_text(docs_client), re.S).group(0)
    assert re.search(r'href="/api"\s+aria-current="page"', nav)


def test_examples_name_the_host_the_page_was_asked_for(docs_client):
    html = docs_client.get("/api", headers={"Host": "scanner.example:8080"}).get_data(
        as_text=True)
    assert "  http://scanner.example:8080/api/v1/predict</code>" in html
    assert "curl http://scanner.example:8080/api/v1/models</code>" in html
