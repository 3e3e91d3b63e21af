"""The Open Inference Protocol (KServe / Triton "v2") over REST, for tritonclient and
the like: ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/<name>``,
``/v2/models/<name>/ready`` and ``/v2/models/<name>/infer`` (JSON tensors only).

Errors answer in the protocol's shape, ``{"error": "message"}``, not the
``{"error": {"code", "message"}}`` of ``/api/v1``: protocol clients read that one. The
door's refusals (401, 403) are the app's own (web/errors.py), with its API shape and
``WWW-Authenticate`` header, as on every other API route; as there, a session cookie
never authorises a POST (web/access.py's API_PREFIXES).
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from werkzeug.exceptions import HTTPException

from auth.errors import Forbidden, NotSignedIn
from extensions import csrf, limiter
from inference import protocol
from inference.errors import InvalidRequest, ModelNotFound, ServiceError

from .errors import error_response, not_signed_in, status_and_code
from .security import PREDICT_LIMIT_SCOPE, predict_limit
from .services import inference_service

bp = Blueprint("inference_protocol", __name__, url_prefix="/v2")
csrf.exempt(bp)  # a JSON API for programs, as /api/v1: no form, no CSRF token


@bp.get("/health/live")
@limiter.exempt
def live():
    return jsonify({"live": True})


@bp.get("/health/ready")
@limiter.exempt
def ready():
    protocol.check_server_ready(inference_service().entries())
    return jsonify({"ready": True})


@bp.get("/models/<name>")
def model_metadata(name: str):
    return jsonify(protocol.metadata(protocol.usable_model(inference_service().entries(), name)))


@bp.get("/models/<name>/ready")
def model_ready(name: str):
    service = inference_service()
    protocol.ready_model(service.entries(), name, service.cache.loaded_model)
    return jsonify({"name": name, "ready": True})


@bp.post("/models/<name>/infer")
@limiter.shared_limit(predict_limit, scope=PREDICT_LIMIT_SCOPE)
def infer(name: str):
    service = inference_service()
    entry = protocol.usable_model(service.entries(), name)
    check_json_only()
    wanted = protocol.parse_request(protocol.parse_body(request.get_data(cache=False)),
                                    entry.card)
    outputs = service.load(entry).run_batch(wanted.batch)
    return jsonify(protocol.response(entry, wanted, outputs))


def check_json_only() -> None:
    """The body is one JSON document, uncompressed (the binary-tensor and compression
    extensions are not served). Its size is bounded by ``MAX_CONTENT_LENGTH`` (413)."""
    if request.headers.get("Inference-Header-Content-Length") is not None:
        raise InvalidRequest(protocol.BINARY_UNSUPPORTED)
    if (request.content_encoding or "identity").lower() != "identity":
        raise InvalidRequest("Compressed request bodies are not accepted: send plain JSON.")


def protocol_error(status: int, message: str):
    response = jsonify({"error": message})
    response.status_code = status
    return response


@bp.errorhandler(ServiceError)
def service_error(exc: ServiceError):
    status, code = status_and_code(exc)
    if isinstance(exc, NotSignedIn):
        return not_signed_in(exc)
    if isinstance(exc, Forbidden):
        return error_response(status, code, exc.message)
    return protocol_error(404 if isinstance(exc, ModelNotFound) else status, exc.message)


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException):
    if exc.code == 413:
        message = "The request body is larger than this server accepts."
    elif exc.code == 429:
        message = f"Too many requests: the limit is {exc.description}. Try again shortly."
    else:
        message = exc.description or exc.name
    return protocol_error(exc.code or 500, message)
