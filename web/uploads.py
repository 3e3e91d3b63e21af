"""Request class that keeps multipart file parts in memory.

Werkzeug spools a file part over 500 KB into an unnamed temporary file. Uploads here
are medical images and must never touch the disk, and the whole body is already
bounded by ``MAX_CONTENT_LENGTH``, so memory is the right place for them.
"""

from __future__ import annotations

import io
import typing as t

from flask import Request, request

from .services import settings


class InMemoryUploadRequest(Request):
    """A ``flask.Request`` whose uploaded files live in ``BytesIO`` buffers."""

    def _get_file_stream(self, total_content_length: int | None,
                         content_type: str | None, filename: str | None = None,
                         content_length: int | None = None) -> t.IO[bytes]:
        return io.BytesIO()


# Where a whole study is uploaded (the API and the page's form).
STUDY_UPLOAD_ENDPOINTS = {"studies_api.submit", "study_pages.submit"}
FORM_PARTS_SLACK = 16  # the form's own fields besides the images
BODY_SLACK = 1024 * 1024  # multipart headers around MAX_STUDY_BYTES of images


def allow_study_sized_bodies() -> None:
    """A study's body may be far larger than one image's (``MAX_STUDY_BYTES``, one part
    per image). Registered before CSRF protection, which is the first to read a form."""
    if request.endpoint in STUDY_UPLOAD_ENDPOINTS:
        limits = settings().studies.limits
        request.max_content_length = limits.max_bytes + BODY_SLACK
        request.max_form_parts = limits.max_images + FORM_PARTS_SLACK
