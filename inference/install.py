"""``flask models install`` and ``remove``: check model files, then place them.

Every ``.h5`` the source holds is recognised (file name, then the flags, then the
layers), loaded, and checked against its card before anything is placed: one file
that fails stops the install with nothing written. Each file and its card are then
written to temporary files in the target folder and moved into the published layout
with ``os.replace``, so a running server sees the old model or the new one, never half
of one. Last, the service converts each for ONNX Runtime; a refused conversion is
reported and the model is served by Keras.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .cards import ModelCard, check_output_width
from .conversion import ConversionRefused, derived_files, file_sha256, folder_lock
from .ood import profile_path
from .recognise import from_layers, from_name, layer_names
from .registry import ARCHITECTURES, MODALITIES, default_card, discover, model_relpath
from .runners import ModelLoadError, conversion_supported, load_keras_model
from .sources import (
    PUBLISHED,
    Candidate,
    InstallError,
    gather,
    is_url,
    published_metrics,
)


@dataclass
class Plan:
    """One checked file and where it goes."""

    candidate: Candidate
    modality: str
    architecture: str
    card: dict
    sha256: str


def _pick(kind: str, label: str, found: str | None, flag: str | None,
          hint: str | None = None) -> str | None:
    """The name's answer, else the flag's (else a hint); a clash between them stops."""
    if found and flag and found != flag:
        raise InstallError(f"{label}: its name says {kind} {found} but the command says "
                           f"{flag}: rename the file or drop the option.")
    return found or flag or hint


def _model_facts(path: Path, threads: int) -> tuple[list[str], int, tuple, str]:
    """(layer names, output width, input (h, w), loader) of a loadable model."""

    try:
        model, loader = load_keras_model(path, threads)
    except ModelLoadError as exc:
        raise InstallError(f"{exc}. Nothing was installed.") from exc
    if len(model.outputs) != 1 or len(model.inputs) != 1:
        raise InstallError(f"{path.name} has {len(model.inputs)} inputs and "
                           f"{len(model.outputs)} outputs; one of each is needed.")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise InstallError(f"{path.name} takes input {shape}, not RGB images "
                           f"[batch, height, width, 3].")
    return layer_names(model), int(model.outputs[0].shape[-1]), shape[1:3], loader


def _source_card(candidate: Candidate, arch: str, modality: str) -> ModelCard:
    """The card that came with the file (same stem, ``.json``), or the defaults."""
    path = candidate.path.with_suffix(".json")
    if not path.is_file():
        return default_card(arch, modality)
    try:
        return ModelCard.load(path, arch, modality)
    except (ValueError, TypeError, OSError, RecursionError) as exc:
        raise InstallError(f"{candidate.label}: its card {path.name} is invalid: {exc}"
                           ) from exc


def check(candidate: Candidate, source: str, modality: str | None, arch: str | None,
          threads: int = 0, echo=print) -> Plan:
    """Recognise, load and check one file; returns what to place, or raises."""
    label = candidate.label
    name_arch, name_modality = from_name(label)
    modality = _pick("modality", label, name_modality, modality, candidate.modality_hint)
    arch = _pick("architecture", label, name_arch, arch)
    if modality is None:
        raise InstallError(f"{label}: cannot tell whether it is a CT or an X-ray model: "
                           f"add --modality ct or --modality xray.")
    echo(f"{label}: checking that it loads")
    layers, width, size, loader = _model_facts(candidate.path, threads)
    structure = from_layers(layers)
    if arch is None and structure is None:
        raise InstallError(f"{label}: cannot tell its architecture from its name or its "
                           f"layers: add --arch ({', '.join(ARCHITECTURES)}).")
    how = "its name" if name_arch else "--arch" if arch else "its layers"
    arch = arch or structure
    if structure and structure != arch:
        echo(f"{label}: note: its layers look like {ARCHITECTURES[structure].name}")
    card = _source_card(candidate, arch, modality)
    if all(isinstance(v, int) for v in size) and tuple(size) != tuple(card.input_size):
        if candidate.path.with_suffix(".json").is_file():
            raise InstallError(f"{label}: its card says input {list(card.input_size)} "
                               f"but the model takes {list(size)}.")
        card.input_size = tuple(size)
    misfit = check_output_width(card, width)
    if misfit:
        raise InstallError(f"{label}: {misfit}; a COVID / non-COVID model is needed.")
    echo(f"{label}: {ARCHITECTURES[arch].name} (from {how}), {MODALITIES[modality].label}, "
         f"read by {loader}, {width} output{'s' if width != 1 else ''} for "
         f"{', '.join(card.classes)}")
    digest = file_sha256(candidate.path)
    data = _card_json(card, candidate, source, digest)
    _validate(data, arch, modality, label)
    return Plan(candidate, modality, arch, data, digest)


def _card_json(card: ModelCard, candidate: Candidate, source: str, digest: str) -> dict:
    """The card to write: what came with the file, plus where it came from."""
    data = card.to_json()
    if candidate.published and not data.get("metrics"):
        data["metrics"] = published_metrics(card.architecture, card.modality)
    data.update(source=source, source_file=candidate.label, sha256=digest,
                installed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return data


def _validate(data: dict, arch: str, modality: str, label: str) -> None:
    """The card as it will be written must pass the registry's own checks."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "card.json")
        path.write_text(json.dumps(data), encoding="utf-8")
        try:
            ModelCard.load(path, arch, modality)
        except (ValueError, TypeError) as exc:
            raise InstallError(f"{label}: the card to write is invalid: {exc}") from exc


