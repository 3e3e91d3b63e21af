"""From drop-in to ONNX-served, per architecture, and what requests feel meanwhile.

    python -m bench.preparation [--arch vgg16 ...] [--idle] [--json out.json]

A real gunicorn server (``gunicorn.conf.py``, background preparation on) serves a
reference model that is already converted (ResNet50, X-ray). Each architecture's
full-size CT model (published shape, ``weights=None``) is then dropped into the model
folder while a client keeps sending requests to the reference model (``--idle``: no
client, for the time to ready alone). Reported: the
time until ``/api/v1/models`` says the new model is ``ready``; the reference model's
request latency during that conversion against idle; the new model's first request
after preparation, its backend, and its in-service ``inference_ms`` against a bare
ONNX Runtime session on the same file with the same threads.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import requests  # noqa: E402

from inference.registry import model_relpath  # noqa: E402
from tests.model_factory import full_size_model, install  # noqa: E402
from tests.server import start_server  # noqa: E402

ARCHS = ("vgg16", "vgg19", "inceptionv3", "resnet50")


def scan_png() -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def post(url: str, modality: str, arch: str, image: bytes) -> tuple[float, dict]:
    started = time.perf_counter()
    response = requests.post(url + "/api/v1/predict", files={"image": ("s.png", image)},
                             data={"modality": modality, "model": arch}, timeout=300)
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed, response.json()


def model_row(url: str, modality: str, arch: str) -> dict:
    rows = requests.get(url + "/api/v1/models", timeout=30).json()["models"]
    return next(r for r in rows if (r["modality"], r["architecture"]) == (modality, arch))


class Client(threading.Thread):
    """Sends requests to the reference model back to back, recording latencies."""

    def __init__(self, url: str, image: bytes):
        super().__init__(daemon=True)
        self.url, self.image, self.latencies = url, image, []
        self.running = threading.Event()
        self.running.set()

    def run(self):
        while self.running.is_set():
            self.latencies.append(post(self.url, "xray", "resnet50", self.image)[0])


def bare_onnx_ms(onnx_path: Path, threads: int, size: int = 224, runs: int = 7) -> float:
    from inference.runners import OnnxBackend

    runner = OnnxBackend(onnx_path, threads)
    batch = np.random.default_rng(1).random((1, size, size, 3), dtype=np.float32)
    runner.run(batch)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        runner.run(batch)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def drop_in(server, staging: Path, model_dir: Path, arch: str, image: bytes,
            busy: bool = True) -> dict:
    """Copy one model in, keep the reference busy (unless ``busy`` is off), wait until
    it is ready."""
    client = Client(server.url, image)
    if busy:
        client.start()
        time.sleep(3)
    source = staging / model_relpath(arch, "ct")
    target = model_dir / model_relpath(arch, "ct")
    target.parent.mkdir(parents=True, exist_ok=True)
    dropped = time.monotonic()
    shutil.copy2(source, target.with_suffix(".part"))
    os.replace(target.with_suffix(".part"), target)
    os.utime(target)  # a fresh file, as a copy by hand would be
    before = len(client.latencies)
    while (state := model_row(server.url, "ct", arch)["preparation"]) != "ready":
        if state and state.startswith("failed"):
            raise RuntimeError(f"{arch}: {state}")
        time.sleep(0.5)
    ready_s = time.monotonic() - dropped
    during = client.latencies[before:]
    client.running.clear()
    if busy:
        client.join()
    first_ms, first = post(server.url, "ct", arch, image)
    served = [post(server.url, "ct", arch, image)[1]["results"][0]["inference_ms"]
              for _ in range(7)]
    onnx_file = next(target.parent.glob(f"{target.stem}.*.onnx"))
    return {"architecture": arch, "client_during_conversion": busy,
            "drop_in_to_ready_s": round(ready_s, 1),
            "requests_during_conversion": len(during),
            "latency_during_conversion_median_ms": round(statistics.median(during), 1)
            if during else None,
            "latency_during_conversion_max_ms": round(max(during), 1) if during else None,
            "first_request_ms": round(first_ms, 1),
            "backend": model_row(server.url, "ct", arch)["backend"],
            "served_inference_ms": round(statistics.median(served), 1),
            "bare_onnx_ms": round(bare_onnx_ms(onnx_file, int(server.env.get(
                "FLASK_INFERENCE_THREADS") or os.cpu_count())), 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=ARCHS)
    parser.add_argument("--json")
    parser.add_argument("--idle", action="store_true",
                        help="no requests during the conversions (time to ready alone)")
    args = parser.parse_args(argv)
    from inference.preparation import convert_entry
    from inference.registry import discover

    root = Path(tempfile.mkdtemp(prefix="bench-preparation-"))
    staging, model_dir = root / "staging", root / "models"
    install(full_size_model("resnet50"), model_dir, "resnet50", "xray")
    convert_entry(next(e for e in discover(model_dir) if e.key == ("xray", "resnet50")))
    for arch in args.arch or ARCHS:
        install(full_size_model(arch), staging, arch, "ct")
    image = scan_png()
    server = start_server(root / "server", model_dir, workers=1,
                          env={"FLASK_PREPARE_MODELS": "true"}, startup_timeout=120)
    try:
        post(server.url, "xray", "resnet50", image)  # load the reference
        idle = [post(server.url, "xray", "resnet50", image)[0] for _ in range(10)]
        rows = [{"reference_idle_median_ms": round(statistics.median(idle), 1)}]
        print(json.dumps(rows[0]), flush=True)
        for arch in args.arch or ARCHS:
            rows.append(drop_in(server, staging, model_dir, arch, image, not args.idle))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
        log = server.log_text()
    rows.append({"clean_stop": server.process.returncode == 0,
                 "aborts_in_log": log.count("terminate called") + log.count("Aborted")})
    print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2), encoding="utf-8")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
