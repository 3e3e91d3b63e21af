"""The OpenID Connect provider of the tests (tests/oidc_server.py) works as the site
expects: discovery, JWKS, JWT access tokens, authorization code with PKCE, and a
sign-in that headless Chromium can fill."""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from .oidc_server import PASSWORD, needs_oidc

pytestmark = needs_oidc
CALLBACK_PATH = "/login/oidc/callback"


class CallbackHandler(BaseHTTPRequestHandler):
    """The site's redirect_uri, standing in: it records each query it is sent."""

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == CALLBACK_PATH:  # not the browser's /favicon.ico
            self.server.queries.append(parse_qs(url.query))
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write(b"<!doctype html><title>Signed in</title><p>Signed in</p>")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def callback_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), CallbackHandler)
    server.queries = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def oidc_redirect_uris(callback_server):
    return [f"http://127.0.0.1:{callback_server.server_port}{CALLBACK_PATH}"]


def verify(token: str, provider):
    """The token's header and claims, its signature checked against the published JWKS."""
    from joserfc import jwt
    from joserfc.jwk import KeySet

    jwks = requests.get(provider.discovery()["jwks_uri"], timeout=10).json()
    return jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["RS256"])


def authorize_url(provider, redirect_uri: str, **extra) -> tuple[str, str]:
    """An authorization request as the site makes it (PKCE S256), and its verifier."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    params = {"response_type": "code", "client_id": "lungscan", "redirect_uri": redirect_uri,
              "scope": "openid profile email roles", "state": secrets.token_urlsafe(8),
              "nonce": secrets.token_urlsafe(8), "code_challenge_method": "S256",
              "code_challenge": challenge.rstrip(b"=").decode(), **extra}
    return f"{provider.discovery()['authorization_endpoint']}?{urlencode(params)}", verifier


def exchange(provider, code: str, redirect_uri: str, verifier: str) -> requests.Response:
    return requests.post(provider.discovery()["token_endpoint"], timeout=10,
                         auth=("lungscan", provider.clients["lungscan"]),
                         data={"grant_type": "authorization_code", "code": code,
                               "redirect_uri": redirect_uri, "code_verifier": verifier})


def test_discovery_names_the_issuer(oidc_provider):
    document = requests.get(oidc_provider.discovery_url, timeout=10).json()
    assert document["issuer"] == oidc_provider.issuer
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert "client_credentials" in document["grant_types_supported"]
    assert "roles" in document["claims_supported"]


def test_client_credentials_token_is_a_jwt_for_the_audience(oidc_provider):
    token = verify(oidc_provider.client_credentials_token("lungscan-robot"), oidc_provider)
    assert token.header["kid"] == oidc_provider.key.kid
    assert token.header["typ"] == "at+jwt"
    assert token.claims["iss"] == oidc_provider.issuer
    assert token.claims["aud"] == oidc_provider.audience
    assert token.claims["sub"] == "lungscan-robot"
    assert token.claims["roles"] == ["analyst"]
    assert token.claims["exp"] > token.claims["iat"]


def test_signed_tokens_verify_only_with_the_providers_key(oidc_provider):
    from joserfc.errors import BadSignatureError

    token = verify(oidc_provider.sign({"sub": "sub-reader1", "roles": ["reader"]}),
                   oidc_provider)
    assert token.claims["aud"] == oidc_provider.audience
    assert token.claims["iss"] == oidc_provider.issuer
    expired = verify(oidc_provider.sign({"sub": "x", "exp": 1000, "aud": "other"}),
                     oidc_provider)
    assert (expired.claims["exp"], expired.claims["aud"]) == (1000, "other")
    assert "iat" not in verify(oidc_provider.sign({"iat": None}), oidc_provider).claims
    forged = oidc_provider.sign({"sub": "sub-admin1"}, foreign_key=True)
    with pytest.raises(BadSignatureError):
        verify(forged, oidc_provider)


def test_authorization_code_with_pkce(oidc_provider, oidc_redirect_uris):
    redirect_uri = oidc_redirect_uris[0]
    url, verifier = authorize_url(oidc_provider, redirect_uri)
    back = oidc_provider.sign_in(url, "reader1")
    assert back.startswith(redirect_uri + "?")
    query = parse_qs(urlsplit(back).query)
    assert query["iss"] == [oidc_provider.issuer]
    tokens = exchange(oidc_provider, query["code"][0], redirect_uri, verifier)
    assert tokens.ok, tokens.text
    id_token = verify(tokens.json()["id_token"], oidc_provider).claims
    assert id_token["aud"] == "lungscan"
    assert id_token["sub"] == "sub-reader1"
    assert id_token["preferred_username"] == "reader1"
    assert id_token["roles"] == ["reader"]
    assert id_token["email"] == "reader1@example.org"
    access = verify(tokens.json()["access_token"], oidc_provider).claims
    assert (access["aud"], access["sub"], access["roles"]) == \
        ("lungscan", "sub-reader1", ["reader"])


def test_roles_come_with_openid_alone(oidc_provider, oidc_redirect_uris):
    redirect_uri = oidc_redirect_uris[0]
    url, verifier = authorize_url(oidc_provider, redirect_uri, scope="openid")
    code = parse_qs(urlsplit(oidc_provider.sign_in(url, "radiologist1")).query)["code"][0]
    id_token = verify(exchange(oidc_provider, code, redirect_uri, verifier).json()["id_token"],
                      oidc_provider).claims
    assert (id_token["preferred_username"], id_token["roles"]) == \
        ("radiologist1", ["radiologist"])


def test_pkce_is_required_and_checked(oidc_provider, oidc_redirect_uris):
    redirect_uri = oidc_redirect_uris[0]
    url, _ = authorize_url(oidc_provider, redirect_uri)
    plain = url.replace("code_challenge_method=S256", "code_challenge_method=plain")
    refused = parse_qs(urlsplit(oidc_provider.sign_in(plain, "reader1")).query)
    assert refused["error"] == ["invalid_request"]
    code = parse_qs(urlsplit(oidc_provider.sign_in(url, "reader1")).query)["code"][0]
    wrong = exchange(oidc_provider, code, redirect_uri, secrets.token_urlsafe(48))
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"


def test_sign_in_refuses_a_wrong_password(oidc_provider, oidc_redirect_uris):
    url, _ = authorize_url(oidc_provider, oidc_redirect_uris[0])
    with pytest.raises(RuntimeError, match="401"):
        oidc_provider.sign_in(url, "reader1", password="not-" + PASSWORD)


