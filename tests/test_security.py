"""Web security: headers, cookies, CSRF, escaping, rate limits, secret key, debug mode."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import threading
from pathlib import Path

import pytest

from app import create_app
from contact.models import ContactMessage
from extensions import db
from web import secret_key

from .conftest import TINY_CARD
from .conftest import testing_config as make_config
from .hostile_corpus import valid_png
from .model_factory import install, tiny_model

ROOT = Path(__file__).resolve().parents[1]
MARKUP = '<script>alert("x")</script><img src=x onerror=alert(1)>'
CSRF_INPUT = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


@pytest.fixture(scope="module")
def security_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("security_models")
    install(tiny_model(), root, "vgg16", "ct", TINY_CARD)
    return root


@pytest.fixture
def make_app(tmp_path, monkeypatch, security_models):
    """An app with its own instance folder; ``drop`` leaves keys to defaults and env."""
    monkeypatch.setenv("FLASK_INSTANCE_PATH", str(tmp_path / "instance"))

    def build(drop=(), **overrides):
        config = make_config(tmp_path, MODEL_DIR=str(security_models), **overrides)
        for key in drop:
            config.pop(key, None)
        return create_app(config)

    return build


def csrf_token(client, path: str) -> str:
    return CSRF_INPUT.search(client.get(path).get_data(as_text=True)).group(1)


def contact_form(**fields) -> dict:
    form = {"name": "Ada", "email": "ada@example.org", "phone": "", "category": "bug",
            "subject": "Subject", "message": "A long enough message body."}
    form.update(fields)
    return form


def predict_form() -> dict:
    return {"image": (io.BytesIO(valid_png()), "scan.png"), "modality": "ct", "model": "vgg16"}


# ---------------------------------------------------------------- headers

@pytest.mark.parametrize("path", ["/", "/about", "/contact", "/api/v1/models",
                                  "/api/v1/openapi.json", "/healthz", "/no-such-page",
                                  "/static/css/style.css"])
def test_security_headers_on_every_kind_of_response(make_app, path):
    response = make_app().test_client().get(path)
    csp = response.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["frame-ancestors"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
INLINE_STYLE = re.compile(r"<style\b|\sstyle\s*=", re.I)
EVENT_HANDLER = re.compile(r"\son[a-z]+\s*=", re.I)
JS_URL = re.compile(r"(href|src|action)\s*=\s*[\"']?\s*javascript:", re.I)


def assert_no_inline_code(html: str, where: str) -> None:
    for pattern in (INLINE_SCRIPT, INLINE_STYLE, EVENT_HANDLER, JS_URL):
        found = pattern.search(html)
        assert not found, f"{where}: inline code {found.group(0)!r} is blocked by the CSP"


# Saved by the browser as a standalone file, never served under the CSP: it carries its
# own styles because, opened from disk, there is no server to fetch them from.
STANDALONE_TEMPLATES = {"report.html"}
SERVED_TEMPLATES = sorted(p.name for p in (ROOT / "templates").glob("*.html")
                          if p.name not in STANDALONE_TEMPLATES)


@pytest.mark.parametrize("template", SERVED_TEMPLATES)
def test_templates_have_no_inline_script_or_style(template):
    assert_no_inline_code((ROOT / "templates" / template).read_text(encoding="utf-8"), template)


def test_rendered_pages_have_no_inline_code_and_every_form_has_a_csrf_token(make_app):
    app = make_app(WTF_CSRF_ENABLED=True)
    client = app.test_client()
    pages = {path: client.get(path).get_data(as_text=True) for path in ("/", "/about",
                                                                         "/contact")}
    token = csrf_token(client, "/")
    pages["result"] = client.post("/", data={**predict_form(), "csrf_token": token}
                                  ).get_data(as_text=True)
    assert 'id="verdict"' in pages["result"]
    for where, html in pages.items():
        assert_no_inline_code(html, where)
        for form in re.findall(r"<form\b.*?</form>", html, re.S | re.I):
            if re.search(r'method="post"', form, re.I):
                assert 'name="csrf_token"' in form, f"{where}: a POST form without CSRF token"


# ---------------------------------------------------------------- cookies and CSRF

def test_session_cookie_is_secure_and_httponly_when_configured(make_app, monkeypatch):
    monkeypatch.setenv("FLASK_SESSION_COOKIE_SECURE", "true")
    app = make_app(drop=["SESSION_COOKIE_SECURE"], WTF_CSRF_ENABLED=True)
    cookie = app.test_client().get("/contact").headers["Set-Cookie"]
    assert cookie.startswith("session=")
    for attribute in ("Secure", "HttpOnly", "SameSite=Lax"):
        assert attribute in cookie


def test_session_cookie_is_httponly_by_default(make_app):
    cookie = make_app(WTF_CSRF_ENABLED=True).test_client().get("/contact").headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


@pytest.mark.parametrize("path, form", [("/contact", contact_form()), ("/", None)])
def test_post_without_csrf_token_gets_a_friendly_400_page(make_app, path, form):
    client = make_app(WTF_CSRF_ENABLED=True).test_client()
    client.get(path)  # a session exists, the token is just missing
    response = client.post(path, data=form or predict_form())
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "Reload the page and retry" in html and "Traceback" not in html


def test_post_with_a_forged_csrf_token_fails(make_app):
    client = make_app(WTF_CSRF_ENABLED=True).test_client()
    client.get("/contact")
    response = client.post("/contact", data={**contact_form(), "csrf_token": "forged"})
    assert response.status_code == 400


def test_contact_with_real_csrf_token_is_stored(make_app):
    app = make_app(WTF_CSRF_ENABLED=True)
    client = app.test_client()
    response = client.post("/contact", data={**contact_form(),
                                             "csrf_token": csrf_token(client, "/contact")})
    assert response.status_code == 302
    with app.app_context():
        assert db.session.query(ContactMessage).count() == 1


def test_api_needs_no_csrf_token(make_app):
    client = make_app(WTF_CSRF_ENABLED=True).test_client()
    assert client.post("/api/v1/predict", data=predict_form()).status_code == 200


# ---------------------------------------------------------------- escaping

def test_markup_in_contact_fields_is_escaped_in_pages_and_the_cli(make_app):
    app = make_app()
    client = app.test_client()
    invalid = client.post("/contact", data=contact_form(name=MARKUP, subject=MARKUP,
                                                        message="short"))
    assert invalid.status_code == 400
    html = invalid.get_data(as_text=True)
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html

    stored = client.post("/contact", data=contact_form(name=MARKUP, subject=MARKUP,
                                                       message=MARKUP + " \x1b[2J\x1b]0;pwn\x07"))
    assert stored.status_code == 302
    page = client.get("/contact").get_data(as_text=True)
    assert "<script>alert" not in page

    runner = app.test_cli_runner()
    listing = runner.invoke(args=["contact", "list"]).output
    assert MARKUP in listing  # plain text for a terminal: stored verbatim, shown verbatim
    assert "\x1b" not in listing and "\\x1b[2J" in listing  # no terminal escape sequences
    rows = json.loads(runner.invoke(args=["contact", "list", "--json"]).output)
    assert rows[0]["name"] == MARKUP


def test_a_message_cannot_fake_another_entry_in_the_listing(make_app):
    app = make_app()
    app.test_client().post("/contact", data=contact_form(
        message="Hello there.\n#99 2030-01-01 00:00 [bug] forged - x <x@x> (stored)"))
    listing = app.test_cli_runner().invoke(args=["contact", "list"]).output
    assert not [line for line in listing.splitlines() if line.startswith("#99")]


# ---------------------------------------------------------------- rate limits

def test_predict_rate_limit_answers_429_json(make_app):
    client = make_app(RATELIMIT_ENABLED=True, PREDICT_RATE_LIMIT="2 per minute").test_client()
    statuses = [client.post("/api/v1/predict", data=predict_form()).status_code
                for _ in range(3)]
    assert statuses == [200, 200, 429]
    response = client.post("/api/v1/predict", data=predict_form())
    assert response.status_code == 429
    error = response.get_json()["error"]
    assert error["code"] == "rate_limited" and "2 per 1 minute" in error["message"]
    assert int(response.headers["Retry-After"]) > 0


def test_contact_and_upload_page_rate_limits_answer_a_friendly_429_page(make_app):
    client = make_app(RATELIMIT_ENABLED=True, CONTACT_RATE_LIMIT="1 per minute",
                      PREDICT_RATE_LIMIT="1 per minute").test_client()
    assert client.post("/contact", data=contact_form()).status_code == 302
    for path, form in (("/contact", contact_form()), ("/", None)):
        if path == "/":
            assert client.post("/", data=predict_form()).status_code == 200
        response = client.post(path, data=form or predict_form())
        assert response.status_code == 429 and response.mimetype == "text/html"
        assert "Too many requests" in response.get_data(as_text=True)


@pytest.mark.parametrize("first, then", [("/", "/api/v1/predict"), ("/api/v1/predict", "/")])
def test_upload_page_and_api_share_one_prediction_budget(make_app, first, then):
    client = make_app(RATELIMIT_ENABLED=True, PREDICT_RATE_LIMIT="3 per minute").test_client()
    statuses = [client.post(path, data=predict_form()).status_code
                for path in (first, first, then, then)]
    assert statuses == [200, 200, 200, 429]


def test_health_probes_are_never_rate_limited(make_app):
    client = make_app(RATELIMIT_ENABLED=True).test_client()
    assert {client.get("/healthz").status_code for _ in range(100)} == {200}


def test_rate_limits_are_on_by_default_and_the_environment_turns_them_off(make_app,
                                                                            monkeypatch):
    limited = make_app(drop=["RATELIMIT_ENABLED"], CONTACT_RATE_LIMIT="1 per minute")
    assert limited.config["RATELIMIT_ENABLED"] is True
    client = limited.test_client()
    assert [client.post("/contact", data=contact_form()).status_code
            for _ in range(2)] == [302, 429]

    monkeypatch.setenv("FLASK_RATELIMIT_ENABLED", "false")
    unlimited = make_app(drop=["RATELIMIT_ENABLED"], CONTACT_RATE_LIMIT="1 per minute")
    client = unlimited.test_client()
    assert {client.post("/contact", data=contact_form()).status_code
            for _ in range(4)} == {302}


# ---------------------------------------------------------------- secret key and debug

def test_app_fixtures_have_their_own_instance_folder(app, empty_app, tmp_path):
    for each in (app, empty_app):
        assert Path(each.instance_path) == tmp_path / "instance"


def test_apps_built_in_tests_never_use_the_code_tree_instance_folder(tmp_path):
    built_here = create_app(make_config(tmp_path))
    assert not Path(built_here.instance_path).is_relative_to(ROOT)


def test_secret_key_is_random_private_and_kept_across_restarts(make_app, tmp_path):
    first = make_app(drop=["SECRET_KEY"], WTF_CSRF_ENABLED=True)
    key_file = tmp_path / "instance" / "secret_key"
    key = key_file.read_text().strip()
    assert first.config["SECRET_KEY"] == key and re.fullmatch(r"[0-9a-f]{64}", key)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    with first.test_client() as client:
        client.get("/contact")  # the CSRF token lives in the signed session
        cookie = client.get_cookie("session").value
    second = make_app(drop=["SECRET_KEY"])
    assert second.config["SECRET_KEY"] == key
    with second.test_request_context():
        assert second.session_interface.get_signing_serializer(second).loads(cookie)


def test_each_instance_gets_its_own_key(make_app, tmp_path, monkeypatch):
    first = make_app(drop=["SECRET_KEY"]).config["SECRET_KEY"]
    monkeypatch.setenv("FLASK_INSTANCE_PATH", str(tmp_path / "other-instance"))
    assert make_app(drop=["SECRET_KEY"]).config["SECRET_KEY"] != first


def test_concurrent_first_starts_agree_on_one_key(tmp_path):
    """Several gunicorn workers starting at once must not each write their own key."""
    path = str(tmp_path / "secret_key")
    keys, barrier = [], threading.Barrier(8)

    def start():
        barrier.wait()
        keys.append(secret_key.read_key(path) or secret_key.create_key(path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(keys)) == 1 and keys[0] == Path(path).read_text()
    assert os.listdir(tmp_path) == ["secret_key"]  # no scratch files left


@pytest.mark.parametrize("published", sorted(secret_key.PUBLISHED_SECRET_KEYS))
def test_published_secret_keys_are_refused_outside_tests(make_app, published):
    with pytest.raises(RuntimeError, match="published"):
        make_app(SECRET_KEY=published, TESTING=False)


@pytest.mark.parametrize("placeholder", ["<a long random string>", "\u2039secret key\u203a",
                                         "please-CHANGE-ME-now"])
def test_template_placeholders_are_refused_as_secret_keys(make_app, placeholder):
    with pytest.raises(RuntimeError, match="placeholder"):
        make_app(SECRET_KEY=placeholder, TESTING=False)


def test_an_ordinary_configured_key_is_kept(make_app):
    app = make_app(SECRET_KEY="x7Qm2-a-long-random-key", TESTING=False)
    assert app.config["SECRET_KEY"] == "x7Qm2-a-long-random-key"


def test_no_secret_key_is_committed():
    config_keys = [os.environ.get("FLASK_SECRET_KEY")]
    import config

    assert config.Config.SECRET_KEY is None and not any(config_keys)
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "instance/" in ignored


def test_debug_is_off_unless_asked_for(make_app, monkeypatch):
    monkeypatch.delenv("FLASK_DEBUG", raising=False)
    app = make_app(drop=["DEBUG", "TESTING", "SECRET_KEY"])
    assert app.debug is False
    monkeypatch.setenv("FLASK_DEBUG", "1")
    assert make_app(drop=["DEBUG", "TESTING", "SECRET_KEY"]).debug


def test_unexpected_errors_show_no_trace(make_app, monkeypatch):
    app = make_app(drop=["TESTING", "SECRET_KEY"])

    def explode(*_args, **_kwargs):
        raise ZeroDivisionError("secret detail")

    monkeypatch.setattr(app.extensions["inference"], "analyse", explode)
    client = app.test_client()
    api = client.post("/api/v1/predict", data=predict_form())
    assert api.status_code == 500 and api.get_json()["error"]["code"] == "internal_error"
    page = client.post("/", data=predict_form())
    for response in (api, page):
        text = response.get_data(as_text=True)
        assert "secret detail" not in text and "Traceback" not in text
        assert "ZeroDivisionError" not in text


@pytest.mark.parametrize("proxies, second_client_status", [(1, 400), (0, 429)])
def test_rate_limits_count_the_client_behind_a_trusted_proxy(tmp_path, tiny_model_dir,
                                                             instance_path, proxies,
                                                             second_client_status):
    from app import create_app

    from .conftest import testing_config

    app = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_model_dir),
                                    RATELIMIT_ENABLED=True, STUDY_RATE_LIMIT="1 per minute",
                                    PROXY_FIX_X_FOR=proxies))
    client = app.test_client()

    def post(address: str) -> int:
        return client.post("/api/v1/studies", data={"modality": "ct"},
                           headers={"X-Forwarded-For": address}).status_code

    assert post("198.51.100.7") == 400  # counted, then refused for its missing files
    assert post("198.51.100.7") == 429
    assert post("203.0.113.9") == second_client_status
