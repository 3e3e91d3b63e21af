"""The export to the Audit Record Repository as a loop every worker runs."""

from __future__ import annotations

from .outbox import ExportSettings, deliver
from .syslog import AuditDeliveryError


def register_audit_tasks(queue, app, settings: ExportSettings) -> None:
    """With a repository configured, every worker sends each ``interval_s``; the
    cursor's hold keeps it to one sender at a time."""
    if settings.target is None:
        return

    def export() -> int:
        with app.app_context():
            try:
                return deliver(settings)
            except AuditDeliveryError:  # said by deliver, and retried when it says
                return 0

    queue.every("audit-export", settings.interval_s, export)
