"""``flask contact list [--json]`` and ``flask contact forward``."""

import json
import re

import click
from flask.cli import AppGroup
from sqlalchemy import select

from extensions import db

from .mailer import forward_pending, smtp_configured
from .models import ContactMessage

# C0/C1 control characters (ESC starts terminal escape sequences), except tab and newline.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(value) -> str:
    """Visitors' text, safe for an operator's terminal: control characters shown escaped."""
    return CONTROL_CHARACTERS.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


contact_cli = AppGroup("contact", help="Read and forward contact messages.")


@contact_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_messages(as_json: bool):
    """Print the stored messages, oldest first."""
    rows = db.session.scalars(select(ContactMessage).order_by(ContactMessage.id)).all()
    if as_json:
        click.echo(json.dumps([row.to_json() for row in rows], indent=2))
        return
    if not rows:
        click.echo("No messages.")
    for row in rows:
        state = "forwarded" if row.forwarded_at else "stored"
        click.echo(printable(f"#{row.id} {row.created_at:%Y-%m-%d %H:%M} [{row.category}] "
                             f"{row.subject} - {row.name} <{row.email}> ({state})"))
        # Continuation lines stay indented: a message cannot fake another entry.
        click.echo(printable("    " + row.message.replace("\n", "\n    ")))


@contact_cli.command("forward")
def forward():
    """Forward stored messages now, including those waiting for a retry or given up on."""
    if not smtp_configured():
        raise click.ClickException("SMTP is not configured (FLASK_MAIL_SERVER, "
                                   "FLASK_CONTACT_RECIPIENT).")
    sent, failed = forward_pending(limit=1000, force=True)
    click.echo(f"forwarded {sent}, failed {failed}")
