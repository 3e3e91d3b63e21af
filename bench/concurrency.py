"""Throughput of the served app under 1 and 8 concurrent clients, through gunicorn.

    python bench/concurrency.py [--arch resnet50] [--requests 32]

Starts ``gunicorn -c gunicorn.conf.py "app:create_app()"`` on a free local port with the
benchmark's full-size models (``bench/inference.py`` builds and converts them), warms
the chosen model, then posts the same image as fast as one client, and then eight
clients, can. Prints requests per second, latency percentiles and any non-200 answer.
"""

from __future__ import annotations

import argparse
import http.client
import json
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODALITY = {"vgg16": "ct", "vgg19": "ct", "inceptionv3": "ct", "resnet50": "xray"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def multipart(fields: dict, image: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             .encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                 f'filename="scan.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
                 + image + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def post(port: int, body: bytes, content_type: str) -> tuple[int, float]:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    connection.request("POST", "/api/v1/predict", body, {"Content-Type": content_type})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response.status, (time.perf_counter() - started) * 1000


def load(port: int, clients: int, total: int, body: bytes, content_type: str) -> dict:
    latencies, statuses, lock = [], [], threading.Lock()
    remaining = iter(range(total))

    def client():
        while True:
            with lock:
                if next(remaining, None) is None:
                    return
            status, elapsed = post(port, body, content_type)
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


def wait_until_loaded(port: int, modality: str, arch: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/api/v1/models")
            models = json.loads(connection.getresponse().read())["models"]
            row = next(m for m in models if (m["modality"], m["architecture"]) == (modality, arch))
            if row["loaded"]:
                return row
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(1)
    raise SystemExit("the server did not load the model in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50", choices=sorted(MODALITY))
    parser.add_argument("--model", default=None, help="request this model (default: arch)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--backend", default="auto", choices=("auto", "keras", "onnx"))
    parser.add_argument("--model-dir", default=str(Path(tempfile.gettempdir())
                                                   / "covid-bench-models"))
    args = parser.parse_args()
    from tests.model_factory import png_bytes

    modality = MODALITY[args.arch]
    port = free_port()
    instance = tempfile.mkdtemp(prefix="covid-bench-instance-")
    env = dict(os.environ, GUNICORN_BIND=f"127.0.0.1:{port}", FLASK_MODEL_DIR=args.model_dir,
               FLASK_INSTANCE_PATH=instance, FLASK_RATELIMIT_ENABLED="false",
               FLASK_INFERENCE_BACKEND=args.backend, FLASK_PREPARE_MODELS="false",
               FLASK_WARM_MODELS=f"{modality}:{args.arch}", TF_CPP_MIN_LOG_LEVEL="3")
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                               "app:create_app()"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        row = wait_until_loaded(port, modality, args.arch)
        print(f"{args.arch} served by {row['backend']} (loaded in {row['load_ms']:.0f} ms, "
              f"+{row['memory_mb']:.0f} MiB)")
        body, content_type = multipart({"modality": modality,
                                        "model": args.model or args.arch},
                                       png_bytes(size=(512, 512), seed=1))
        for _ in range(3):
            post(port, body, content_type)  # warm every request thread's path
        results = [load(port, clients, args.requests, body, content_type)
                   for clients in (1, 8, 1, 8)]  # twice, interleaved, against drift
        print("| clients | requests | requests/s | median ms | p95 ms | errors |")
        print("| --- | --- | --- | --- | --- | --- |")
        for r in results:
            print(f"| {r['clients']} | {r['requests']} | {r['per_s']:.2f} | "
                  f"{r['median_ms']:.0f} | {r['p95_ms']:.0f} | {r['errors']} |")
        one = statistics.median(r["per_s"] for r in results if r["clients"] == 1)
        eight = statistics.median(r["per_s"] for r in results if r["clients"] == 8)
        print(f"\n8 clients / 1 client throughput: {eight / one:.2f}")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
