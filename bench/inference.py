"""Inference benchmark: what each architecture costs to load and to serve, per backend.

    python bench/inference.py [--arch vgg16 --arch resnet50] [--runs 20] [--xla]

Builds the four published networks at full size (224 x 224, ``weights=None``, Flatten
and a 2-way softmax head) once into a scratch folder, converts each to ONNX through the
app's own ``ModelCache.convert`` (checked against Keras), then measures every
(architecture, backend) pair in a fresh process so that load time and resident memory
are its own. Each process interleaves the served call (preprocessing and forward pass,
as a request runs it) with a plain ONNX Runtime session on the same file, so the ratio
to ONNX Runtime is taken under the same load. (The reference's idle threads sleep
rather than spin, as the served session's do; otherwise the two pools would take turns
starving each other, which measures neither.) The arithmetic estimate divides the
model's FLOPs (2 x multiply-adds of its convolutions and dense layers) by the SGEMM
rate numpy reaches in the same run. The machine may be shared: medians are printed,
and a second run is the way to tell noise from signal.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from inference.backends import KERAS_MARGIN  # noqa: E402 - stdlib and numpy only

ARCHES = ("vgg16", "vgg19", "inceptionv3", "resnet50")
MODALITY = {"vgg16": "ct", "vgg19": "ct", "inceptionv3": "ct", "resnet50": "xray"}


def sgemm_gflops(n: int = 2048, runs: int = 7) -> float:
    """Best-of-median single-precision matrix multiply rate with numpy's BLAS."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * n**3 / statistics.median(times) / 1e9


def model_flops(model) -> float:
    """2 x multiply-adds of Conv2D and Dense layers: where nearly all the time goes."""
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            _, height, width, out_channels = layer.output.shape
            kh, kw = layer.kernel_size
            in_channels = layer.input.shape[-1]
            total += 2 * height * width * out_channels * kh * kw * in_channels
        elif kind == "Dense":
            total += 2 * layer.input.shape[-1] * layer.units
    return float(total)


def prepare_models(folder: Path, arches, force: bool = False) -> dict:
    """Save each full-size model (once) and its checked ONNX conversion; FLOPs too."""
    from inference.loader import ModelCache
    from inference.registry import discover
    from tests.model_factory import full_size_model, install

    info_path = folder / "models.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    cache = ModelCache()
    for arch in arches:
        modality = MODALITY[arch]
        if arch not in info:
            model = full_size_model(arch)
            install(model, folder, arch, modality)
            info[arch] = {"gflop": model_flops(model) / 1e9}
            del model
        entry = next(e for e in discover(folder) if e.key == (modality, arch))
        _, report, converted = cache.convert(entry, force=force)
        if converted:
            info[arch]["convert_s"] = report.convert_s
        info[arch].update(max_abs_diff=report.max_abs_diff, check_keras_ms=report.keras_ms,
                          check_onnx_ms=report.onnx_ms)
        info_path.write_text(json.dumps(info, indent=2))
    return info


