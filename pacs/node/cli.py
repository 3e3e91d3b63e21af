"""``flask dicom listen``: run the node (C-ECHO and C-STORE SCP) in the foreground."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from settings import settings_of

from .server import serve

dicom_cli = AppGroup("dicom", help="The DICOM node that modalities send studies to.")


@dicom_cli.command("listen")
def listen_command():
    """Take C-ECHO and C-STORE from the allowed AE titles until stopped (Ctrl-C or
    SIGTERM). Studies are analysed by the workers once they stop growing."""
    settings = settings_of(current_app)
    click.echo(f"DICOM node {settings.node.ae_title} on {settings.node.bind}:"
               f"{settings.node.port}; callers: {', '.join(settings.node.allowed_callers)}")
    try:
        serve(current_app._get_current_object(), settings.node, settings.studies.limits)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        click.echo("stopped")
