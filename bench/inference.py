"""Inference benchmark: what each architecture costs to load and to serve, per backend.

    python bench/inference.py [--arch vgg16 --arch resnet50] [--runs 20] [--xla]

Builds the four published networks at full size (224 x 224, ``weights=None``) once in
a scratch folder and converts each with the app's ``convert_entry``. Then, for each
architecture in turn: an SGEMM rate measurement, each backend in a fresh process (so
load time and memory are its own), and ``POST /api/v1/predict`` through gunicorn
(interleaved with a bare session in this process, so both see the same minutes).

Each process interleaves the served call (preprocessing, batcher, forward pass, as a
request runs it) with a bare ONNX Runtime session on the same file and input, built
with the served session's own options (intra-op threads, sequential, no spinning).
For an ONNX-served row that session is what the service wraps: served / bare is the
wrapper's overhead, not a speed comparison. For a Keras row it compares the Keras
graph with ONNX Runtime on the same threads. "x arithmetic" is the served time over
FLOPs / the SGEMM rate measured just before. The machine may be shared: medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from bench.concurrency import DEFAULT_MODEL_DIR, MODALITY, http_latency  # noqa: E402
from inference.conversion import KERAS_MARGIN  # noqa: E402 - imports no TensorFlow

ARCHES = ("vgg16", "vgg19", "inceptionv3", "resnet50")


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def sgemm_gflops(n: int = 2048, runs: int = 5) -> float:
    """Median single-precision matrix multiply rate with numpy's BLAS, all cores."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b
    (times,) = interleaved([lambda: a @ b], runs)
    return 2 * n**3 / statistics.median(times) / 1e6


def model_flops(model) -> float:
    """2 x multiply-adds of Conv2D and Dense layers: where nearly all the time goes."""
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            _, height, width, out_channels = layer.output.shape
            kh, kw = layer.kernel_size
            total += 2 * height * width * out_channels * kh * kw * layer.input.shape[-1]
        elif kind == "Dense":
            total += 2 * layer.input.shape[-1] * layer.units
    return float(total)


def prepare_models(folder: Path, arches, force: bool = False) -> dict:
    """Save each full-size model (once) and its checked ONNX conversion; FLOPs too."""
    from inference.preparation import convert_entry
    from inference.registry import discover
    from tests.model_factory import full_size_model, install

    info_path = folder / "models.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    for arch in arches:
        if arch not in info:
            model = full_size_model(arch)
            install(model, folder, arch, MODALITY[arch])
            info[arch] = {"gflop": model_flops(model) / 1e9}
            del model
        entry = next(e for e in discover(folder) if e.key == (MODALITY[arch], arch))
        _, report, converted = convert_entry(entry, None, 0, force)
        if converted:
            info[arch]["convert_s"] = report.convert_s
        info[arch].update(max_abs_diff=report.max_abs_diff, check_keras_ms=report.keras_ms,
                          check_onnx_ms=report.onnx_ms)
        info_path.write_text(json.dumps(info, indent=2))
    return info


def bare_session(loaded, onnx_path: Path):
    """A plain ONNX Runtime session on ``onnx_path`` with the served session's options
    (for a Keras-served model: the options the service gives ONNX Runtime, same threads)."""
    import onnxruntime as ort

    from inference.runners import OnnxBackend

    served = loaded.runner
    if not isinstance(served, OnnxBackend):
        served = OnnxBackend(onnx_path, loaded.threads)
    options = served.session.get_session_options()
    session = ort.InferenceSession(str(onnx_path), options,
                                   providers=["CPUExecutionProvider"])
    spinning = options.get_session_config_entry("session.intra_op.allow_spinning")
    return session, (f"intra {options.intra_op_num_threads}, inter "
                     f"{options.inter_op_num_threads}, {options.execution_mode.name}, "
                     f"allow_spinning={spinning}")


def interleaved(calls: list, runs: int) -> list[list[float]]:
    """Times (ms) of each call, called in turn, so all see the same machine load."""
    times = [[] for _ in calls]
    for _ in range(runs):
        for call, sink in zip(calls, times):
            started = time.perf_counter()
            call()
            sink.append(ms_since(started))
    return times


