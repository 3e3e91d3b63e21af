"""Error responses: JSON under /api, a friendly page elsewhere, never a stack trace."""

from __future__ import annotations

import logging
import traceback

from flask import (Flask, Response, current_app, jsonify, make_response, redirect,
                   render_template, request, url_for)
from flask_wtf.csrf import CSRFError
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException, SecurityError

from auth.errors import (AccountError, Forbidden, NotSignedIn, ProviderUnavailable,
                         SignInFailed)
from extensions import db
from inference.errors import (InvalidRequest, ModelUnavailable, ServiceError, UnsupportedImage,
                              UnusableImage)
from pacs.client import PacsError, PacsNotConfigured, PacsTimeout
from pacs.service import NothingToRetry
from studies.errors import StudyNotFound, StudyTooLarge, UnsafeArchive

log = logging.getLogger(__name__)

OPERATIONAL = (OperationalError, InterfaceError)  # the database went away, not a bad query

# Domain errors as HTTP answers them: (status, code). The inference layer knows nothing
# of HTTP; a subclass without its own row answers as its nearest listed ancestor.
DOMAIN_ERRORS: dict[type[ServiceError], tuple[int, str]] = {
    ServiceError: (500, "internal_error"),
    InvalidRequest: (400, "invalid_request"),
    UnsupportedImage: (415, "unsupported_media_type"),
    UnusableImage: (422, "unprocessable_image"),
    ModelUnavailable: (503, "model_unavailable"),
    StudyTooLarge: (413, "study_too_large"),
    UnsafeArchive: (422, "unsafe_archive"),
    StudyNotFound: (404, "not_found"),
    PacsError: (502, "pacs_unavailable"),
    PacsTimeout: (504, "pacs_timeout"),
    PacsNotConfigured: (503, "pacs_not_configured"),
    NothingToRetry: (409, "nothing_to_retry"),
    NotSignedIn: (401, "unauthenticated"),
    SignInFailed: (401, "unauthenticated"),
    Forbidden: (403, "forbidden"),
    AccountError: (400, "invalid_request"),
    ProviderUnavailable: (503, "identity_provider_unavailable"),
}
REALM = 'Bearer realm="lungscan"'

_HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "rate_limited",
    500: "internal_error",
}


def status_and_code(exc: ServiceError) -> tuple[int, str]:
    """(HTTP status, error code) for a domain error, from the nearest class in its MRO."""
    for cls in type(exc).__mro__:
        if cls in DOMAIN_ERRORS:
            return DOMAIN_ERRORS[cls]
    return DOMAIN_ERRORS[ServiceError]


def wants_json() -> bool:
    return request.path.startswith(("/api/", "/v2/"))


def error_response(status: int, code: str, message: str):
    """The one place that shapes an error, for the API and for the pages."""
    if wants_json():
        response = jsonify({"error": {"code": code, "message": message}})
        response.status_code = status
        return response
    return render_template("error.html", status=status, message=message), status


def _http_message(exc: HTTPException) -> str:
    if exc.code == 413:
        return "The upload is larger than this server accepts."
    if exc.code == 429:
        return f"Too many requests: the limit is {exc.description}. Try again shortly."
    if exc.code == 400 and isinstance(exc, CSRFError):
        return "The form expired or was not sent from this site. Reload the page and retry."
    if exc.code == 400:
        return "The request could not be understood."
    return exc.description or exc.name


def stack_without_messages(exc: BaseException) -> str:
    """Where it failed, not what with: exception messages can quote the upload's bytes
    (decoders do) or a contact message, and neither may reach the logs."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(f"{type(exc).__module__}.{type(exc).__qualname__}, at:\n"
                     + "".join(traceback.format_tb(exc.__traceback__)))
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return "\ncaused by ".join(parts)


def not_signed_in(exc: NotSignedIn):
    """A page sends the visitor to sign in (and back); the API answers 401 with the
    scheme to use."""
    bearer = request.headers.get("Authorization")
    if not wants_json() and request.method == "GET" and not bearer and \
            current_app.extensions["settings"].auth.methods:
        return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
    response = error_response(401, "unauthenticated", exc.message)
    if wants_json() or bearer:
        response = make_response(response)
        response.headers["WWW-Authenticate"] = (
            f'{REALM}, error="invalid_token"' if bearer else REALM)
    return response


def route() -> str:
    """The route's rule (``/studies/<study_id>``), never the path that filled it in."""
    return request.url_rule.rule if request.url_rule is not None else "(no route)"


def register(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError):
        return error_response(*status_and_code(exc), exc.message)

    app.register_error_handler(NotSignedIn, not_signed_in)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if isinstance(exc, SecurityError):  # a Host not in TRUSTED_HOSTS: no URL can be built
            return Response("This site does not answer to that host name.\n", 400,
                            mimetype="text/plain")
        status = exc.code or 500
        return error_response(status, _HTTP_CODES.get(status, exc.name.lower().replace(" ", "_")),
                              _http_message(exc))

    @app.errorhandler(DBAPIError)
    def database_unavailable(exc: DBAPIError):
        if not exc.connection_invalidated and not isinstance(exc, OPERATIONAL):
            return unexpected_error(exc)
        try:
            db.session.rollback()
        except Exception as again:  # noqa: BLE001 - the answer must not become a bare 500
            log.warning("rollback after a database error failed: %s", type(again).__name__)
        log.warning("database unavailable on %s %s: %s", request.method, route(),
                    type(exc.orig).__name__)
        return error_response(503, "database_unavailable",
                              "The database is not answering just now: nothing was saved. "
                              "Try again in a moment.")

    @app.errorhandler(RedisError)
    def broker_unavailable(exc: RedisError):
        log.warning("Redis unavailable on %s %s: %s", request.method, route(),
                    type(exc).__name__)
        return error_response(503, "service_unavailable",
                              "A service this site needs is not answering just now. Try "
                              "again in a moment.")

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception):
        log.error("unhandled error on %s %s\n%s", request.method, route(),
                  stack_without_messages(exc))
        return error_response(500, "internal_error",
                              "Something went wrong on our side. The error was logged.")
