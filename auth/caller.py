"""Who sent a request: a bearer token (personal, or the identity provider's JWT), else
the session cookie, else nobody.

A session cookie never authorises a state-changing API call: a browser sends cookies
with cross-site form posts, and the API takes no CSRF token. Such a call without a
bearer token is anonymous.
"""

from __future__ import annotations

from . import oidc, sessions, tokens
from .errors import NotSignedIn
from .identity import ANONYMOUS, JWT, TOKEN, Identity, identity_of
from .settings import AuthSettings

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def caller(settings: AuthSettings, authorization: str | None, is_api: bool,
           method: str) -> Identity:
    if authorization:
        return bearer(authorization, settings)
    if is_api and method not in SAFE_METHODS:
        return ANONYMOUS
    if not settings.enabled:
        return ANONYMOUS
    return sessions.current(settings)


def bearer(header: str, settings: AuthSettings) -> Identity:
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise NotSignedIn("Send the token as 'Authorization: Bearer <token>'.")
    user = tokens.holder(value)
    if user is not None:
        return identity_of(user, TOKEN)
    if settings.oidc is not None and value.count(".") == 2:
        return identity_of(oidc.token_user(value, settings.oidc), JWT)
    raise NotSignedIn("The bearer token is not valid: unknown, expired or revoked.")
