"""Sign-in with a real OpenID provider on loopback (panva's oidc-provider): the code
flow with PKCE, roles from the claim, the provider's access tokens as bearer JWTs, and
the ones that must be refused; sign-out that ends the provider's session too
(RP-initiated logout); and a real Chromium signing in and out through a real server."""

from __future__ import annotations

import html
import re
import shutil
import time
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from joserfc import jwt

from auth import oidc, sessions
from auth.oidc import NO_ROLE

from .oidc_server import (UNAVAILABLE, OidcProvider, default_clients, login_in_browser,
                          needs_oidc)
from .server import start_server

pytestmark = needs_oidc

SITE = "http://localhost"  # the Flask test client's host
DEAD_PACS = "http://127.0.0.1:9/dicom-web"


@pytest.fixture(scope="module")
def oidc_redirect_uris():
    return [f"{SITE}/login/oidc/callback"]


def clients_signing_out_to(site: str, redirect_uris) -> list[dict]:
    """The default clients, ``lungscan`` registered to come back to ``site``/login
    after signing out at the provider."""
    clients = default_clients(redirect_uris)
    clients[0]["post_logout_redirect_uris"] = [f"{site}/login"]
    return clients


@pytest.fixture(scope="module")
def oidc_provider(tmp_path_factory, oidc_redirect_uris):
    """The module's provider, its ``lungscan`` client allowed back to our /login."""
    if not OidcProvider.available():
        pytest.skip(UNAVAILABLE)
    with OidcProvider(tmp_path_factory.mktemp("oidc"),
                      clients=clients_signing_out_to(SITE, oidc_redirect_uris)) as provider:
        yield provider


def hospital_settings(provider) -> dict:
    return dict(AUTH_METHODS="oidc", OIDC_ISSUER=provider.issuer, OIDC_CLIENT_ID="lungscan",
                OIDC_AUDIENCE=provider.audience, OIDC_ROLE_MAP="radiologist=reader",
                DICOMWEB_URL=DEAD_PACS, DICOMWEB_TIMEOUT_S=2)


@pytest.fixture
def hospital(app_factory, oidc_provider, monkeypatch):
    monkeypatch.setenv("OIDC_CLIENT_SECRET", oidc_provider.clients["lungscan"])
    return app_factory(**hospital_settings(oidc_provider))


def sign_in(app, provider, username: str, browser: requests.Session | None = None):
    """Sign in through the provider; ``browser`` keeps the provider's cookies."""
    client = app.test_client()
    start = client.get("/login/oidc?next=/studies/")
    assert start.status_code == 302
    authorize = start.headers["Location"]
    query = parse_qs(urlsplit(authorize).query)
    assert authorize.startswith(provider.issuer)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) >= 43
    back = provider.sign_in(authorize, username, session=browser)
    assert back.startswith(f"{SITE}/login/oidc/callback?")
    return client, client.get(back.removeprefix(SITE))


def test_sign_in_with_code_and_pkce_brings_the_role_from_the_claim(hospital, oidc_provider):
    client, answer = sign_in(hospital, oidc_provider, "analyst1")
    assert answer.status_code == 303 and answer.headers["Location"] == "/studies/"
    page = client.get("/studies/").get_data(as_text=True)
    assert 'id="account-name">analyst1<' in page and 'id="account-role">analyst<' in page
    assert client.get("/pacs").status_code == 502  # past the door, to the (absent) PACS
    assert client.post("/logout").status_code == 200  # on to the provider (below)
    assert client.get("/studies/").status_code == 302


def test_hospital_role_names_are_mapped_and_no_role_is_no_entry(hospital, oidc_provider):
    client, _ = sign_in(hospital, oidc_provider, "radiologist1")
    page = client.get("/studies/").get_data(as_text=True)
    assert 'id="account-role">reader<' in page
    nobody, refused = sign_in(hospital, oidc_provider, "noroles1")
    assert refused.status_code == 401 and NO_ROLE in refused.get_data(as_text=True)
    assert nobody.get("/studies/").status_code == 302


def test_the_providers_access_tokens_are_bearer_tokens(hospital, oidc_provider):
    real = oidc_provider.client_credentials_token()  # roles ["analyst"]
    client = hospital.test_client()
    answer = client.get("/studies/", headers={"Authorization": f"Bearer {real}"})
    assert answer.status_code == 200
    minted = oidc_provider.sign({"sub": "sub-reader1", "roles": ["reader"]})
    assert client.get("/api/v1/pacs/studies",
                      headers={"Authorization": f"Bearer {minted}"}).status_code == 502
    analyst_only = client.post("/api/v1/pacs/studies/1.2.3/analyses",
                               headers={"Authorization": f"Bearer {minted}"})
    assert analyst_only.status_code == 403
    assert analyst_only.get_json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize("claims, foreign", [
    ({"aud": "someone-else"}, False),
    ({"exp": int(time.time()) - 600, "iat": int(time.time()) - 1200}, False),
    ({}, True),
    ({"iss": "http://127.0.0.1:9"}, False),
], ids=["wrong-audience", "expired", "another-key", "another-issuer"])
def test_tokens_that_do_not_hold_are_refused(hospital, oidc_provider, claims, foreign):
    token = oidc_provider.sign({"sub": "sub-admin1", "roles": ["admin"], **claims},
                               foreign_key=foreign)
    answer = hospital.test_client().get("/studies/", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]


