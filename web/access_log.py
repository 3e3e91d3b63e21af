"""Gunicorn's access log without study ids: the id is the only key to a study's
results, so a log line must not hand it to whoever reads the logs."""

from __future__ import annotations

import re

from gunicorn.glogging import Logger

STUDY_ID_IN_PATH = re.compile(r"(/studies/)[A-Za-z0-9_-]{16,}")


def redact(path: str | None) -> str | None:
    return STUDY_ID_IN_PATH.sub(r"\1<id>", path) if path else path


class RedactingLogger(Logger):
    """The standard access log, with study ids in the request line replaced."""

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "f"):
            atoms[key] = redact(atoms.get(key))
        return atoms
