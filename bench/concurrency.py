"""Throughput under 1 and 8 concurrent clients, and the batches actually formed.

    python bench/concurrency.py [--arch resnet50] [--requests 32] [--no-http]

Uses the benchmark's full-size models (``bench/inference.py`` builds and converts
them). In process: one ``InferenceService`` sized as a gunicorn worker is (its
intra-op threads, one forward pass at a time), called from 1 and then 8 threads, as
a worker's request threads call it, with the same 512 x 512 PNG; the model's own
``batcher.batch_sizes`` counts the batches each round formed. Over HTTP: the same
rounds against ``gunicorn -c gunicorn.conf.py "app:create_app()"`` on loopback (the
server does not expose batch sizes). Rounds run 1, 8, 1, 8 clients, interleaved
against drift; the 8-vs-1 ratio is the median 8-client throughput over the median
1-client throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MODALITY = {"vgg16": "ct", "vgg19": "ct", "inceptionv3": "ct", "resnet50": "xray"}
DEFAULT_MODEL_DIR = str(Path(tempfile.gettempdir()) / "covid-bench-models")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@contextlib.contextmanager
def gunicorn_server(model_dir: str, backend: str = "auto", timeout: float = 120):
    """The app under the project's gunicorn.conf.py (its worker and thread sizing) on a
    free loopback port; yields the port once ``/readyz`` answers. No conversion runs."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASK_")}
    env.update(GUNICORN_BIND=f"127.0.0.1:{port}", FLASK_MODEL_DIR=str(model_dir),
               FLASK_INSTANCE_PATH=tempfile.mkdtemp(prefix="covid-bench-instance-"),
               FLASK_RATELIMIT_ENABLED="false", FLASK_INFERENCE_BACKEND=backend,
               FLASK_PREPARE_MODELS="false", TF_CPP_MIN_LOG_LEVEL="3")
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                               "app:create_app()"], cwd=ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while not _ready(port):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"gunicorn did not start (exit status {server.poll()})")
            time.sleep(0.3)
        yield port
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _ready(port: int) -> bool:
    try:
        return _get(port, "/readyz")[0] == 200
    except OSError:
        return False


