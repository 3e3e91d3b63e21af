"""Signed-in sessions, kept in Flask's signed session cookie.

A session holds the account id, a fresh random id (so signing in always makes a new
cookie: nothing set before sign-in carries over), when it began and when it was last
used. It ends when idle for ``SESSION_IDLE_MINUTES``, after ``SESSION_MAX_HOURS`` in
all, when the account is disabled, or when the account signs out (which ends every
session of that account, so a copied cookie dies with it).
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


def start(user: User, via: str) -> None:
    session.clear()
    now = time.time()
    session.update(uid=user.id, sid=secrets.token_urlsafe(16), via=via, login_at=now,
                   seen_at=now)
    session.permanent = True


def end() -> None:
    """Sign out: this cookie, and every session the account opened until now."""
    user = db.session.get(User, session.get("uid")) if session.get("uid") else None
    if user is not None:
        user.signed_out_at = time.time()
        db.session.commit()
    session.clear()


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
