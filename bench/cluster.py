"""Study throughput of the loopback cluster (tests/cluster.py) with one worker, then two.

    python bench/cluster.py [--images 300] [--studies 4] [--rounds 3] [--full-size ARCH]

PostgreSQL, Redis, two web replicas behind HAProxy and one `flask worker`; the same
workload (``--images`` CT slices split over ``--studies`` studies, submitted at once
through the balancer) runs with one worker, then again after a second worker joins.
A study is one worker's job, so a second worker can only help with several studies.

Without ``--full-size`` the model is a tiny real Keras model (32 x 32 inputs): the
figures then measure the system's own cost per image (upload, database, queue,
decoding, storing results), not the CNNs'. Each phase first runs small studies until
every worker has finished one (TensorFlow and the model loaded) before the clock runs,
then the workload ``--rounds`` times; the median round is reported.

Prints JSON: per phase the images per second (from the first submission to the last
study done, and over the workers' own span, first start to last finish in the
database), the ratio of two workers to one, the cores, and the projection per machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster import cluster, wait_for  # noqa: E402
from tests.model_factory import (full_size_model, install, scan_like_png,  # noqa: E402
                                 tiny_model)

DEADLINE_S = 1800  # a hang guard for the slowest models


def models(folder: Path, full_size: str | None) -> Path:
    """A tiny VGG16 CT model, or a full-size ``full_size`` one (random weights: the
    same cost per image as the published model)."""
    if full_size:
        install(full_size_model(full_size), folder, full_size, "ct")
    else:
        install(tiny_model(seed=0), folder, "vgg16", "ct", {"input_size": [32, 32]})
    return folder


def submit(url: str, arch: str, images: list[tuple[str, bytes]]) -> str:
    answer = requests.post(url + "/api/v1/studies", data={"modality": "ct", "model": arch},
                           files=[("images", (n, d, "image/png")) for n, d in images],
                           timeout=600)
    answer.raise_for_status()
    return url + answer.json()["url"]


def finished(url: str) -> bool:
    status = requests.get(url + "?images=0", timeout=60).json()["status"]
    if status == "failed":
        raise RuntimeError(f"study failed: {url}")
    return status == "done"


def run_workload(running, arch: str, workloads: list[list[tuple[str, bytes]]]) -> dict:
    """Submit the studies at once; wait for all; the wall time and the workers' span."""
    started = time.monotonic()
    with ThreadPoolExecutor(len(workloads)) as pool:
        urls = list(pool.map(lambda images: submit(running.url, arch, images), workloads))
    wait_for(lambda: all(finished(url) for url in urls), "the studies", DEADLINE_S)
    wall = time.monotonic() - started
    ids = [url.rsplit("/", 1)[1] for url in urls]
    span = running.postgres.scalar(
        "SELECT EXTRACT(EPOCH FROM max(finished_at) - min(started_at)) FROM studies "
        "WHERE id = ANY(:ids)", ids=ids)
    images = sum(len(w) for w in workloads)
    return {"images": images, "studies": len(workloads), "wall_s": round(wall, 2),
            "worker_span_s": round(float(span), 2),
            "images_per_s_wall": round(images / wall, 1),
            "images_per_s_workers": round(images / float(span), 1)}


def warm_up(running, arch: str) -> None:
    """Small studies, one per worker at once, until every worker has finished one: each
    has then started, loaded TensorFlow and the model, before the clock runs."""
    def warm(log: Path) -> bool:
        return log.exists() and ": done" in log.read_text(errors="replace")

    for _ in range(20):
        logs = [log for worker, log in zip(running.workers, running.worker_logs)
                if worker.poll() is None]
        if all(warm(log) for log in logs):
            return
        run_workload(running, arch, [[(f"w{i}.png", scan_like_png(size=(96, 96), seed=i))
                                for i in range(4)] for _ in logs])
        time.sleep(1)
    raise RuntimeError("a worker never took a study")


def measure(running, arch: str, workloads, rounds: int) -> dict:
    """The round with the median worker span, and every round's rate."""
    results = sorted((run_workload(running, arch, workloads) for _ in range(rounds)),
                     key=lambda r: r["worker_span_s"])
    median = dict(results[len(results) // 2])
    median["rounds_images_per_s"] = [r["images_per_s_workers"] for r in results]
    return median


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="runs per phase (median)")
    parser.add_argument("--size", type=int, default=96, help="slice side in pixels")
    parser.add_argument("--full-size", choices=["vgg16", "resnet50"],
                        help="a full-size CT model of this architecture (default: tiny)")
    args = parser.parse_args()
    arch = args.full_size or "vgg16"
    root = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    model_dir = models(root / "models", args.full_size)
    per_study = args.images // args.studies
    workloads = [[(f"s{s}-{i}.png", scan_like_png(size=(args.size, args.size), seed=i))
                  for i in range(per_study)] for s in range(args.studies)]
    with cluster(root / "cluster", model_dir, replicas=2, workers=1) as running:
        warm_up(running, arch)
        one = measure(running, arch, workloads, args.rounds)
        running.start_worker()
        warm_up(running, arch)
        two = measure(running, arch, workloads, args.rounds)
    cores = len(os.sched_getaffinity(0))
    ratio = two["images_per_s_workers"] / one["images_per_s_workers"]
    print(json.dumps({
        "models": f"full-size {arch} (224 x 224)" if args.full_size
        else "tiny VGG16 (32 x 32): the system's own cost per image",
        "cores": cores, "one_worker": one, "two_workers": two, "ratio": round(ratio, 2),
        "projection": f"{one['images_per_s_workers']} images/s x machines, one worker "
                      "per machine (no cores shared)",
        "note": f"on this {cores}-core machine the two workers (each forward pass uses "
                "every core it is given) share the cores with each other, the web replicas, "
                "PostgreSQL and Redis, so the ratio is bounded by the cores; on separate "
                "machines each added worker brings its own cores: the single-worker rate "
                "times the machines"},
        indent=2))


if __name__ == "__main__":
    main()
