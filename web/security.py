"""Security headers on every response, strict parsing of API form fields, and the
prediction rate limit that the upload page and the API share."""

from flask import current_app, request

from inference.errors import InvalidRequest

# No inline script or style anywhere: templates load static/js and static/css only.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "img-src 'self' data:",
    "script-src 'self'",
    "style-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])


# The page and the API run the same models: one budget per client covers both, so
# neither is a way around the other's limit.
PREDICT_LIMIT_SCOPE = "predict"


def predict_limit() -> str:
    return current_app.config["PREDICT_RATE_LIMIT"]


def add_security_headers(response):
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    if response.mimetype == "text/html":
        headers.setdefault("Cache-Control", "no-store")
    return response


def reject_repeated_api_fields():
    """A field sent twice is ambiguous (which image, which modality?): answer 400.

    Registered on the API blueprint only: the pages' forms are parsed by WTForms, which
    takes the first value. Reading the form here also applies the body size limit
    (413) early.
    """
    if request.method != "POST":
        return None
    if request.mimetype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return None
    for fields in (request.files, request.form):
        for name in fields:
            if len(fields.getlist(name)) > 1:
                raise InvalidRequest(f"The field '{name[:40]}' was sent more than once: "
                                     "send each field once.")
    return None
