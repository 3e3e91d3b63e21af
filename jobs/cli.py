"""``flask worker``: take study jobs from the queue (``FLASK_BROKER_URL`` or the
instance folder's SQLite queue)."""

from __future__ import annotations

from urllib.parse import urlsplit

import click
from flask import current_app
from flask.cli import with_appcontext


def broker_name(url: str | None) -> str:
    """The broker without its credentials, for the console."""
    if not url:
        return "the instance folder's SQLite queue"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


@click.command("worker")
@click.option("--threads", default=1, show_default=True,
              help="Jobs at once (each forward pass already uses every core).")
@with_appcontext
def worker_command(threads: int) -> None:
    """Run a worker until stopped (Ctrl+C or SIGTERM)."""
    from .worker import run_consumer

    app = current_app._get_current_object()
    click.echo(f"worker: taking study jobs from {broker_name(app.config.get('BROKER_URL'))}")
    run_consumer(app, workers=max(1, threads))
