"""``flask worker``: take study jobs from the queue (``FLASK_BROKER_URL`` or the
instance folder's SQLite queue)."""

from __future__ import annotations

from urllib.parse import urlsplit

import click
from flask import current_app
from flask.cli import with_appcontext

from audit.actions import APP_STARTED, APP_STOPPED
from audit.trail import lifecycle

from .worker import run_consumer


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
    queue = current_app.extensions["job_queue"]
    click.echo(f"worker: taking study jobs from {broker_name(queue.settings.broker_url)}")
    lifecycle(APP_STARTED, "worker")
    try:
        run_consumer(queue, workers=max(1, threads))
    finally:
        lifecycle(APP_STOPPED, "worker")
