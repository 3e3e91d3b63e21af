"""``predict``: score many files with the installed models, the way the app does.

The same registry, cache, decoder, ``model_input``, output reading and threshold as the
web app; the only difference is that images go through each model in batches.
"""

from __future__ import annotations

import csv
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.errors import ModelUnavailable, ServiceError
from inference.cache import ModelCache
from inference.predict import ModelResult, combine, model_result, select_entries
from inference.preprocess import decode_image, model_input
from inference.registry import discover, normalize_architecture, normalize_modality

from .datasets import IMAGE_SUFFIXES, natural_key

CSV_FIELDS = ("file", "model", "label", "covid_probability", "confidence", "threshold",
              "agreement", "error")


@dataclass
class Row:
    file: str
    model: str
    label: str = ""
    covid_probability: float | None = None
    confidence: float | None = None
    threshold: float | None = None
    agreement: float | None = None
    error: str = ""


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, and the images inside folders (recursively, in natural order)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted((p for p in path.rglob("*") if p.is_file()
                                 and p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{item} is neither a file nor a folder.")
    return files


def decode_file(path: Path, max_pixels: int):
    """Pixels, or the app's error message for a file the app would refuse."""
    try:
        return decode_image(path.read_bytes(), max_pixels=max_pixels,
                            filename=path.name).pixels, ""
    except ServiceError as exc:
        return None, exc.message
    except OSError as exc:
        return None, f"cannot read: {exc.strerror}"


def score_files(files: list[Path], modality: str, model: str, model_dir: str,
                batch_size: int = 16, max_pixels: int = 50_000_000, progress: bool = True
                ) -> list[Row]:
    """One row per file and model, plus an ``ensemble`` row per file when several answer."""
    from tqdm import tqdm

    modality = normalize_modality(modality)
    architecture = normalize_architecture(model)
    entries = select_entries(discover(model_dir), modality, architecture)
    # Every chosen model stays loaded, so each file is decoded once for all of them.
    cache = ModelCache(max_loaded=len(entries))
    models = []
    for entry in entries:
        try:
            models.append(cache.get(entry))
        except ModelUnavailable as exc:
            if architecture != "all":
                raise
            print(f"{entry.display_name} skipped: {exc.message}", file=sys.stderr)
    per_file: dict[int, list[ModelResult]] = {i: [] for i in range(len(files))}
    errors: dict[int, str] = {}
    rows: list[Row] = []
    with ThreadPoolExecutor() as pool, tqdm(total=len(files), unit="image",
                                            disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(files), batch_size):
            chunk = list(range(start, min(start + batch_size, len(files))))
            decoded = list(pool.map(lambda i: decode_file(files[i], max_pixels), chunk))
            ready = [(i, pixels) for i, (pixels, error) in zip(chunk, decoded) if not error]
            errors.update({i: error for i, (_, error) in zip(chunk, decoded) if error})
            for loaded in models if ready else []:
                card = loaded.card
                inputs = np.stack(list(pool.map(lambda item: model_input(item[1], card), ready)))
                for (i, _), output in zip(ready, loaded.run_batch(inputs)):
                    per_file[i].append(_result(loaded, output))
            bar.update(len(chunk))
    for i, path in enumerate(files):
        if i in errors:
            rows.append(Row(str(path), architecture, error=errors[i]))
            continue
        for result in per_file[i]:
            rows.append(Row(str(path), result.architecture, result.label,
                            result.covid_probability, result.confidence, result.threshold))
        ensemble = combine(per_file[i])
        if ensemble is not None:
            rows.append(Row(str(path), "ensemble", ensemble.label, ensemble.covid_probability,
                            agreement=ensemble.agreement))
    return rows


def _result(loaded, output: np.ndarray) -> ModelResult:
    """One output row read with the model's card; a card that does not fit its model
    stops the run with a message naming both files, as the app words it."""
    try:
        return model_result(loaded.entry.architecture, output, loaded.card)
    except ValueError as exc:
        raise ModelUnavailable(loaded.entry.misfit(str(exc))) from exc


def write_csv(rows: list[Row], handle) -> None:
    writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if getattr(row, k) is None else getattr(row, k)
                         for k in CSV_FIELDS})


def run_predict(args) -> list[Row]:
    files = expand_inputs(args.inputs)
    if not files:
        raise FileNotFoundError("No image files found in the given paths.")
    rows = score_files(files, args.modality, args.model, args.model_dir, args.batch_size,
                       progress=not args.no_progress)
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as handle:
            write_csv(rows, handle)
        print(f"{len(rows)} rows for {len(files)} files written to {args.csv}")
    else:
        write_csv(rows, sys.stdout)
    return rows