def _write_temp(target: Path, write) -> Path:
    """A complete, synced temporary file in ``target``'s folder (removed on failure)."""
    handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.",
                                         suffix=".tmp", delete=False)
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return Path(handle.name)


def slot_path(model_dir: Path, modality: str, arch: str) -> Path:
    """The installed file of that slot (whatever its case), else where it goes."""
    entry = next(e for e in discover(model_dir) if e.key == (modality, arch))
    return entry.path or Path(model_dir) / model_relpath(arch, modality)


def place(plan: Plan, model_dir: Path) -> Path:
    """Move the file and its card into the published layout, each in one rename."""
    target = slot_path(model_dir, plan.modality, plan.architecture)
    target.parent.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []
    try:
        with open(plan.candidate.path, "rb") as source:
            temps.append(_write_temp(target, lambda out: shutil.copyfileobj(source, out)))
        card = json.dumps(plan.card, indent=2).encode("utf-8")
        temps.append(_write_temp(target.with_suffix(".json"), lambda out: out.write(card)))
        os.replace(temps[1], target.with_suffix(".json"))
        os.replace(temps[0], target)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
    return target


def conversions(model_path: Path, cache_dir: str | None) -> list[Path]:
    """What was made from the model (conversions, notes, INT8 graphs, measurements),
    beside it and in the cache."""
    folders = {Path(model_path).parent} | ({Path(cache_dir)} if cache_dir else set())
    return sorted(p for folder in folders for p in derived_files(model_path, folder))


def convert_for_serving(service, modality: str, arch: str, echo=print) -> str:
    """Convert the placed model for ONNX Runtime through the service; say how it is
    served. A refused or failed conversion leaves it served by Keras."""

    if not service.cache.uses_onnx:
        return "served by Keras (no ONNX Runtime, or INFERENCE_BACKEND=keras)"
    if not conversion_supported():
        return "served by Keras (onnx and tf2onnx are not installed)"
    entry = next(e for e in service.entries() if e.key == (modality, arch))
    try:
        path, report, _ = service.convert(entry)
    except ConversionRefused as exc:
        return f"conversion refused ({exc}): served by Keras"
    except Exception as exc:  # noqa: BLE001 - the model stays installed either way
        return f"conversion failed ({type(exc).__name__}: {str(exc)[:200]}): served by Keras"
    return (f"converted for ONNX Runtime ({path.name}, max |diff| "
            f"{report.max_abs_diff:.1e} against Keras)")


