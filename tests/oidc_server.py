"""A real OpenID Connect provider on loopback: panva's oidc-provider (tests/oidc/).

``OidcProvider`` starts ``node tests/oidc/provider.mjs`` on a free port with its own
RS256 key, clients and accounts (see that file for how the provider behaves). The
accounts sign in with the password ``password``: ``OidcProvider.sign_in`` without a
browser, ``login_in_browser`` with Playwright. The fixtures (a test module or
tests/conftest.py imports them): ``oidc_provider`` is one provider for a test module, started once;
``oidc_redirect_uris`` (module scope) gives the redirect URIs of its ``lungscan``
client, and a module overrides it to send the browser somewhere else.
"""

from __future__ import annotations

import functools
import json
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import RSAKey

from .redis_server import free_port

OIDC_DIR = Path(__file__).resolve().parent / "oidc"
PROVIDER_SCRIPT = OIDC_DIR / "provider.mjs"
NODE = shutil.which("node")
PASSWORD = "password"  # every account's password (tests/oidc/provider.mjs)
DEFAULT_REDIRECT_URIS = ("http://127.0.0.1:5000/login/oidc/callback",)
DEFAULT_ROLES = {"reader1": ["reader"], "analyst1": ["analyst"], "admin1": ["admin"],
                 "radiologist1": ["radiologist"], "noroles1": []}
MIN_NODE = (20, 18)  # oidc-provider 9 calls URL.parse
UNAVAILABLE = (f"node {MIN_NODE[0]}.{MIN_NODE[1]}+ or tests/oidc/node_modules is missing: "
               "install nodejs and npm, then run `npm ci --prefix tests/oidc` (.ci/run does)")


@functools.cache
def node_version() -> tuple[int, ...]:
    """The installed node's version, (0,) without one."""
    if NODE is None:
        return (0,)
    try:
        found = subprocess.run([NODE, "--version"], capture_output=True, text=True,
                               timeout=30, check=True).stdout
        return tuple(int(part) for part in found.strip().lstrip("v").split("."))
    except (OSError, subprocess.SubprocessError, ValueError):
        return (0,)


def default_accounts() -> list[dict]:
    """reader1, analyst1, admin1, radiologist1 (a hospital's role name) and noroles1."""
    return [{"sub": f"sub-{name}", "username": name, "email": f"{name}@example.org",
             "name": name.capitalize(), "roles": roles} for name, roles in DEFAULT_ROLES.items()]


def default_clients(redirect_uris) -> list[dict]:
    """``lungscan`` (the site: authorization code) and ``lungscan-robot``
    (client_credentials, role analyst); random secrets."""
    return [{"client_id": "lungscan", "client_secret": secrets.token_urlsafe(24),
             "redirect_uris": list(redirect_uris), "grant_types": ["authorization_code"]},
            {"client_id": "lungscan-robot", "client_secret": secrets.token_urlsafe(24),
             "redirect_uris": [], "grant_types": ["client_credentials"],
             "roles": ["analyst"]}]


def new_key(kid: str) -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": kid, "alg": "RS256", "use": "sig"},
                               private=True)


