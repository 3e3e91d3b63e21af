"""Signed-in sessions, kept in Flask's signed session cookie.

A session holds the account id, a fresh random id (so signing in always makes a new
cookie: nothing set before sign-in carries over), when it began and when it was last
used, and for a provider's sign-in its ID token (the hint that ends the provider's
session at sign-out; it names the account, never a patient). It ends when idle for
``SESSION_IDLE_MINUTES``, after ``SESSION_MAX_HOURS`` in all, when the account is
disabled, or when the account signs out (which ends every session of that account, so
a copied cookie dies with it).
"""

from __future__ import annotations

import secrets
import time

from flask import has_request_context, request, session
from flask.sessions import SecureCookieSessionInterface

from extensions import db

from .identity import ANONYMOUS, SESSION, Identity, identity_of
from .models import User
from .settings import AuthSettings

TOUCH_EVERY_S = 30  # the last-seen time is rewritten at most this often
ID_TOKEN = "id_token"
# A browser drops a cookie over 4 KB, which would end the session at once: a longer ID
# token is not kept, and sign-out at the provider then names only the client.
MAX_ID_TOKEN_CHARS = 2048


def start(user: User, via: str, id_token: str | None = None) -> None:
    session.clear()
    now = time.time()
    session.update(uid=user.id, sid=secrets.token_urlsafe(16), via=via, login_at=now,
                   seen_at=now)
    if id_token and len(id_token) <= MAX_ID_TOKEN_CHARS:
        session[ID_TOKEN] = id_token
    session.permanent = True


def end() -> tuple[str | None, str | None]:
    """Sign out: this cookie, and every session the account opened until now. How the
    session signed in (None: it was not signed in) and its ID token, if one was kept
    (to end the provider's session too)."""
    signed_in = isinstance(session.get("uid"), int)
    via, id_token = (session.get("via"), session.get(ID_TOKEN)) if signed_in else (None, None)
    user = db.session.get(User, session.get("uid")) if session.get("uid") else None
    if user is not None:
        user.signed_out_at = time.time()
        db.session.commit()
    session.clear()
    return via, id_token


def current(settings: AuthSettings) -> Identity:
    uid = session.get("uid")
    if not isinstance(uid, int):
        return ANONYMOUS
    now = time.time()
    login_at, seen_at = float(session.get("login_at", 0)), float(session.get("seen_at", 0))
    user = db.session.get(User, uid)
    if (now - seen_at > settings.idle_minutes * 60 or now - login_at > settings.max_hours * 3600
            or user is None or user.disabled
            or (user.signed_out_at is not None and login_at <= user.signed_out_at)):
        session.clear()
        return ANONYMOUS
    if now - seen_at > TOUCH_EVERY_S:
        session["seen_at"] = now
    return identity_of(user, SESSION)


class SessionCookies(SecureCookieSessionInterface):
    """The session cookie is Secure whenever the site is reached over HTTPS: with
    ``PREFER_HTTPS``, or when the request came in over HTTPS (through a trusted proxy's
    X-Forwarded-Proto)."""

    def get_cookie_secure(self, app) -> bool:
        if super().get_cookie_secure(app) or app.config.get("PREFER_HTTPS"):
            return True
        return has_request_context() and request.is_secure
