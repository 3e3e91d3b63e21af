"""What can go wrong with a request, said for the person who sent it.

The service layer raises these and knows nothing of HTTP: the web edge
(``web/errors.py``) maps each class to a status and an error code, so no route needs
its own try/except ladder and the CLI and training tools share the same errors.
"""


class ServiceError(Exception):
    """Base class: ``message`` is shown to the user as it is."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidRequest(ServiceError):
    """A field is missing, repeated or not one of its allowed values."""


class UnsupportedImage(ServiceError):
    """The file is not an image format the app can decode."""


class UnusableImage(ServiceError):
    """The image decodes but cannot be analysed: empty, too many pixels, no pixel data."""


class ModelUnavailable(ServiceError):
    """The chosen model is not installed or cannot load."""


class ModelNotFound(InvalidRequest):
    """No installed model goes by that name (the inference protocol answers 404)."""
