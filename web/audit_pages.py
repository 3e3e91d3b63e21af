"""``/admin/audit``: the audit trail for admins, filtered, and its CSV export (which is
itself recorded)."""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, Response, render_template, request

from audit import actions, trail
from audit.outbox import backlog
from audit.query import Filters, events, events_csv

from .access import actor
from .services import settings

bp = Blueprint("audit_pages", __name__, url_prefix="/admin")


def moment(name: str) -> tuple[datetime | None, str | None]:
    """A filter's time (ISO 8601, UTC), or the reason it was not understood."""
    text = (request.args.get(name) or "").strip()
    if not text:
        return None, None
    try:
        value = datetime.fromisoformat(text.removesuffix("Z"))
    except ValueError:
        return None, f"'{name}' is not a date and time such as 2026-12-04T09:30."
    return value.replace(tzinfo=None), None


def filters_from_request() -> tuple[Filters, list[str]]:
    since, since_problem = moment("since")
    until, until_problem = moment("until")
    text = {key: (request.args.get(key) or "").strip()[:128] or None
            for key in ("user", "action", "study")}
    return Filters(since=since, until=until, **text), [p for p in (since_problem,
                                                                    until_problem) if p]


@bp.get("/audit")
def audit_list():
    filters, problems = filters_from_request()
    shown = events(filters) if not problems else []
    export = backlog() if settings().audit.target is not None else None
    return render_template("admin_audit.html", events=shown, filters=filters,
                           actions=actions.ALL, problems=problems, export=export,
                           query=request.query_string.decode("ascii", "replace")), \
        400 if problems else 200


@bp.get("/audit.csv")
def audit_csv():
    filters, problems = filters_from_request()
    if problems:
        return Response(" ".join(problems) + "\n", status=400, mimetype="text/plain")
    trail.record_now(actions.EXPORTED, actor(), format="audit-csv",
                     filters={k: str(v) for k, v in vars(filters).items() if v})
    return Response(events_csv(filters), mimetype="text/csv", headers={
        "Content-Disposition": 'attachment; filename="audit.csv"',
        "Cache-Control": "no-store"})
