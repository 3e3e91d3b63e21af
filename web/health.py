"""Liveness and readiness probes."""

import os

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

from extensions import db, limiter

from .services import settings

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@limiter.exempt
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
@limiter.exempt
def readyz():
    checks = {}
    try:
        db.session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any driver error means "not ready"
        db.session.rollback()
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        current_app.extensions["job_queue"].huey.pending_count()  # a read of the queue
        checks["broker"] = "ok"
    except Exception as exc:  # noqa: BLE001 - Redis down, queue file unreadable
        checks["broker"] = f"error: {type(exc).__name__}"
    model_dir = settings().inference.model_dir
    checks["model_dir"] = "ok" if os.path.isdir(model_dir) and os.access(model_dir, os.R_OK) \
        else "missing or unreadable"
    ready = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ok" if ready else "unavailable", "checks": checks}), \
        (200 if ready else 503)
