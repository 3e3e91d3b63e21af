"""The studies part of the OpenAPI document: submit, progress and results, CSV, delete."""

from inference.registry import ARCHITECTURES, MODALITIES


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": _ref("Error")}}}


ID_PARAMETER = {"name": "study_id", "in": "path", "required": True,
                "schema": {"type": "string"},
                "description": "The random id from the 202 answer: the only key to the study"}


def _submit_form() -> dict:
    binary = {"type": "string", "format": "binary"}
    return {"type": "object", "required": ["modality"], "properties": {
        "images": {"type": "array", "items": binary,
                   "description": "One or more images (PNG, JPEG, BMP, TIFF or DICOM); "
                                  "repeat the field"},
        "archive": {**binary, "description": "Or one .zip of them (folders allowed; "
                                             "DICOMDIR, README and dot files are skipped)"},
        "modality": {"type": "string", "enum": sorted(MODALITIES) + ["cxr"]},
        "model": {"type": "string", "default": "all",
                  "enum": sorted(ARCHITECTURES) + ["all"]},
        "explain": {"type": "string", "default": "0", "enum": ["0", "1"],
                    "description": "1 keeps each image's Grad-CAM heatmap per model"}}}


def study_paths() -> dict:
    one = "/api/v1/studies/{study_id}"
    return {
        "/api/v1/studies": {"post": {
            "summary": "Submit many images (a CT series, a set of X-rays) as one study",
            "requestBody": {"required": True, "content": {"multipart/form-data": {
                "schema": _submit_form()}}},
            "responses": {
                "202": {"description": "Stored and queued; poll the Location",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "content": {"application/json": {"schema": {
                            "type": "object", "properties": {
                                "id": {"type": "string"}, "url": {"type": "string"},
                                "status": {"type": "string", "enum": ["queued"]}}}}}},
                "400": _error("Missing, repeated or unknown field"),
                "413": _error("Over MAX_STUDY_IMAGES, MAX_STUDY_BYTES or the archive "
                              "entry limit"),
                "415": _error("The archive is not a readable .zip"),
                "422": _error("Unsafe archive (nested archive, climbing or absolute "
                              "path, zip bomb) or no readable image in it"),
                "429": _error("Rate limit exceeded"),
                "503": _error("The model is not installed or cannot be loaded")}}},
        one: {"parameters": [ID_PARAMETER],
              "get": {"summary": "Progress, then each image's answer and the verdict",
                      "parameters": [{"name": "images", "in": "query", "required": False,
                                      "schema": {"type": "string", "enum": ["0", "1"]},
                                      "description": "0 leaves the images out: a cheap "
                                                     "progress poll"}],
                      "responses": {"200": {"description": "The study", "content": {
                          "application/json": {"schema": _ref("Study")}}},
                          "404": _error("Unknown, expired or deleted id")}},
              "delete": {"summary": "Delete the study and every trace of it",
                         "responses": {"204": {"description": "Deleted"},
                                       "404": _error("Unknown, expired or deleted id")}}},
        one + "/results.csv": {"parameters": [ID_PARAMETER], "get": {
            "summary": "One row per image and model",
            "responses": {"200": {"description": "CSV", "content": {"text/csv": {}}},
                          "404": _error("Unknown, expired or deleted id")}}},
        one + "/write-back": _retry_write_back_path(),
    }


def _retry_write_back_path() -> dict:
    return {"parameters": [ID_PARAMETER], "post": {
        "summary": "Retry a failed PACS write-back now (analyst or admin)",
        "responses": {
            "202": {"description": "Queued again: the study's write-back status",
                    "headers": {"Location": {"schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": {
                        "type": "object", "properties": {
                            "id": {"type": "string"}, "url": {"type": "string"},
                            "write_back": _write_back_schema()}}}}},
            "401": _error("No bearer token (a session cookie does not count)"),
            "403": _error("Not an analyst or admin"),
            "404": _error("Unknown, expired or deleted id, or not one you may open"),
            "409": _error("Nothing to retry: not a PACS study, still running or "
                          "writing, already written, or write-back off")}}}


def _image_schema() -> dict:
    return {"type": "object", "properties": {
        "index": {"type": "integer", "description": "Reading order"},
        "name": {"type": "string"},
        "series_uid": {"type": ["string", "null"]},
        "instance_number": {"type": ["integer", "null"]},
        "status": {"type": "string", "enum": ["pending", "done", "failed"]},
        "results": {"type": "array", "items": _ref("Result")},
        "combined": {"type": "object", "description": "With several models: the mean "
                                                      "margin rule of the single-image API"},
        "covid_probability": {"type": ["number", "null"]},
        "positive": {"type": ["boolean", "null"]},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "error": {"type": "object", "description": "Why this image could not be analysed"}}}


def _verdict_schema() -> dict:
    return {"type": "object", "properties": {
        "label": {"type": "string", "enum": ["COVID", "Non-COVID"]},
        "covid_probability": {"type": "number",
                              "description": "Mean COVID probability over the images"},
        "positive_images": {"type": "integer"}, "total_images": {"type": "integer"},
        "positive_share": {"type": "number"}, "longest_positive_run": {"type": "integer"},
        "rule": {"type": "string", "description": "The rule, in words"},
        "rule_id": {"type": "string", "enum": ["consecutive_or_share"]},
        "rule_parameters": {"type": "object"}}}


def study_schemas() -> dict:
    return {"Study": {"type": "object", "required": ["id", "status", "progress"],
                      "properties": {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
        "progress": {"type": "object", "properties": {"done": {"type": "integer"},
                                                      "total": {"type": "integer"}}},
        "modality": {"type": "string"}, "model": {"type": "string"},
        "models": {"type": "array", "items": {"type": "object"}},
        "images": {"type": "array", "items": _image_schema()},
        "verdict": _verdict_schema(),
        "warnings": {"type": "array", "items": {"type": "string"}},
        "error": {"type": "object", "description": "Only when failed: code and message",
                  "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
        "write_back": _write_back_schema(),
        "disclaimer": {"type": "string"}}}}


def _write_back_schema() -> dict:
    return {"type": "object", "description": "PACS studies only: the answer's write-back "
            "into the PACS study (failed tries are retried with back-off; `flask pacs "
            "write-back ID` writes it at once)",
            "properties": {
                "status": {"type": "string",
                           "enum": ["written", "pending", "retrying", "failed", "off"],
                           "description": "pending: the study is running or its write is "
                                          "queued; failed: no automatic tries left; off: "
                                          "finished while write-back was off"},
                "attempts": {"type": "integer", "description": "Failed tries so far"},
                "error": {"type": ["string", "null"],
                          "description": "The last failure (names the PACS by "
                                         "scheme://host:port only)"},
                "next_try": {"type": ["string", "null"], "format": "date-time",
                             "description": "When a retrying write-back is tried again"}}}
