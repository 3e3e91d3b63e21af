"""The OpenAPI 3.1 description of the JSON API."""

from inference.predict import DISCLAIMER
from inference.registry import ARCHITECTURES, MODALITIES

from .openapi_studies import study_paths, study_schemas


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": _ref("Error")}}}


def _predict_form() -> dict:
    """The multipart form ``/api/v1/predict`` reads."""
    return {
        "type": "object",
        "required": ["image", "modality"],
        "properties": {
            "image": {"type": "string", "format": "binary",
                      "description": "PNG, JPEG, BMP, TIFF or DICOM"},
            "modality": {"type": "string",
                         "enum": sorted(MODALITIES) + ["cxr"]},
            "model": {"type": "string", "default": "all",
                      "enum": sorted(ARCHITECTURES) + ["all"]},
            "explain": {"type": "string", "default": "0",
                        "enum": ["0", "1", "true", "false"],
                        "description": (
                            "1 adds each model's Grad-CAM heatmap for the "
                            "COVID class (heatmap_png) and its cost "
                            "(explain_ms); it costs about one more "
                            "forward pass per model")},
        },
    }


def _paths() -> dict:
    return {
        "/api/v1/models": {"get": {
            "summary": "Every model slot, installed or not",
            "responses": {"200": {"description": "Model list", "content": {
                "application/json": {"schema": _ref("ModelList")}}}},
        }},
        "/api/v1/predict": {"post": {
            "summary": "Classify one chest CT slice or X-ray",
            "requestBody": {"required": True, "content": {"multipart/form-data": {
                "schema": _predict_form()}}},
            "responses": {
                "200": {"description": "Verdicts", "content": {"application/json": {
                    "schema": _ref("Prediction")}}},
                "400": _error("Missing or unknown field"),
                "413": _error("Body over the size limit"),
                "415": _error("Not a readable image or DICOM file"),
                "422": _error("Readable but unusable: too many pixels, empty, no pixel data"),
                "429": _error("Rate limit exceeded"),
                "503": _error("The model is not installed or cannot be loaded"),
            },
        }},
    }


def _error_schema() -> dict:
    return {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}}


def _model_list_schema() -> dict:
    return {"type": "object", "properties": {"models": {
        "type": "array", "items": {"type": "object", "properties": {
            "modality": {"type": "string"}, "architecture": {"type": "string"},
            "available": {"type": "boolean"}, "loaded": {"type": "boolean"},
            "file": {"type": "string"},
            "classes": {"type": "array", "items": {"type": "string"}},
            "input_size": {"type": "array", "items": {"type": "integer"}},
            "preprocessing": {"type": "string"}, "metrics": {"type": "object"},
            "source": {"type": ["string", "null"],
                       "description": "Where `flask models install` took the file from"},
            "sha256": {"type": ["string", "null"],
                       "description": "SHA-256 of the file when it was installed"},
            "ood_profile": {"type": "boolean",
                            "description": "Whether a feature profile file for the "
                                           "out-of-distribution check is beside it"}}}}}}


def _result_schema() -> dict:
    return {"type": "object", "required": [
        "architecture", "label", "covid_probability", "confidence", "inference_ms"],
        "properties": {
            "architecture": {"type": "string"},
            "label": {"type": "string", "enum": ["COVID", "Non-COVID"]},
            "covid_probability": {"type": "number", "minimum": 0, "maximum": 1},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "inference_ms": {"type": "number"},
            "threshold": {"type": "number"},
            "heatmap_png": {
                "type": "string", "contentEncoding": "base64",
                "contentMediaType": "image/png",
                "description": "Only with explain=1: the Grad-CAM map of the COVID "
                               "class (jet colour map, opacity following the map) "
                               "over the image, at the upload's aspect ratio, at "
                               "most 512 pixels on the longer side"},
            "explain_ms": {"type": "number",
                           "description": "Only with explain=1: milliseconds the "
                                          "heatmap added to this result"},
            **_ood_properties()}}


def _ood_properties() -> dict:
    return {
        "ood_profile": {
            "type": "boolean",
            "description": "Whether the model has a feature profile of its training "
                           "images (`<stem>.profile.npz` beside it, made for these "
                           "bytes), so the out-of-distribution check was made"},
        "ood_distance": {
            "type": "number", "minimum": 0,
            "description": "Only with a profile: Mahalanobis distance of the image's "
                           "pooled last feature map from the training images'"},
        "ood_threshold": {
            "type": "number",
            "description": "Only with a profile: beyond this distance (the 99th "
                           "percentile of held-out training-distribution images) the "
                           "answer carries a warning that the image is unlike the "
                           "images the model was trained on"}}


def _ensemble_schema() -> dict:
    return {"type": "object", "properties": {
        "label": {"type": "string"},
        "covid_probability": {
            "type": "number",
            "description": "Mean of the models' COVID probabilities"},
        "agreement": {"type": "number"},
        "agreeing": {"type": "integer"},
        "total": {"type": "integer"},
        "margin": {
            "type": "number",
            "description": "Mean over models of (COVID probability - that model's "
                           "threshold); the label is COVID when it is >= 0"},
        "rule": {"type": "string", "enum": ["mean_margin"],
                 "description": "Stable id of the rule that gives the label"},
        "rule_description": {"type": "string"}},
        "description": "Only with more than one result: the combined verdict, each model "
                       "measured against its own threshold"}


def _prediction_schema() -> dict:
    return {"type": "object", "required": ["modality", "results", "warnings", "disclaimer"],
            "properties": {
                "modality": {"type": "string"},
                "results": {"type": "array", "items": _ref("Result")},
                "ensemble": _ensemble_schema(),
                "warnings": {
                    "type": "array", "items": {"type": "string"},
                    "description": "Reasons to doubt the result, never rejections: DICOM "
                                   "modality other than the chosen one, colour photograph, "
                                   "image far too small, almost blank image, frame chosen "
                                   "from a multi-frame file"},
                "disclaimer": {"type": "string"}}}


SECURITY_SCHEMES = {
    "personalToken": {
        "type": "http", "scheme": "bearer", "bearerFormat": "lst_...",
        "description": "A personal API token from `flask tokens create USER`."},
    "providerToken": {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "An access token from the site's identity provider (OpenID "
                       "Connect), for the audience OIDC_AUDIENCE."},
}
SIGNED_IN_ONLY = [{"personalToken": []}, {"providerToken": []}]


def signed_in_only(paths: dict) -> dict:
    """PACS operations are never anonymous: they declare the token schemes alone."""
    for path, operations in paths.items():
        if path.startswith("/api/v1/pacs/"):
            for operation in operations.values():
                operation["security"] = SIGNED_IN_ONLY
    return paths


def openapi_document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "COVID-19 CT and X-ray classifier API",
            "version": "1.0.0",
            "description": DISCLAIMER,
        },
        "paths": signed_in_only({**_paths(), **study_paths()}),
        # Anonymous calls are allowed where PUBLIC_ACCESS is true ({}), else either token.
        "security": [{}, {"personalToken": []}, {"providerToken": []}],
        "components": {"securitySchemes": SECURITY_SCHEMES, "schemas": {
            "Error": _error_schema(),
            "ModelList": _model_list_schema(),
            "Result": _result_schema(),
            "Prediction": _prediction_schema(),
            **study_schemas(),
        }},
    }