def measure(arch: str, backend: str, folder: Path, runs: int, xla: bool) -> dict:
    """One process, one model: load, first call, warm calls, batch of 8, memory."""
    from inference.loader import ModelCache, resident_memory_mb
    from inference.predict import run_model
    from inference.preprocess import decode_image
    from inference.registry import discover
    from tests.model_factory import png_bytes

    import onnxruntime as ort
    from inference.backends import find_verified_onnx, file_sha256

    modality = MODALITY[arch]
    entry = next(e for e in discover(folder) if e.key == (modality, arch))
    decoded = decode_image(png_bytes(size=(512, 512), seed=1))
    rss_start = resident_memory_mb()
    cache = ModelCache(backend=backend)

    started = time.perf_counter()
    loaded = cache.get(entry)
    load_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    run_model(loaded, decoded)
    first_ms = (time.perf_counter() - started) * 1000
    rss_loaded = resident_memory_mb()

    options = ort.SessionOptions()  # plain ONNX Runtime, same cores; idle threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # sleep
    reference = ort.InferenceSession(
        str(find_verified_onnx(entry.path, file_sha256(entry.path))), options,
        providers=["CPUExecutionProvider"])
    name = reference.get_inputs()[0].name
    one = np.random.default_rng(0).random((1, 224, 224, 3), dtype=np.float32)
    reference.run(None, {name: one})

    served, raw = [], []
    for _ in range(runs):  # interleaved: both see the same machine load
        started = time.perf_counter()
        run_model(loaded, decoded)
        served.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        reference.run(None, {name: one})
        raw.append((time.perf_counter() - started) * 1000)

    eight = np.repeat(one, 8, axis=0)
    loaded.run_batch(eight)
    batch_times = []
    for _ in range(max(3, runs // 5)):
        started = time.perf_counter()
        loaded.run_batch(eight)
        batch_times.append(time.perf_counter() - started)

    result = {
        "arch": arch, "backend": loaded.backend_name, "load_ms": load_ms,
        "first_ms": first_ms, "median_ms": statistics.median(served),
        "p95_ms": float(np.percentile(served, 95)), "ort_ms": statistics.median(raw),
        "images_per_s_b8": 8 / statistics.median(batch_times),
        "model_mb": loaded.memory_mb, "process_mb": rss_loaded,
        "process_start_mb": rss_start,
        "tensorflow_imported": "tensorflow" in sys.modules,
    }
    if xla and backend == "keras":
        from inference.backends import KerasGraphBackend, median_ms

        started = time.perf_counter()
        compiled = KerasGraphBackend(loaded.keras_model, (224, 224), jit_compile=True)
        result["xla_compile_ms"] = (time.perf_counter() - started) * 1000
        result["xla_ms"] = median_ms(compiled.run, one, runs)
        result["graph_ms"] = median_ms(loaded.run_batch, one, runs)
    return result


def measure_all_models(folder: Path, runs: int) -> dict:
    """An "All models" CT request against the sum of its single-model requests."""
    from inference.service import InferenceService
    from tests.model_factory import png_bytes

    service = InferenceService(str(folder), max_loaded=4, backend="auto")
    image = png_bytes(size=(512, 512), seed=1)
    arches = [a for a in ARCHES if MODALITY[a] == "ct"]
    for arch in arches:
        service.analyse(image, "ct", arch)

    def request_ms(model: str) -> float:
        started = time.perf_counter()
        service.analyse(image, "ct", model)
        return (time.perf_counter() - started) * 1000

    all_times, sums = [], []
    singles = {arch: [] for arch in arches}
    for _ in range(runs):  # interleaved rounds: "all", then each model alone
        all_times.append(request_ms("all"))
        round_times = {arch: request_ms(arch) for arch in arches}
        for arch, elapsed in round_times.items():
            singles[arch].append(elapsed)
        sums.append(sum(round_times.values()))
    return {"all_ms": statistics.median(all_times), "sum_ms": statistics.median(sums),
            "singles": {a: statistics.median(t) for a, t in singles.items()}}


def run_worker(args) -> None:
    folder = Path(args.model_dir)
    if args.worker == "all":
        print(json.dumps(measure_all_models(folder, args.runs)))
    else:
        arch, backend = args.worker.split(":")
        print(json.dumps(measure(arch, backend, folder, args.runs, args.xla)))


def in_fresh_process(args, worker: str) -> dict:
    """Median of each measure over ``--repeat`` fresh processes (noise guard)."""
    results = [one_fresh_process(args, worker) for _ in range(args.repeat)]
    merged = dict(results[0])
    for key, value in merged.items():
        if isinstance(value, float):
            merged[key] = statistics.median(r[key] for r in results)
    return merged


def one_fresh_process(args, worker: str) -> dict:
    command = [sys.executable, __file__, "--worker", worker, "--model-dir", args.model_dir,
               "--runs", str(args.runs)] + (["--xla"] if args.xla else [])
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{worker} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict], info: dict, gflops: float) -> None:
    print(f"\nSGEMM (numpy, float32, 2048^2): {gflops:.0f} GFLOP/s on "
          f"{len(os.sched_getaffinity(0))} cores\n")
    header = ("| architecture | backend | GFLOP | load ms | first ms | warm median ms | "
              "p95 ms | img/s @8 | model MiB | process MiB | ONNX Runtime ms | "
              "x ONNX Runtime | arithmetic ms | x arithmetic |")
    print(header)
    print("| " + " | ".join("---" for _ in range(header.count("|") - 1)) + " |")
    for row in rows:
        gflop = info[row["arch"]]["gflop"]
        arithmetic = gflop / gflops * 1000
        print(f"| {row['arch']} | {row['backend']} | {gflop:.1f} | {row['load_ms']:.0f} | "
              f"{row['first_ms']:.0f} | {row['median_ms']:.1f} | {row['p95_ms']:.1f} | "
              f"{row['images_per_s_b8']:.1f} | {row['model_mb']:.0f} | "
              f"{row['process_mb']:.0f} | {row['ort_ms']:.1f} | "
              f"{row['median_ms'] / row['ort_ms']:.2f} | {arithmetic:.0f} | "
              f"{row['median_ms'] / arithmetic:.2f} |")
    xla = [r for r in rows if "xla_ms" in r]
    if xla:
        print("\n| architecture | Keras graph ms | Keras XLA ms | XLA compile ms |")
        print("| --- | --- | --- | --- |")
        for row in xla:
            print(f"| {row['arch']} | {row['graph_ms']:.1f} | {row['xla_ms']:.1f} | "
                  f"{row['xla_compile_ms']:.0f} |")
    print("\nauto serves (from the check at conversion, fastest of interleaved runs):")
    for arch in dict.fromkeys(r["arch"] for r in rows):
        keras_ms, onnx_ms = info[arch]["check_keras_ms"], info[arch]["check_onnx_ms"]
        choice = "onnx" if onnx_ms <= keras_ms * KERAS_MARGIN else "keras-graph"
        print(f"  {arch:12} {choice:12} (Keras {keras_ms:.0f} ms, ONNX {onnx_ms:.0f} ms)")
    conversions = [a for a in info if "convert_s" in info[a]]
    if conversions:
        print("\nONNX conversion (once per file): " + ", ".join(
            f"{a} {info[a]['convert_s']:.0f} s (max |diff| {info[a]['max_abs_diff']:.1e})"
            for a in conversions))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=ARCHES)
    parser.add_argument("--backend", action="append", choices=("keras", "onnx"))
    parser.add_argument("--runs", type=int, default=20, help="warm calls per measure")
    parser.add_argument("--model-dir", default=str(Path(tempfile.gettempdir())
                                                   / "covid-bench-models"))
    parser.add_argument("--xla", action="store_true", help="also time Keras with XLA")
    parser.add_argument("--no-all", action="store_true", help="skip the All-models check")
    parser.add_argument("--repeat", type=int, default=1,
                        help="fresh processes per measure; medians are reported")
    parser.add_argument("--reconvert", action="store_true",
                        help="convert again (and re-time the backends for auto)")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return

    arches = args.arch or list(ARCHES)
    folder = Path(args.model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"models in {folder} (built and converted once)", flush=True)
    info = in_fresh_process_prepare(folder, arches, args.reconvert)
    gflops = sgemm_gflops()
    rows = []
    for arch in arches:
        for backend in args.backend or ("keras", "onnx"):
            row = in_fresh_process(args, f"{arch}:{backend}")
            rows.append(row)
            print(f"{arch:12} {row['backend']:12} load {row['load_ms']:6.0f} ms  "
                  f"median {row['median_ms']:6.1f} ms  ORT {row['ort_ms']:6.1f} ms",
                  flush=True)
    print_table(rows, info, gflops)
    result = {"sgemm_gflops": gflops, "models": info, "rows": rows}
    if not args.no_all and all(a in arches for a in ARCHES if MODALITY[a] == "ct"):
        combined = in_fresh_process(args, "all")
        result["all_models"] = combined
        print(f"\nAll CT models in one request: {combined['all_ms']:.0f} ms; sum of the "
              f"three single-model requests: {combined['sum_ms']:.0f} ms "
              f"(ratio {combined['all_ms'] / combined['sum_ms']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def in_fresh_process_prepare(folder: Path, arches, force: bool = False) -> dict:
    """Building and converting imports TensorFlow: keep it out of this process."""
    code = ("import json, sys; sys.path.insert(0, %r); from bench.inference import "
            "prepare_models; from pathlib import Path; "
            "print(json.dumps(prepare_models(Path(%r), %r, %r)))"
            % (str(ROOT), str(folder), list(arches), force))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"preparing models failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
