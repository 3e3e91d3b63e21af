"""Sign-in with a real OpenID provider on loopback (panva's oidc-provider): the code
flow with PKCE, roles from the claim, the provider's access tokens as bearer JWTs, and
the ones that must be refused; and a real Chromium signing in through a real server."""

from __future__ import annotations

import shutil
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from auth.oidc import NO_ROLE

from .oidc_server import OidcProvider, login_in_browser, needs_oidc
from .server import start_server

pytestmark = needs_oidc

SITE = "http://localhost"  # the Flask test client's host
DEAD_PACS = "http://127.0.0.1:9/dicom-web"


@pytest.fixture(scope="module")
def oidc_redirect_uris():
    return [f"{SITE}/login/oidc/callback"]


def hospital_settings(provider) -> dict:
    return dict(AUTH_METHODS="oidc", OIDC_ISSUER=provider.issuer, OIDC_CLIENT_ID="lungscan",
                OIDC_AUDIENCE=provider.audience, OIDC_ROLE_MAP="radiologist=reader",
                DICOMWEB_URL=DEAD_PACS, DICOMWEB_TIMEOUT_S=2)


@pytest.fixture
def hospital(app_factory, oidc_provider, monkeypatch):
    monkeypatch.setenv("OIDC_CLIENT_SECRET", oidc_provider.clients["lungscan"])
    return app_factory(**hospital_settings(oidc_provider))


def sign_in(app, provider, username: str):
    client = app.test_client()
    start = client.get("/login/oidc?next=/studies/")
    assert start.status_code == 302
    authorize = start.headers["Location"]
    query = parse_qs(urlsplit(authorize).query)
    assert authorize.startswith(provider.issuer)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) >= 43
    back = provider.sign_in(authorize, username)
    assert back.startswith(f"{SITE}/login/oidc/callback?")
    return client, client.get(back.removeprefix(SITE))


def test_sign_in_with_code_and_pkce_brings_the_role_from_the_claim(hospital, oidc_provider):
    client, answer = sign_in(hospital, oidc_provider, "analyst1")
    assert answer.status_code == 303 and answer.headers["Location"] == "/studies/"
    page = client.get("/studies/").get_data(as_text=True)
    assert 'id="account-name">analyst1<' in page and 'id="account-role">analyst<' in page
    assert client.get("/pacs").status_code == 502  # past the door, to the (absent) PACS
    assert client.post("/logout").status_code == 303
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


def test_a_real_browser_signs_in_through_the_provider(tmp_path, tiny_model_dir, browser):
    provider = OidcProvider(tmp_path / "idp")
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models)
    env = {f"FLASK_{key}": str(value) for key, value in hospital_settings(provider).items()}
    env["OIDC_CLIENT_SECRET"] = provider.clients["lungscan"]
    server = start_server(tmp_path / "web", models, workers=1, env=env)
    context = browser.new_context()
    try:
        provider.client_configs[0]["redirect_uris"] = [f"{server.url}/login/oidc/callback"]
        with provider:
            page = context.new_page()
            page.goto(f"{server.url}/login?next=/studies/")
            page.click("#login-oidc")
            login_in_browser(page, "admin1")
            page.wait_for_url(f"{server.url}/studies/")
            assert page.locator("#account-name").inner_text() == "admin1"
            assert page.locator("#account-role").inner_text() == "admin"
            page.click("#sign-out")
            page.wait_for_url(f"{server.url}/login")
            assert page.locator("#account-name").count() == 0
    finally:
        context.close()
        server.stop()
