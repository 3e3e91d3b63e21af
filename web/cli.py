"""``flask models ...``: list the model slots and warm the cache."""

import json

import click
from flask import current_app
from flask.cli import AppGroup

from inference.registry import normalize_architecture, normalize_modality

models_cli = AppGroup("models", help="Inspect and load the models.")


@models_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_models(as_json: bool):
    """Show every model slot, installed or not."""
    rows = current_app.extensions["inference"].describe()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = "installed" if row["available"] else "missing  "
        click.echo(f"{row['modality']:5} {row['architecture']:12} {state} {row['file']}")


@models_cli.command("warm")
@click.option("--modality", default=None, help="ct or xray (default: both).")
@click.option("--model", "architecture", default="all", help="Architecture or all.")
def warm(modality, architecture):
    """Load models now so the first request does not wait."""
    service = current_app.extensions["inference"]
    modalities = [normalize_modality(modality)] if modality else ["ct", "xray"]
    architecture = normalize_architecture(architecture)
    for key in modalities:
        for entry in service.entries_for(key):
            if not entry.available or architecture not in ("all", entry.architecture):
                continue
            loaded = service.cache.get(entry)
            click.echo(f"{key:5} {entry.architecture:12} loaded in {loaded.load_ms:.0f} ms "
                       f"(+{loaded.memory_mb:.0f} MiB, {loaded.loader})")
