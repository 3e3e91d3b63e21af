"""fp16 against fp32 ONNX graphs: images per second and how far the answers move.

    python -m bench.precision [--device cpu|cuda] [--batch N] [--runs 5]
                              [--architectures vgg16,vgg19,inceptionv3,resnet50]

Each architecture is the full-size model (``keras.applications`` with ``weights=None``,
random weights, 224 x 224: the input size the app uses for all four), saved and
converted as the app does (``bench.studies.prepare_models``: tf2onnx, checked against
Keras), then converted to fp16 as the app does (``inference.precision``). Both graphs
run through the app's own ``OnnxBackend`` (its session options) on ``--device``, in
turn, so both see the same machine load. img/s: median of ``--runs`` timed batches
after one warm-up. The differences are the largest |fp16 - fp32| over the batch's
probabilities, and over its feature map relative to the map's peak (what a heatmap
is made from); the inputs are seeded random images through the model's preprocessing.
The batch defaults to 8 on the CPU (a study's batch) and 64 on CUDA.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ARCHES = ("vgg16", "vgg19", "inceptionv3", "resnet50")


def timed_runs(runners: dict, batch, runs: int) -> dict:
    """Median seconds per batch of each runner, the runners called in turn."""
    for runner in runners.values():
        runner.run(batch)  # first-call allocations (and CUDA kernel choice) out of it
    times = {name: [] for name in runners}
    for _ in range(runs):
        for name, runner in runners.items():
            started = time.perf_counter()
            runner.run(batch)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(folder: str, arch: str, device: str, batch_size: int, runs: int) -> dict:
    from bench.studies import ct_entry
    from inference import conversion
    from inference.precision import convert_to_fp16, differences
    from inference.preprocess import model_input
    from inference.runners import OnnxBackend

    entry = ct_entry(folder, arch)
    fp32_path = conversion.find_verified_onnx(entry.path, conversion.file_sha256(entry.path))
    fp32 = OnnxBackend(fp32_path, device=device)
    fp16 = OnnxBackend(convert_to_fp16(fp32_path), device=device)
    batch = conversion.check_inputs(entry.card.input_size,
                                    lambda image: model_input(image, entry.card),
                                    seed=16, count=batch_size)
    diff, map_diff = differences(fp32, fp16, batch)
    seconds = timed_runs({"fp32": fp32, "fp16": fp16}, batch, runs)
    return {"arch": arch, "providers": fp32.providers[0], "batch": batch_size,
            "fp32": batch_size / seconds["fp32"], "fp16": batch_size / seconds["fp16"],
            "diff": diff, "map_diff": map_diff}


def table(rows: list[dict]) -> str:
    header = ("| architecture | provider | batch | fp32 img/s | fp16 img/s | fp16 / fp32 "
              "| max abs prob. diff | feature map diff (of peak) |")
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['providers']} | {r['batch']} | {r['fp32']:.2f} "
                     f"| {r['fp16']:.2f} | {r['fp16'] / r['fp32']:.2f}x | {r['diff']:.1e} "
                     f"| {r['map_diff']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    from bench.studies import DEFAULT_MODEL_DIR

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, help="images per run (8 on cpu, 64 on cuda)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--architectures", default=",".join(ARCHES),
                        help="comma-separated, of " + ", ".join(ARCHES))
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_DIR,
                        help="where the full-size models and conversions are kept")
    args = parser.parse_args()
    arches = [a.strip() for a in args.architectures.split(",") if a.strip()]
    unknown = sorted(set(arches) - set(ARCHES))
    if unknown:
        parser.error(f"unknown architectures: {', '.join(unknown)}")
    batch = args.batch or (64 if args.device == "cuda" else 8)

    import onnxruntime

    from bench.studies import prepare_models
    from inference.runtime import intra_op_threads

    prepare_models(Path(args.model_dir), arches)
    rows = [measure(args.model_dir, arch, args.device, batch, args.runs) for arch in arches]
    print(f"ONNX Runtime {onnxruntime.__version__}, --device {args.device}, "
          f"{intra_op_threads(0)} threads, median of {args.runs} runs\n")
    print(table(rows))


if __name__ == "__main__":
    main()
