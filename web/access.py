"""The door: who is asking (``g.identity``), checked against the policy table before
every request; the study rule that follows from it; and the headers that a signed-in
site needs (no caching of what a person saw, HSTS over HTTPS)."""

from __future__ import annotations

from flask import Flask, g, request

from audit.trail import Actor
from auth.caller import caller
from auth.errors import AuthNotConfigured, NotSignedIn
from auth.identity import ANONYMOUS, Identity
from auth.policy import OPEN, POLICY, PUBLIC, check, unruled
from studies.access import StudyAccess

from .services import settings

HSTS = "max-age=31536000; includeSubDomains"
# The programs' APIs: bearer tokens only for a state change, never cached.
API_PREFIXES = ("/api/", "/v2/")


def identify_and_check() -> None:
    auth = settings().auth
    if request.endpoint is None:  # no such route: 404 or 405 as ever
        g.identity = ANONYMOUS
        return
    # require_rules refused to start with an unruled route; one added to a running app
    # (only tests do) is held to the OPEN rule.
    rule = POLICY.get(request.endpoint, OPEN)
    try:
        g.identity = caller(auth, request.headers.get("Authorization"),
                            request.path.startswith(API_PREFIXES), request.method)
    except NotSignedIn:
        if rule != PUBLIC:
            raise
        g.identity = ANONYMOUS  # a stale token does not lock anyone out of /login
    check(rule, g.identity, auth.public_access)


def current_identity() -> Identity:
    return g.get("identity", ANONYMOUS)


def actor() -> Actor:
    """The caller as the audit trail records them: account, role, how they proved it,
    and the address they came from."""
    who = current_identity()
    return Actor(who.user_id, who.name or "anonymous", who.role, who.method,
                 request.remote_addr)


def study_access() -> StudyAccess:
    who = current_identity()
    return StudyAccess(user_id=who.user_id, sees_everything=who.is_admin,
                       reads_pacs=who.reads_pacs, actor=actor())


def identity_headers(response):
    """No cache keeps an API answer or a page a signed-in person saw; browsers that came
    over HTTPS are told to keep to it."""
    if request.path.startswith(API_PREFIXES) or current_identity().signed_in:
        response.headers["Cache-Control"] = "no-store"
    if settings().auth.prefer_https or request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", HSTS)
    return response


def require_rules(app: Flask) -> None:
    """Refuse to start with a route that the policy table has no rule for."""
    missing = unruled(rule.endpoint for rule in app.url_map.iter_rules())
    if missing:
        raise AuthNotConfigured("These routes have no rule in auth/policy.py: "
                                + ", ".join(missing))


def register_door(app: Flask) -> None:
    app.before_request(identify_and_check)
    app.after_request(identity_headers)

    @app.context_processor
    def signed_in_user():
        return {"identity": current_identity(), "auth_methods": settings().auth.methods}
