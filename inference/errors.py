"""Errors that carry the HTTP status and a user-facing message.

The service layer raises these; the API turns them into JSON and the pages into a
friendly error page, so no route needs its own try/except ladder.
"""


class ServiceError(Exception):
    """Base class: ``status`` and ``code`` travel to the client, ``message`` is shown."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidRequest(ServiceError):
    status = 400
    code = "invalid_request"


class UnsupportedImage(ServiceError):
    status = 415
    code = "unsupported_media_type"


class UnusableImage(ServiceError):
    status = 422
    code = "unprocessable_image"


class ModelUnavailable(ServiceError):
    status = 503
    code = "model_unavailable"
