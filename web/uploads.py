"""Request class that keeps multipart file parts in memory.

Werkzeug spools a file part over 500 KB into an unnamed temporary file. Uploads here
are medical images and must never touch the disk, and the whole body is already
bounded by ``MAX_CONTENT_LENGTH``, so memory is the right place for them.
"""

from __future__ import annotations

import io
import typing as t

from flask import Request


class InMemoryUploadRequest(Request):
    """A ``flask.Request`` whose uploaded files live in ``BytesIO`` buffers."""

    def _get_file_stream(self, total_content_length: int | None,
                         content_type: str | None, filename: str | None = None,
                         content_length: int | None = None) -> t.IO[bytes]:
        return io.BytesIO()