def recorded_source(source: str) -> str:
    """What a card records as the source: the URL, or the local path made absolute."""
    published = PUBLISHED.get(source.strip().lower())
    if published:
        return published[1]
    return source if is_url(source) else str(Path(source).expanduser().resolve())


def _check_all(candidates: list[Candidate], source: str, modality, arch, threads: int,
               echo) -> list[Plan]:
    plans = [check(c, source, modality, arch, threads, echo) for c in candidates]
    slots: dict[tuple, str] = {}
    for plan in plans:
        key = (plan.modality, plan.architecture)
        if key in slots:
            raise InstallError(f"{slots[key]} and {plan.candidate.label} are both "
                               f"{ARCHITECTURES[key[1]].name} {key[0]}: install them "
                               f"one at a time.")
        slots[key] = plan.candidate.label
    return plans


def install_models(service, source: str, download_dir: str | Path,
                   modality: str | None = None, arch: str | None = None,
                   sha256: str | None = None, echo=print) -> list[Path]:
    """Fetch, check, place and prepare every model SOURCE holds; returns the placed
    files. Nothing is placed unless every file passes its checks. ``download_dir``
    keeps scratch files while this runs, and an interrupted download afterwards."""
    model_dir = Path(service.model_dir)
    download_dir = Path(download_dir)
    for folder in (model_dir, download_dir):
        folder.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=download_dir, prefix="install-") as work:
            candidates = gather(source, Path(work), download_dir, sha256, echo)
            source = recorded_source(source)
            if not candidates:
                raise InstallError(f"no .h5 file found in {source}.")
            echo(f"Found {len(candidates)} model file(s)")
            plans = _check_all(candidates, source, modality, arch, service.threads, echo)
            placed = [_place_one(plan, model_dir, service.onnx_cache_dir, echo)
                      for plan in plans]
    finally:
        with contextlib.suppress(OSError):
            download_dir.rmdir()  # only when empty: a .part to resume stays
    for plan, target in zip(plans, placed):
        served = convert_for_serving(service, plan.modality, plan.architecture, echo)
        echo(f"{target.name}: {served}")
    return placed


def _place_one(plan: Plan, model_dir: Path, cache_dir: str | None, echo) -> Path:
    """Place one checked file and drop the conversions of the file it replaced."""
    try:
        with folder_lock(model_dir):
            target = place(plan, model_dir)
            for stale in conversions(target, cache_dir):
                if plan.sha256[:16] not in stale.name:
                    stale.unlink(missing_ok=True)
    except OSError as exc:
        raise InstallError(f"could not write {plan.candidate.label} into {model_dir} "
                           f"({exc}); the model there before is unchanged.") from exc
    echo(f"{plan.candidate.label}: installed as {target.relative_to(model_dir).as_posix()} "
         f"with its card (sha256 {plan.sha256[:16]}...)")
    return target


def remove_model(service, modality: str, arch: str, echo=print) -> list[Path]:
    """Delete one slot's file, its card, its feature profile and its conversions;
    returns what was deleted."""
    entry = next(e for e in service.entries() if e.key == (modality, arch))
    if not entry.available:
        raise InstallError(f"no {ARCHITECTURES[arch].name} {MODALITIES[modality].label} "
                           f"model is installed (it would be {entry.expected_relpath}).")
    with folder_lock(Path(service.model_dir)):  # not while it is being converted
        removed = [entry.path]
        beside = [entry.path.with_suffix(".json"), profile_path(entry.path)]
        removed += [path for path in beside if path.is_file()]
        removed += conversions(entry.path, service.onnx_cache_dir)
        for path in removed:
            path.unlink(missing_ok=True)
            echo(f"removed {path}")
        with contextlib.suppress(OSError):
            entry.path.parent.rmdir()  # the architecture's folder, when it is empty
    return removed
