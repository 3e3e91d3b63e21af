"""One redaction for every log line the tool writes: no study id, no DICOM UID and no
uploaded file name reaches a log.

It is installed as the logging record factory, so it covers every logger of the
process (the app's, gunicorn's error and access logs, Huey's, Werkzeug's) whatever its
handlers: each record's message and traceback are rendered and redacted as the record
is made.
"""

from __future__ import annotations

import logging
import re
import traceback

# A study id (secrets.token_urlsafe(24): exactly 32 URL-safe characters), anywhere.
STUDY_ID = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{32}(?![A-Za-z0-9_-])")
# A DICOM UID: dotted numbers, five parts or more (an IPv4 address has four).
DICOM_UID = re.compile(r"(?<![0-9.])[0-2](?:\.[0-9]{1,20}){4,}(?![0-9])")
# A file name with an image or archive suffix, as uploads have.
FILE_NAME = re.compile(r"[^\s/\\'\"<>=&?:]+\.(?:dcm|dicom|dic|ima|png|jpe?g|tiff?|bmp|gif|"
                       r"webp|zip)\b", re.IGNORECASE)
PATTERNS = ((STUDY_ID, "<study>"), (DICOM_UID, "<uid>"), (FILE_NAME, "<file>"))

_installed = False


def redact(text: str | None) -> str | None:
    if not text:
        return text
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def install() -> None:
    """Redact every log record made in this process from now on (once per process)."""
    global _installed
    if _installed:
        return
    make_record = logging.getLogRecordFactory()

    def redacted_record(*args, **kwargs) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed call: keep what it said, redacted
            message = f"{record.msg} {record.args}"
        record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    logging.setLogRecordFactory(redacted_record)
    _installed = True
