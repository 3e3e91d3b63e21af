"""``flask pacs list``, ``flask pacs analyse STUDY_UID`` and ``flask pacs write-back
STUDY_ID``: the PACS from a terminal."""

from __future__ import annotations

import json
import time

import click
from flask import current_app
from flask.cli import AppGroup

from inference.errors import ServiceError
from settings import settings_of
from studies import service as studies
from studies.access import SYSTEM

from . import writeback
from .service import analyse, browse

pacs_cli = AppGroup("pacs", help="Browse the configured PACS and analyse its studies.")


@pacs_cli.command("list")
@click.option("--modality", default=None, help="CT, CR, DX...")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(modality: str | None, limit: int, as_json: bool) -> None:
    """The PACS's studies, newest first (no patient fields)."""
    try:
        found = browse(settings_of(current_app).pacs.client(), modality, limit=limit)
    except ServiceError as exc:
        raise click.ClickException(exc.message) from None
    if as_json:
        click.echo(json.dumps({"studies": found}, indent=2))
        return
    for study in found:
        click.echo(f"{study['study_uid']}  {study['date'] or '-':10}  "
                   f"{','.join(study['modalities'] or []):8}  {study['series'] or '?':>3} series  "
                   f"{study['images'] or '?':>4} images  {study['description'] or ''}")


@pacs_cli.command("analyse")
@click.argument("study_uid")
@click.option("--modality", default="ct", show_default=True, help="ct or xray")
@click.option("--model", default="all", show_default=True)
@click.option("--explain", is_flag=True, help="Heatmaps, written back as captures.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait for the answer (a worker must be running, or this runs it).")
def analyse_command(study_uid: str, modality: str, model: str, explain: bool,
                    wait: bool) -> None:
    """Analyse a PACS study and write the answer back into it."""
    app = current_app._get_current_object()
    settings = settings_of(app)
    try:
        study_id, new = analyse(settings.pacs.client(), app.extensions["inference"],
                                study_uid, modality, model, explain)
    except ServiceError as exc:
        raise click.ClickException(exc.message) from None
    queue = app.extensions["job_queue"]
    if new:
        app.extensions["tasks"].queue_study(study_id)
    click.echo(f"study {study_id} {'queued' if new else 'already queued or running'}")
    if not wait:
        return
    if queue.embedded:  # no separate worker in the embedded set-up: run it here
        queue.start_embedded_worker()
    config = settings.studies
    while (view := studies.view(config, study_id, SYSTEM))["status"] not in ("done", "failed"):
        time.sleep(1)
    if view["status"] == "failed":
        raise click.ClickException(view["error"]["message"])
    while settings.pacs.writes_back and (
            view := studies.view(config, study_id, SYSTEM))["write_back"]["status"] == "pending":
        time.sleep(1)  # a failed write is retried in the background: said, not waited for
    click.echo(json.dumps({"verdict": view["verdict"], "written": view.get("written"),
                           "write_back": view["write_back"]}, indent=2))


@pacs_cli.command("write-back")
@click.argument("study_id")
def write_back_command(study_id: str) -> None:
    """Write a finished study's answer into its PACS study now, in this process: after
    an outage, or once the automatic tries are used up. Exits non-zero on failure."""
    app = current_app._get_current_object()
    settings = settings_of(app)
    config = settings.studies
    try:
        view = studies.view(config, study_id, SYSTEM, with_images=False)
    except ServiceError as exc:
        raise click.ClickException(exc.message) from None
    if view.get("source") != "pacs":
        raise click.ClickException("This study's images were uploaded: there is no PACS "
                                   "study to write into.")
    if view["status"] != "done":
        raise click.ClickException(f"The study is {view['status']}, not done: there is no "
                                   "answer to write yet.")
    if view.get("written"):
        click.echo(f"already written ({len(view['written'])} instances)")
    else:
        ok, outcome = writeback.attempt(app.extensions["inference"], settings.pacs, config,
                                        study_id)
        if not ok:
            raise click.ClickException(outcome)
        click.echo(outcome)
    written = studies.view(config, study_id, SYSTEM, with_images=False)["written"]
    click.echo(json.dumps({"written": written}, indent=2))
