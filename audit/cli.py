"""``flask audit verify``: walk the trail and say where its hash chain breaks.
``flask audit send``: send the repository what it has not read, now."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from settings import settings_of

from .outbox import backlog, deliver, due_now
from .query import check_trail
from .syslog import AuditDeliveryError

audit_cli = AppGroup("audit", help="The audit trail: check it, send it to the repository.")


@audit_cli.command("verify")
def verify_command():
    """Exit 0 if every row is as written, in order, with none missing; else name each
    row where the chain breaks and exit 1."""
    verdict = check_trail()
    for problem in verdict.problems:
        click.echo(problem, err=True)
    if not verdict.intact:
        raise click.exceptions.Exit(1)
    click.echo(f"The audit trail is intact: {verdict.checked} rows.")


@audit_cli.command("send")
def send_command():
    """Send the Audit Record Repository (AUDIT_SYSLOG_URL) every event it has not read
    yet, without waiting for the next retry; exit 1 if it did not take them."""
    settings = settings_of(current_app).audit
    if settings.target is None:
        raise click.ClickException("No repository is configured: set AUDIT_SYSLOG_URL.")
    due_now()
    try:
        sent = deliver(settings, rounds=1_000_000)
    except AuditDeliveryError as exc:
        raise click.ClickException(f"The repository did not take the events: {exc}") from exc
    waiting = backlog().waiting
    click.echo(f"Sent {sent} events; {waiting} waiting"
               + (" (another worker is sending them)." if waiting else "."))