def provider_asks_for_a_password(app, browser: requests.Session, provider) -> bool:
    """A new sign-in from this browser: True when the provider shows its sign-in form,
    False when it sends the browser straight back (its session is still alive)."""
    url = app.test_client().get("/login/oidc").headers["Location"]
    for _ in range(10):
        response = browser.get(url, allow_redirects=False, timeout=10)
        if not response.is_redirect:
            assert response.status_code == 200, response.text[:300]
            return 'name="login"' in response.text
        url = urljoin(url, response.headers["Location"])
        if not url.startswith(provider.issuer + "/"):
            return False
    raise AssertionError(f"the provider kept redirecting: {url}")


def provider_sign_out_url(page: str) -> str:
    """Where the signed-out page sends the browser on its own (meta refresh) and by
    its link: the same URL."""
    refresh = re.search(r'<meta http-equiv="refresh" content="0;url=([^"]+)">', page)[1]
    link = re.search(r'<a id="sign-out-provider" href="([^"]+)">', page)[1]
    assert refresh == link
    return html.unescape(refresh)


def confirm_at_provider(browser: requests.Session, onward: str) -> str:
    """Open the provider's end-session URL, answer its "sign out?" page with yes; where
    the provider sends the browser then."""
    confirm = browser.get(onward, timeout=10)
    assert confirm.status_code == 200 and 'id="op.logoutForm"' in confirm.text
    action = re.search(r'id="op.logoutForm" method="post" action="([^"]+)"', confirm.text)[1]
    xsrf = re.search(r'name="xsrf" value="([^"]+)"', confirm.text)[1]
    back = browser.post(urljoin(confirm.url, action), data={"xsrf": xsrf, "logout": "yes"},
                        allow_redirects=False, timeout=10)
    assert back.is_redirect
    return back.headers["Location"]


def test_sign_out_ends_the_providers_session_too(hospital, oidc_provider):
    browser = requests.Session()  # the provider's cookies, as a browser keeps them
    client, answer = sign_in(hospital, oidc_provider, "reader1", browser)
    assert answer.status_code == 303
    assert not provider_asks_for_a_password(hospital, browser, oidc_provider)  # alive
    out = client.post("/logout")
    assert out.status_code == 200
    onward = provider_sign_out_url(out.get_data(as_text=True))
    assert onward.startswith(oidc_provider.discovery()["end_session_endpoint"] + "?")
    query = parse_qs(urlsplit(onward).query)
    assert query["client_id"] == ["lungscan"]
    assert query["post_logout_redirect_uri"] == [f"{SITE}/login"]
    hint = jwt.decode(query["id_token_hint"][0], oidc_provider.key)
    assert hint.claims["sub"] == "sub-reader1" and hint.claims["aud"] == "lungscan"
    assert client.get("/studies/").status_code == 302  # signed out here at once
    assert confirm_at_provider(browser, onward) == f"{SITE}/login"
    assert provider_asks_for_a_password(hospital, browser, oidc_provider)  # ended there


def test_an_id_token_too_big_for_the_cookie_is_not_kept_and_sign_out_still_works(
        hospital, oidc_provider, monkeypatch):
    monkeypatch.setattr(sessions, "MAX_ID_TOKEN_CHARS", 100)
    browser = requests.Session()
    client, _ = sign_in(hospital, oidc_provider, "admin1", browser)
    onward = provider_sign_out_url(client.post("/logout").get_data(as_text=True))
    query = parse_qs(urlsplit(onward).query)
    assert "id_token_hint" not in query and query["client_id"] == ["lungscan"]
    assert confirm_at_provider(browser, onward) == f"{SITE}/login"
    assert provider_asks_for_a_password(hospital, browser, oidc_provider)


def test_without_an_end_session_endpoint_sign_out_stays_here(hospital, oidc_provider,
                                                              monkeypatch):
    client, _ = sign_in(hospital, oidc_provider, "analyst1")
    with hospital.app_context():
        metadata = oidc.provider().load_server_metadata()
    monkeypatch.delitem(metadata, "end_session_endpoint")
    out = client.post("/logout")
    assert (out.status_code, out.headers["Location"]) == (303, "/login")
    assert client.get("/studies/").status_code == 302


def test_a_real_browser_signs_in_and_out_through_the_provider(tmp_path, tiny_model_dir,
                                                             browser):
    provider = OidcProvider(tmp_path / "idp")
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models)
    env = {f"FLASK_{key}": str(value) for key, value in hospital_settings(provider).items()}
    env["OIDC_CLIENT_SECRET"] = provider.clients["lungscan"]
    server = start_server(tmp_path / "web", models, workers=1, env=env)
    context = browser.new_context()
    try:
        provider.client_configs[0]["redirect_uris"] = [f"{server.url}/login/oidc/callback"]
        provider.client_configs[0]["post_logout_redirect_uris"] = [f"{server.url}/login"]
        with provider:
            page = context.new_page()
            page.goto(f"{server.url}/login?next=/studies/")
            page.click("#login-oidc")
            login_in_browser(page, "admin1")
            page.wait_for_url(f"{server.url}/studies/")
            assert page.locator("#account-name").inner_text() == "admin1"
            assert page.locator("#account-role").inner_text() == "admin"
            page.click("#sign-out")  # signed out here, then the provider asks to confirm
            page.wait_for_url(f"{provider.issuer}/**")
            with page.expect_navigation(url=f"{server.url}/login"):
                page.click("button[name=logout][value=yes]")
            assert page.locator("#account-name").count() == 0
            page.click("#login-oidc")  # the provider's session ended: it asks again
            page.wait_for_selector("form input[name=login]")
    finally:
        context.close()
        server.stop()
