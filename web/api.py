"""JSON API: ``/api/v1/models``, ``/api/v1/predict``, ``/api/v1/openapi.json``."""

from flask import Blueprint, jsonify, request

from extensions import limiter
from inference.errors import InvalidRequest

from .openapi import openapi_document
from .security import PREDICT_LIMIT_SCOPE, predict_limit, reject_repeated_api_fields
from .services import inference_service

bp = Blueprint("api", __name__, url_prefix="/api/v1")
bp.before_request(reject_repeated_api_fields)


TRUE_VALUES, FALSE_VALUES = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


def flag(name: str) -> bool:
    """A yes/no form field (``explain=1``); anything unclear is a 400, not a guess."""
    value = (request.form.get(name) or "").strip().lower()
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    raise InvalidRequest(f"The field '{name}' must be 1 or 0.")


@bp.get("/models")
def list_models():
    return jsonify({"models": inference_service().describe()})


@bp.post("/predict")
@limiter.shared_limit(predict_limit, scope=PREDICT_LIMIT_SCOPE)
def predict():
    upload = request.files.get("image")
    if upload is None:
        found = "" if request.files else "No file was found in the request. "
        raise InvalidRequest(found + "Send the image as a multipart/form-data file field "
                             "named 'image', with a UTF-8 file name.")
    explain = flag("explain")
    _, prediction = inference_service().analyse(
        upload.read(), request.form.get("modality"), request.form.get("model"),
        filename=upload.filename, explain=explain)
    return jsonify(prediction.to_json())


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document())