def multipart(fields: dict, image: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             .encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                 f'filename="scan.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
                 + image + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def poster(port: int, image: bytes, modality: str, model: str):
    """A call that POSTs the image to /api/v1/predict on a new connection; returns the
    HTTP status."""
    body, content_type = multipart({"modality": modality, "model": model}, image)

    def post() -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            connection.request("POST", "/api/v1/predict", body,
                               {"Content-Type": content_type})
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    return post


def served_backend(port: int, modality: str, arch: str) -> str | None:
    import json

    models = json.loads(_get(port, "/api/v1/models")[1])["models"]
    return next(m["backend"] for m in models if (m["modality"], m["architecture"])
                == (modality, arch))


def worker_threads() -> int:
    """A gunicorn worker's intra-op threads, as gunicorn.conf.py sizes them here."""
    import runpy

    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    return conf["inference_threads"](conf["workers"])


def bare_onnx(model_dir: str, arch: str):
    """A call running the model's ONNX conversion on a preprocessed 512 x 512 PNG in a
    plain session with a worker's options (its threads, sequential, no spinning)."""
    from inference.conversion import file_sha256, find_verified_onnx
    from inference.preprocess import decode_image, model_input
    from inference.registry import discover
    from inference.runners import OnnxBackend
    from tests.model_factory import png_bytes

    entry = next(e for e in discover(model_dir) if e.key == (MODALITY[arch], arch))
    session = OnnxBackend(find_verified_onnx(entry.path, file_sha256(entry.path)),
                          worker_threads()).session
    pixels = decode_image(png_bytes(size=(512, 512), seed=1)).pixels
    feed = {session.get_inputs()[0].name: model_input(pixels, entry.card)[None, ...]}
    return lambda: session.run(None, feed)


def http_latency(model_dir: str, arch: str, runs: int) -> dict:
    """One client's POST /api/v1/predict (a 512 x 512 PNG) through gunicorn, after three
    warm-up requests (the first loads the model), each followed by a bare ONNX Runtime
    run in this process: both medians come from the same minutes."""
    from tests.model_factory import png_bytes

    modality, bare = MODALITY[arch], bare_onnx(model_dir, arch)
    with gunicorn_server(model_dir) as port:
        post = poster(port, png_bytes(size=(512, 512), seed=1), modality, arch)
        http, bare_ms = [], []
        for attempt in range(3 + runs):
            started = time.perf_counter()
            if post() != 200:
                raise SystemExit(f"{arch}: the server did not answer 200")
            middle = time.perf_counter()
            bare()
            if attempt >= 3:
                http.append((middle - started) * 1000)
                bare_ms.append((time.perf_counter() - middle) * 1000)
        backend = served_backend(port, modality, arch)
    http.sort()
    return {"http_ms": statistics.median(http), "http_p95_ms": http[int(0.95 * (len(http) - 1))],
            "http_bare_ms": statistics.median(bare_ms), "http_backend": backend}


def load(call, clients: int, total: int) -> dict:
    """``total`` calls shared by ``clients`` threads; a call returns an HTTP status."""
    latencies, statuses, lock = [], [], threading.Lock()
    remaining = iter(range(total))

    def client():
        while True:
            with lock:
                if next(remaining, None) is None:
                    return
            started = time.perf_counter()
            status = call()
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                statuses.append(status)
                latencies.append(elapsed)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies.sort()
    return {"clients": clients, "requests": total, "per_s": total / wall,
            "median_ms": statistics.median(latencies),
            "p95_ms": latencies[int(0.95 * (len(latencies) - 1))],
            "errors": sum(1 for s in statuses if s != 200)}


def rounds(call, total: int, batch_sizes: Counter | None = None) -> list[dict]:
    """1, 8, 1, 8 clients after three warm-up calls; with ``batch_sizes`` (the live
    counter), each round also gets the batch sizes it formed."""
    for _ in range(3):
        call()
    results = []
    for clients in (1, 8, 1, 8):
        before = Counter(batch_sizes or {})
        result = load(call, clients, total)
        if batch_sizes is not None:
            result["batches"] = dict(sorted((Counter(batch_sizes) - before).items()))
        results.append(result)
    return results


def in_process(args, image: bytes) -> list[dict]:
    from inference.runtime import intra_op_threads
    from inference.service import InferenceService

    modality = MODALITY[args.arch]
    service = InferenceService(args.model_dir, threads=intra_op_threads(),
                               backend=args.backend)

    def call() -> int:
        try:
            service.analyse(image, modality, args.arch)
            return 200
        except Exception:  # noqa: BLE001 - counted as an error, like a 5xx
            return 500

    call()  # loads the model, so its batcher exists
    entry = next(e for e in service.entries() if e.key == (modality, args.arch))
    loaded = service.load(entry)
    print(f"in process: {args.arch} served by {loaded.backend_name}, "
          f"{intra_op_threads()} intra-op threads", flush=True)
    return rounds(call, args.requests, loaded.batcher.batch_sizes)


def over_http(args, image: bytes) -> list[dict]:
    modality = MODALITY[args.arch]
    with gunicorn_server(args.model_dir, args.backend) as port:
        results = rounds(poster(port, image, modality, args.arch), args.requests)
        print(f"gunicorn: {args.arch} served by {served_backend(port, modality, args.arch)}",
              flush=True)
    return results


def report(title: str, results: list[dict]) -> float:
    print(f"\n{title}\n")
    print("| clients | requests | requests/s | median ms | p95 ms | errors | batch sizes formed |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        batches = ", ".join(f"{size} x{count}" for size, count in r.get("batches", {}).items())
        print(f"| {r['clients']} | {r['requests']} | {r['per_s']:.2f} | {r['median_ms']:.0f} | "
              f"{r['p95_ms']:.0f} | {r['errors']} | {batches or 'n/a'} |")
    one = statistics.median(r["per_s"] for r in results if r["clients"] == 1)
    eight = statistics.median(r["per_s"] for r in results if r["clients"] == 8)
    print(f"\n8 clients / 1 client throughput: {eight / one:.2f}")
    return eight / one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50", choices=sorted(MODALITY))
    parser.add_argument("--requests", type=int, default=32, help="requests per round")
    parser.add_argument("--backend", default="auto", choices=("auto", "keras", "onnx"))
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_DIR)
    parser.add_argument("--no-http", action="store_true", help="in process only")
    args = parser.parse_args()
    from tests.model_factory import png_bytes

    image = png_bytes(size=(512, 512), seed=1)
    report("In process (InferenceService, threads as request threads):",
           in_process(args, image))
    if not args.no_http:
        report("Through gunicorn on loopback (POST /api/v1/predict):", over_http(args, image))


if __name__ == "__main__":
    main()