def measure(arch: str, backend: str, folder: Path, runs: int, xla: bool) -> dict:
    """One process, one model: load, first call, warm calls, batch of 8, memory."""
    from inference.cache import ModelCache
    from inference.predict import run_model
    from inference.preprocess import decode_image, model_input
    from inference.registry import discover
    from inference.runtime import intra_op_threads, resident_memory_mb
    from tests.model_factory import png_bytes

    entry = next(e for e in discover(folder) if e.key == (MODALITY[arch], arch))
    decoded = decode_image(png_bytes(size=(512, 512), seed=1))
    rss_start, started = resident_memory_mb(), time.perf_counter()
    cache = ModelCache(backend=backend)
    loaded = cache.get(entry)
    load_ms, started = ms_since(started), time.perf_counter()
    run_model(loaded, decoded)
    first_ms, rss_loaded = ms_since(started), resident_memory_mb()

    one = model_input(decoded.pixels, entry.card)[None, ...]
    session, settings = bare_session(loaded, cache.onnx_file(entry))
    feed = {session.get_inputs()[0].name: one}
    session.run(None, feed)
    served, bare, preprocess = interleaved(
        [lambda: run_model(loaded, decoded), lambda: session.run(None, feed),
         lambda: model_input(decoded.pixels, entry.card)], runs)
    eight = np.repeat(one, 8, axis=0)
    loaded.run_batch(eight)
    single, batched = interleaved([lambda: loaded.run_batch(one),
                                   lambda: loaded.run_batch(eight)], max(3, runs // 5))
    result = {
        "arch": arch, "backend": loaded.backend_name, "load_ms": load_ms,
        "first_ms": first_ms, "median_ms": statistics.median(served),
        "p95_ms": float(np.percentile(served, 95)), "bare_ms": statistics.median(bare),
        "preprocess_ms": statistics.median(preprocess),
        "images_per_s_b8": 8000 / statistics.median(batched),
        "images_per_s_b1": 1000 / statistics.median(single),
        "model_mb": loaded.memory_mb, "process_mb": rss_loaded, "process_start_mb": rss_start,
        "served_threads": intra_op_threads(loaded.threads), "bare_session": settings,
        "tensorflow_imported": "tensorflow" in sys.modules}
    if xla and backend == "keras":
        result.update(measure_xla(loaded, one, runs))
    return result


def measure_xla(loaded, one: np.ndarray, runs: int) -> dict:
    from inference.conversion import median_ms
    from inference.runners import KerasGraphBackend

    started = time.perf_counter()
    compiled = KerasGraphBackend(loaded.keras_model, loaded.card.input_size, jit_compile=True)
    compile_ms = ms_since(started)
    return {"xla_compile_ms": compile_ms, "xla_ms": median_ms(compiled.run, one, runs),
            "graph_ms": median_ms(loaded.runner.run, one, runs)}


def measure_all_models(folder: Path, runs: int) -> dict:
    """An "All models" CT request against the sum of its single-model requests."""
    from inference.service import InferenceService
    from tests.model_factory import png_bytes

    service = InferenceService(str(folder), max_loaded=4, backend="auto")
    image = png_bytes(size=(512, 512), seed=1)
    arches = [a for a in ARCHES if MODALITY[a] == "ct"]
    for arch in arches:
        service.analyse(image, "ct", arch)
    calls = [lambda: service.analyse(image, "ct", "all")]
    calls += [lambda arch=arch: service.analyse(image, "ct", arch) for arch in arches]
    all_times, *singles = interleaved(calls, runs)
    sums = [sum(round_times) for round_times in zip(*singles)]
    return {"all_ms": statistics.median(all_times), "sum_ms": statistics.median(sums),
            "singles": {a: statistics.median(t) for a, t in zip(arches, singles)}}


def in_fresh_process(args, worker: str, repeat: int = 1) -> dict:
    """One measure in a fresh process (building, converting and Keras import TensorFlow:
    keep it out of this one); with ``repeat``, the median of each figure."""
    command = [sys.executable, __file__, "--worker", worker, "--model-dir", args.model_dir,
               "--runs", str(args.runs)] + (["--xla"] if args.xla else [])
    command += [f"--arch={arch}" for arch in args.arch or ()]
    command += ["--reconvert"] if args.reconvert else []
    results = []
    for _ in range(repeat):
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            raise SystemExit(f"{worker} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {key: statistics.median(r[key] for r in results) if isinstance(value, float)
            else value for key, value in results[0].items()}


def run_worker(args) -> dict:
    folder = Path(args.model_dir)
    if args.worker == "prepare":
        return prepare_models(folder, args.arch or ARCHES, args.reconvert)
    if args.worker == "all":
        return measure_all_models(folder, args.runs)
    arch, backend = args.worker.split(":")
    return measure(arch, backend, folder, args.runs, args.xla)


def print_tables(rows: list[dict], info: dict, sgemm: dict, http: dict) -> None:
    rates = list(sgemm.values())
    print(f"\nSGEMM (numpy, float32, 2048^2, before each architecture): min "
          f"{min(rates):.0f}, median {statistics.median(rates):.0f} GFLOP/s on "
          f"{len(os.sched_getaffinity(0))} cores\n")
    print("| architecture | backend | GFLOP | load ms | first ms | served median ms | p95 ms "
          "| preprocess ms | bare ORT ms | wrapper overhead (served / bare) | Keras graph / "
          "bare ORT | img/s at batch 1 / 8 | model MiB | SGEMM GFLOP/s | x arithmetic |")
    print("|" + " --- |" * 15)
    for row in rows:
        arch, ratio = row["arch"], row["median_ms"] / row["bare_ms"]
        gflop = info[arch]["gflop"]
        onnx = row["backend"] == "onnx"
        print(f"| {arch} | {row['backend']} | {gflop:.1f} | {row['load_ms']:.0f} | "
              f"{row['first_ms']:.0f} | {row['median_ms']:.1f} | {row['p95_ms']:.1f} | "
              f"{row['preprocess_ms']:.1f} | {row['bare_ms']:.1f} | "
              f"{f'{ratio:.2f}' if onnx else '-'} | {'-' if onnx else f'{ratio:.2f}'} | "
              f"{row['images_per_s_b1']:.1f} / {row['images_per_s_b8']:.1f} | "
              f"{row['model_mb']:.0f} | {sgemm[arch]:.0f} | "
              f"{row['median_ms'] / (gflop / sgemm[arch] * 1000):.2f} |")
    if http:
        print("\n| architecture | HTTP backend | HTTP median ms | HTTP p95 ms | bare ORT ms "
              "(interleaved) | HTTP - bare ms | HTTP / bare |\n" + "|" + " --- |" * 7)
    for arch, h in http.items():
        print(f"| {arch} | {h['http_backend']} | {h['http_ms']:.1f} | {h['http_p95_ms']:.1f} | "
              f"{h['http_bare_ms']:.1f} | {h['http_ms'] - h['http_bare_ms']:.1f} | "
              f"{h['http_ms'] / h['http_bare_ms']:.2f} |")
    print_extras(rows, info)


def print_extras(rows: list[dict], info: dict) -> None:
    for row in (r for r in rows if "xla_ms" in r):
        print(f"{row['arch']}: Keras graph {row['graph_ms']:.1f} ms, with XLA "
              f"{row['xla_ms']:.1f} ms ({row['xla_compile_ms']:.0f} ms to compile)")
    print(f"\nbare ORT sessions: {'; '.join({r['bare_session'] for r in rows})}; served "
          f"intra-op threads: {sorted({r['served_threads'] for r in rows})}")
    for arch in dict.fromkeys(r["arch"] for r in rows):  # the check made at conversion
        item = info[arch]
        keras_ms, onnx_ms = item["check_keras_ms"], item["check_onnx_ms"]
        print(f"{arch}: auto serves {'onnx' if onnx_ms <= keras_ms * KERAS_MARGIN else 'keras'} "
              f"(check: Keras {keras_ms:.0f} ms, ONNX {onnx_ms:.0f} ms; max |diff| "
              f"{item['max_abs_diff']:.1e}; converted in {item.get('convert_s', 0):.0f} s)")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=ARCHES)
    parser.add_argument("--backend", action="append", choices=("keras", "onnx"))
    parser.add_argument("--runs", type=int, default=20, help="warm calls per measure")
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_DIR)
    parser.add_argument("--xla", action="store_true", help="also time Keras with XLA")
    parser.add_argument("--no-all", action="store_true", help="skip the All-models check")
    parser.add_argument("--no-http", action="store_true", help="skip the gunicorn latency")
    parser.add_argument("--repeat", type=int, default=1,
                        help="fresh processes per measure; medians are reported")
    parser.add_argument("--reconvert", action="store_true",
                        help="convert again (and re-time the backends for auto)")
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(run_worker(args)))
        return
    arches = args.arch or list(ARCHES)
    folder = Path(args.model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"models in {folder} (built and converted once)", flush=True)
    info = in_fresh_process(args, "prepare")
    rows, sgemm, http = [], {}, {}
    for arch in arches:  # each architecture's block: SGEMM, backends, HTTP
        sgemm[arch] = sgemm_gflops()
        for backend in args.backend or ("keras", "onnx"):
            rows.append(row := in_fresh_process(args, f"{arch}:{backend}", args.repeat))
            print(f"{arch:12} {row['backend']:12} served {row['median_ms']:6.1f} ms  bare "
                  f"ORT {row['bare_ms']:6.1f} ms  SGEMM {sgemm[arch]:.0f}", flush=True)
        if not args.no_http:
            http[arch] = http_latency(str(folder), arch, args.runs)
            print(f"{arch:12} HTTP {http[arch]['http_ms']:6.1f} ms", flush=True)
    print_tables(rows, info, sgemm, http)
    result = {"sgemm_gflops": sgemm, "models": info, "rows": rows, "http": http}
    if not args.no_all and all(a in arches for a in ARCHES if MODALITY[a] == "ct"):
        result["all_models"] = combined = in_fresh_process(args, "all", args.repeat)
        print(f"\nAll CT models in one request: {combined['all_ms']:.0f} ms; sum of the "
              f"three single-model requests: {combined['sum_ms']:.0f} ms "
              f"(ratio {combined['all_ms'] / combined['sum_ms']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
