"""Sign-in settings, read once at start; a combination that would leave patient data
without a door stops the app with a message that says what to set."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from config import is_true

from .errors import AccountError, AuthNotConfigured
from .roles import parse_role_map

METHODS = ("local", "oidc")


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    audience: str
    scopes: str
    roles_claim: str
    role_map: dict

    @property
    def metadata_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


@dataclass(frozen=True)
class AuthSettings:
    methods: frozenset
    public_access: bool
    idle_minutes: float
    max_hours: float
    prefer_https: bool
    login_free_attempts: int  # failed passwords in a row before each try waits
    login_delay_s: float  # the first wait, doubling per further failure...
    login_delay_max_s: float  # ...up to this
    login_rate_limit: str  # per client address, on top of the per-account waits
    oidc: OidcSettings | None

    @property
    def enabled(self) -> bool:
        return bool(self.methods)


def parse_methods(text) -> frozenset:
    methods = frozenset(m.strip().lower() for m in str(text or "").split(",") if m.strip())
    unknown = methods - set(METHODS)
    if unknown:
        raise AuthNotConfigured(f"AUTH_METHODS: unknown method {min(unknown)!r}; use "
                                "local, oidc or local,oidc.")
    return methods


def oidc_settings(config: Mapping, environ: Mapping) -> OidcSettings:
    issuer, client_id = config["OIDC_ISSUER"], config["OIDC_CLIENT_ID"]
    secret = environ.get("OIDC_CLIENT_SECRET") or ""
    missing = [name for name, value in (("OIDC_ISSUER", issuer), ("OIDC_CLIENT_ID", client_id),
                                        ("OIDC_CLIENT_SECRET (environment)", secret))
               if not value]
    if missing:
        raise AuthNotConfigured("AUTH_METHODS includes oidc: set " + ", ".join(missing) + ".")
    try:
        role_map = parse_role_map(config["OIDC_ROLE_MAP"])
    except AccountError as exc:
        raise AuthNotConfigured(f"OIDC_ROLE_MAP: {exc.message}") from exc
    except ValueError as exc:
        raise AuthNotConfigured(str(exc)) from exc
    return OidcSettings(issuer=issuer, client_id=client_id, client_secret=secret,
                        audience=config["OIDC_AUDIENCE"] or client_id,
                        scopes=config["OIDC_SCOPES"], roles_claim=config["OIDC_ROLES_CLAIM"],
                        role_map=role_map)


def auth_settings(config: Mapping, environ: Mapping) -> AuthSettings:
    methods = parse_methods(config["AUTH_METHODS"])
    if config.get("DICOMWEB_URL") and not methods:
        raise AuthNotConfigured(
            "DICOMWEB_URL is set, so this site reaches patient records, and no sign-in "
            "method is configured. Set AUTH_METHODS=local (accounts from `flask users "
            "create`) or AUTH_METHODS=oidc (with OIDC_ISSUER, OIDC_CLIENT_ID and the "
            "OIDC_CLIENT_SECRET environment variable), or unset DICOMWEB_URL.")
    public_access = is_true(config["PUBLIC_ACCESS"])
    if not public_access and not methods:
        raise AuthNotConfigured("PUBLIC_ACCESS is false, so every page needs a signed-in "
                                "user, and no sign-in method is configured: set "
                                "AUTH_METHODS=local or oidc.")
    return AuthSettings(
        methods=methods, public_access=public_access,
        idle_minutes=float(config["SESSION_IDLE_MINUTES"]),
        max_hours=float(config["SESSION_MAX_HOURS"]),
        prefer_https=is_true(config["PREFER_HTTPS"]),
        login_free_attempts=int(config["LOGIN_FREE_ATTEMPTS"]),
        login_delay_s=float(config["LOGIN_DELAY_S"]),
        login_delay_max_s=float(config["LOGIN_DELAY_MAX_S"]),
        login_rate_limit=config["LOGIN_RATE_LIMIT"],
        oidc=oidc_settings(config, environ) if "oidc" in methods else None)
