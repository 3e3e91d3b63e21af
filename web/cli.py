"""``flask models ...``: install and remove models, list the slots, convert them to ONNX,
warm the cache."""

from __future__ import annotations

import json
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup

from audit import actions, trail
from inference.conversion import ConversionRefused
from inference.errors import InvalidRequest, ModelUnavailable
from inference.install import install_models, remove_model
from inference.registry import (
    ARCHITECTURES,
    ModelEntry,
    chosen,
    normalize_architecture,
    normalize_modality,
)
from inference.runners import conversion_supported
from inference.quantize import MIN_AGREEMENT, QuantizationRefused
from inference.sources import InstallError
from training.datasets import DatasetError
from training.quantize import DEFAULT_LIMIT_PER_CLASS, quantize_folder

models_cli = AppGroup("models", help="Install, inspect, convert and load the models.")


def chosen_entries(service, modality: str | None, architecture: str = "all"
                   ) -> list[ModelEntry]:
    """Installed models of one modality (or both) and one architecture (or all)."""
    return chosen(service.entries(), normalize_modality(modality) if modality else None,
                  normalize_architecture(architecture))


def warm_models(service, selection: list[tuple[str | None, str]], echo=None) -> int:
    """Load the (modality, architecture) pairs in ``selection``; returns how many loaded.

    A modality of None means both. A model that cannot load is reported and skipped:
    the others still warm.
    """
    count = 0
    for modality, architecture in selection:
        for entry in chosen_entries(service, modality, architecture):
            try:
                loaded = service.load(entry)
            except ModelUnavailable as exc:
                if echo:
                    echo(f"{entry.modality:5} {entry.architecture:12} failed: {exc.message}")
                continue
            count += 1
            if echo:
                echo(f"{entry.modality:5} {entry.architecture:12} loaded in "
                     f"{loaded.load_ms:.0f} ms (+{loaded.memory_mb:.0f} MiB), "
                     f"serving with {loaded.backend_name}")
    return count


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
    """Load models now so the first request does not wait; print load time and memory."""
    warm_models(current_app.extensions["inference"], [(modality, architecture)],
                echo=click.echo)


@models_cli.command("compile")
@click.option("--modality", default=None, help="ct or xray (default: both).")
@click.option("--model", "architecture", default="all", help="Architecture or all.")
@click.option("--force", is_flag=True, help="Convert again even if a conversion exists.")
def compile_models(modality, architecture, force):
    """Convert models to ONNX ahead of serving, checked against Keras (1e-4).

    The file is cached beside the model as <stem>.<sha256[:16]>.v<N>.onnx; the server
    serves it from its next request for that model. A running server also converts
    new models by itself in the background (PREPARE_MODELS).
    """

    if not conversion_supported():
        raise click.ClickException("ONNX conversion needs onnx, onnxruntime and tf2onnx.")
    service = current_app.extensions["inference"]
    failures = 0
    for entry in chosen_entries(service, modality, architecture):
        label = f"{entry.modality:5} {entry.architecture:12}"
        try:
            path, report, converted = service.convert(entry, force=force)
        except ConversionRefused as exc:
            failures += 1
            click.echo(f"{label} refused: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            failures += 1
            click.echo(f"{label} failed: {type(exc).__name__}: {exc}")
            continue
        verb = f"converted in {report.convert_s:.1f} s" if converted else "already converted"
        faster = "ONNX" if report.onnx_is_faster else "Keras"
        click.echo(f"{label} {verb}: {path.name}, max |diff| {report.max_abs_diff:.1e}, "
                   f"Keras {report.keras_ms:.1f} ms, ONNX {report.onnx_ms:.1f} ms "
                   f"({faster} is faster)")
    if failures:
        raise click.ClickException(f"{failures} model(s) not converted")


@models_cli.command("quantize")
@click.argument("modality")
@click.argument("arch")
@click.option("--data", "data_dir", required=True, metavar="DIR",
              help="Labelled images: one subfolder per class, as for training.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=MIN_AGREEMENT,
              show_default=True, help="Share of held-out labels INT8 must give as fp32.")
@click.option("--limit-per-class", type=click.IntRange(min=1),
              default=DEFAULT_LIMIT_PER_CLASS, show_default=True)
def quantize(modality, arch, data_dir, min_agreement, limit_per_class):
    """Make an INT8 graph of one model (NNCF post-training quantization).

    Calibrated on 70 % of the images in DIR through the card's preprocessing, judged
    on the other 30 % against fp32: label agreement and the largest probability
    difference go into the model card. Refused (nothing published) when agreement is
    below --min-agreement. INFERENCE_PRECISION=auto then measures it on this CPU.
    """

    service = current_app.extensions["inference"]
    try:
        entries = chosen_entries(service, modality, normalize_architecture(arch, False))
        if not entries:
            raise click.ClickException(f"No {arch} model for {modality} is installed.")
        entry = entries[0]
        report = quantize_folder(entry, data_dir, limit_per_class,
                                 cache_dir=service.onnx_cache_dir,
                                 min_agreement=min_agreement, threads=service.threads)
    except (InvalidRequest, DatasetError, QuantizationRefused, ConversionRefused) as exc:
        raise click.ClickException(str(exc)) from exc
    if not report.accepted:
        raise click.ClickException(f"INT8 refused: {report.summary()}")
    click.echo(f"{entry.modality} {entry.architecture} INT8 accepted: {report.summary()}")


@models_cli.command("install")
@click.argument("source")
@click.option("--modality", type=click.Choice(["ct", "xray", "cxr"], case_sensitive=False),
              help="When the file name does not say CT or X-ray.")
@click.option("--arch", type=click.Choice(sorted(ARCHITECTURES), case_sensitive=False),
              help="When neither the file name nor the layers say it.")
@click.option("--sha256", help="Refuse the file unless its SHA-256 is this.")
def install(source, modality, arch, sha256):
    """Install models from a .h5 file, a folder, a .zip, an http(s) URL, a Google Drive
    link, or published-ct / published-cxr (the original work's Drive folders).

    Each file is recognised, checked to load and to give two classes, placed in the
    published layout with a card recording its source and SHA-256, and converted for
    ONNX Runtime. Nothing is placed unless every file passes.
    """

    try:
        with trail.audited(actions.MODEL_INSTALLED, trail.command_line(),
                           modality=modality, model=arch):
            install_models(current_app.extensions["inference"], source,
                           Path(current_app.instance_path) / "downloads",
                           modality=normalize_modality(modality) if modality else None,
                           arch=arch.lower() if arch else None, sha256=sha256,
                           echo=click.echo)
    except InstallError as exc:
        raise click.ClickException(str(exc)) from exc


@models_cli.command("remove")
@click.argument("modality")
@click.argument("arch")
def remove(modality, arch):
    """Delete one model: its .h5, its card and its ONNX conversions."""

    try:
        with trail.audited(actions.MODEL_REMOVED, trail.command_line(), modality=modality,
                           model=arch):
            remove_model(current_app.extensions["inference"], normalize_modality(modality),
                         normalize_architecture(arch, allow_all=False), echo=click.echo)
    except (InstallError, InvalidRequest) as exc:
        raise click.ClickException(str(exc)) from exc
