"""Gunicorn's access log, redacted: the request line loses study ids, DICOM UIDs and
file names (the record factory of ``web.redaction`` redacts the rest of every log)."""

from __future__ import annotations

from gunicorn.glogging import Logger

from .redaction import install, redact


class RedactingLogger(Logger):
    """The standard access log, with identifiers in the request line replaced."""

    def setup(self, cfg):
        install()  # the master's own lines too, before any app is made
        super().setup(cfg)

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "q", "f"):
            atoms[key] = redact(atoms.get(key))
        return atoms
