"""Precision candidates per architecture on this CPU, what ``auto`` chose, and what the
served path costs over the chosen runner's bare session.

    python -m bench.backends [--arch resnet50 ...] [--rounds 15] [--json PATH]

Each architecture's full-size CT model (published shape, ``weights=None``) is built
once in a scratch folder and converted with the app's ``convert_entry``; an INT8 graph
is made with the app's ``inference.quantize`` calibrated on 40 synthetic scan-like
images through the card's preprocessing (random weights: its agreement figures show
the mechanics, not a trained model's accuracy; ``tests/test_quantize.py`` judges a
trained one). Then ``inference.candidates.measure`` (what the background preparation
runs) times every candidate in turn, single image, and judges it against ONNX Runtime
fp32 on its probe set. Last, the model is loaded through ``InferenceService`` with
``INFERENCE_PRECISION=auto`` and one preprocessed image is timed through the served
path (cache, micro-batcher) interleaved with the chosen runner's own bare session;
batch 8 likewise. Medians of ``--rounds``; the machine may be shared, so ratios are
taken in the same minutes. Raw figures go to ``test-artifacts/bench-backends.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

ARCHES = ("resnet50", "vgg16", "inceptionv3")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = ROOT / "test-artifacts" / "bench-models"
DEFAULT_JSON = ROOT / "test-artifacts" / "bench-backends.json"


def build(arch: str, model_dir: Path):
    """The full-size model, converted, and an INT8 graph of it."""
    from inference.preparation import convert_entry
    from inference.preprocess import decode_image, model_input
    from inference.quantize import quantize
    from inference.registry import discover
    from inference.openvino_runner import int8_path_for
    from tests.model_factory import full_size_model, install, scan_like_png

    size = (299, 299) if arch == "inceptionv3" else (224, 224)
    entry = next((e for e in discover(model_dir) if e.key == ("ct", arch) and e.available),
                 None)
    if entry is None:
        install(full_size_model(arch, size), model_dir, arch, "ct",
                {"input_size": list(size)})
        entry = next(e for e in discover(model_dir) if e.key == ("ct", arch))
    onnx_path, _, _ = convert_entry(entry)
    if not int8_path_for(onnx_path).is_file():
        images = np.stack([model_input(decode_image(scan_like_png(seed=i)).pixels, entry.card)
                           for i in range(40)])
        report = quantize(onnx_path, entry.card, images, min_agreement=0.0)
        print(f"{arch}: INT8 {report.summary()}")
    return entry, onnx_path


def served_against_bare(model_dir: Path, entry, onnx_path, rounds: int) -> dict:
    """The served path (auto) against the chosen runner's bare session, batch 1 and 8."""
    from inference.candidates import chosen_candidate, read_choice
    from inference.conversion import times_in_turn
    from inference.service import InferenceService

    service = InferenceService(str(model_dir), precision="auto")
    loaded = service.load(entry)
    record = read_choice(onnx_path, service.policy.tolerance)
    bare = chosen_candidate(onnx_path, record).open()
    figures = {"served_by": f"{loaded.runner.name}-{getattr(loaded.runner, 'precision', '')}"}
    for size in (1, 8):
        batch = np.random.default_rng(size).random((size, *entry.card.input_size, 3),
                                                   dtype=np.float32)
        bare.run(batch), loaded.run_batch(batch)  # first-call allocations out
        times = times_in_turn({"served": loaded.run_batch, "bare": bare.run}, batch, rounds)
        served_ms, bare_ms = (statistics.median(times[key]) for key in ("served", "bare"))
        figures[f"batch{size}"] = {"served_ms": round(served_ms, 2),
                                   "bare_ms": round(bare_ms, 2),
                                   "ratio": round(served_ms / bare_ms, 3)}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=ARCHES)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    args = parser.parse_args(argv)
    from inference.candidates import measure
    from inference.runtime import cpu_signature

    model_dir = Path(args.model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    results = {"cpu": cpu_signature(), "architectures": {}}
    for arch in args.arch or ARCHES:
        entry, onnx_path = build(arch, model_dir)
        record = measure(onnx_path, entry.card, rounds=args.rounds)
        served = served_against_bare(model_dir, entry, onnx_path, args.rounds)
        results["architectures"][arch] = {"measure": record, "served": served}
        print(f"\n{arch}: auto chose {record['chosen']} (CPU {record['cpu']})")
        for row in record["candidates"]:
            print(f"  {row['name']:17} {row.get('ms', float('nan')):8.1f} ms  "
                  f"max diff {row.get('max_difference', float('nan')):.4f}  "
                  f"flips {row.get('label_flips', '-')}  "
                  f"{'accepted' if row['accepted'] else 'refused: ' + row['reason']}")
        for size in (1, 8):
            figure = served[f"batch{size}"]
            print(f"  served batch {size}: {figure['served_ms']:.1f} ms vs bare "
                  f"{figure['bare_ms']:.1f} ms = {figure['ratio']:.2f}x")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