class OidcProvider:
    """One oidc-provider process; ``with OidcProvider() as provider:`` starts and stops it."""

    def __init__(self, folder: Path | None = None, *, redirect_uris=DEFAULT_REDIRECT_URIS,
                 clients: list[dict] | None = None, accounts: list[dict] | None = None,
                 audience: str = "lungscan", roles_claim: str = "roles",
                 access_token_ttl_s: int = 600):
        self.own_folder = folder is None
        self.folder = Path(tempfile.mkdtemp(prefix="oidc-")) if folder is None else folder
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.audience = audience
        self.roles_claim = roles_claim
        self.access_token_ttl_s = access_token_ttl_s
        self.client_configs = clients if clients is not None else default_clients(redirect_uris)
        self.clients = {c["client_id"]: c.get("client_secret") for c in self.client_configs}
        account_list = accounts if accounts is not None else default_accounts()
        self.accounts = {a.get("username", a["sub"]): a for a in account_list}
        self.key = new_key(f"lungscan-test-{secrets.token_hex(4)}")
        self._foreign_key = None
        self.config_path = self.folder / "provider.json"
        self.log_path = self.folder / "provider.log"
        self.process: subprocess.Popen | None = None
        self._discovery: dict | None = None

    @staticmethod
    def available() -> bool:
        """Whether a new enough node and the npm packages of tests/oidc are installed."""
        return node_version() >= MIN_NODE and (OIDC_DIR / "node_modules" / "oidc-provider"
                                     / "package.json").exists()

    def config(self) -> dict:
        return {"port": self.port, "issuer": self.issuer, "clients": self.client_configs,
                "accounts": list(self.accounts.values()), "audience": self.audience,
                "jwks": {"keys": [self.key.as_dict(private=True)]},
                "access_token_ttl_s": self.access_token_ttl_s, "roles_claim": self.roles_claim}

    def start(self) -> None:
        """Start the provider and wait (up to 30 s) for its ``READY`` line."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [NODE, str(PROVIDER_SCRIPT), str(self.config_path)], stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, cwd=OIDC_DIR)
        deadline = time.monotonic() + 30
        while f"READY {self.issuer}" not in self.log_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log_text()
                self.stop()
                raise RuntimeError(f"oidc-provider did not start:\n{log[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None

    def close(self) -> None:
        """Stop it and remove the folder it made for itself."""
        self.stop()
        if self.own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> OidcProvider:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def discovery(self) -> dict:
        """The provider's discovery document (fetched once)."""
        if self._discovery is None:
            response = requests.get(self.discovery_url, timeout=10)
            response.raise_for_status()
            self._discovery = response.json()
        return self._discovery

    def public_jwks(self) -> dict:
        """The JWKS that the provider publishes (its key, public part)."""
        return {"keys": [self.key.as_dict(private=False)]}

    def sign(self, claims: dict, *, foreign_key: bool = False) -> str:
        """A JWT access token (header typ ``at+jwt``) signed with the provider's key, or
        with another key under the same kid when ``foreign_key``. ``iss``, ``aud``,
        ``iat`` and ``exp`` default to the provider's, now and now + the token TTL; a
        claim given as None is left out."""
        now = int(time.time())
        payload = {"iss": self.issuer, "aud": self.audience, "iat": now,
                   "exp": now + self.access_token_ttl_s, **claims}
        payload = {name: value for name, value in payload.items() if value is not None}
        key = self.key
        if foreign_key:
            self._foreign_key = self._foreign_key or new_key(self.key.kid)
            key = self._foreign_key
        header = {"alg": "RS256", "typ": "at+jwt", "kid": self.key.kid}
        return jwt.encode(header, payload, key)

    def client_credentials_token(self, client_id: str = "lungscan-robot", **params) -> str:
        """A real access token from the token endpoint (client_secret_basic)."""
        response = requests.post(self.discovery()["token_endpoint"],
                                 data={"grant_type": "client_credentials", **params},
                                 auth=(client_id, self.clients[client_id]), timeout=10)
        if not response.ok:
            raise RuntimeError(f"token endpoint: {response.status_code} {response.text}")
        return response.json()["access_token"]

    def sign_in(self, authorize_url: str, username: str, password: str = PASSWORD,
                session: requests.Session | None = None) -> str:
        """Sign ``username`` in through the provider, without a browser: from the
        authorization request URL (as a site redirects to it) to the URL the provider
        redirects back to (the redirect_uri with ``code``, or ``error``)."""
        session = session or requests.Session()
        url, method, data = authorize_url, "GET", None
        for _ in range(10):
            response = session.request(method, url, data=data, allow_redirects=False,
                                       timeout=10)
            if response.is_redirect:
                url, method, data = urljoin(url, response.headers["Location"]), "GET", None
                if not url.startswith(self.issuer + "/"):
                    return url
            elif response.status_code == 200 and 'name="login"' in response.text:
                method, data = "POST", {"login": username, "password": password}
            else:
                raise RuntimeError(f"sign-in stopped at {url}: {response.status_code} "
                                   f"{response.text[:500]}")
        raise RuntimeError(f"sign-in did not leave the provider: {url}")


def login_in_browser(page, username: str, password: str = PASSWORD) -> None:
    """Fill and submit the provider's sign-in form (Playwright, sync API) on a page
    already at the provider's interaction URL; the page then follows the redirects to
    the client's redirect_uri. The provider asks for no consent."""
    page.wait_for_selector("form input[name=login]")
    page.fill("input[name=login]", username)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("form button[type=submit]")


needs_oidc = [pytest.mark.services,
              pytest.mark.skipif(not OidcProvider.available(), reason=UNAVAILABLE)]


@pytest.fixture(scope="module")
def oidc_redirect_uris() -> list[str]:
    """Where the module provider's ``lungscan`` client may send the browser back to."""
    return list(DEFAULT_REDIRECT_URIS)


@pytest.fixture(scope="module")
def oidc_provider(tmp_path_factory, oidc_redirect_uris):
    """One running :class:`OidcProvider` for the whole test module (default clients
    and accounts); it skips the test, and under CI fails it, without node packages."""
    if not OidcProvider.available():
        pytest.skip(UNAVAILABLE)
    with OidcProvider(tmp_path_factory.mktemp("oidc"), redirect_uris=oidc_redirect_uris) \
            as provider:
        yield provider
