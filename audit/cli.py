"""``flask audit verify``: walk the trail and say where its hash chain breaks."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from .query import check_trail

audit_cli = AppGroup("audit", help="The audit trail: check that no row was changed.")


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
