"""Load and durability through a real gunicorn server on loopback.

* 8 concurrent clients send predictions for ``LOAD_DURATION_S`` seconds (60 by
  default): zero errors; p50 / p95 printed and written to test-artifacts/load.json.
* Memory: the workers' resident memory stays flat over 1,000 predictions after warm-up.
* 500 contact messages posted concurrently (with real CSRF tokens): all stored, once.
* SIGKILL in the middle of a contact load: every message whose POST was answered with
  success is in the database afterwards, and the server starts again on it.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sqlite3
import statistics
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from .hostile_corpus import dicom_bytes, encode, noise
from .server import ROOT, rss_mb, start_server

pytestmark = [pytest.mark.load,
              pytest.mark.alone]  # timed: make test runs it with no other test beside it

LOAD_DURATION_S = float(os.environ.get("LOAD_DURATION_S", "60"))
CLIENTS = 8
MEMORY_PREDICTIONS = 1000
MEMORY_GROWTH_LIMIT_MB = 64  # generous: a leak or retracing costs far more over 1,000
CONTACT_MESSAGES = 500
ARTIFACTS = ROOT / "test-artifacts"
CSRF_INPUT = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')

CHOICES = [("ct", "vgg16"), ("ct", "vgg19"), ("ct", "inceptionv3"), ("ct", "all"),
           ("xray", "vgg16"), ("xray", "resnet50"), ("xray", "all")]
UPLOADS = [("scan.png", encode(noise((224, 224)), "PNG"), "image/png"),
           ("scan.jpg", encode(noise((512, 512), seed=3), "JPEG"), "image/jpeg"),
           ("slice.dcm", dicom_bytes(128, 128), "application/dicom")]


@pytest.fixture(scope="module")
def server_models(tmp_path_factory, tiny_model_dir):
    """A private copy: the server may write converted models beside the files."""
    target = tmp_path_factory.mktemp("load") / "models"
    shutil.copytree(tiny_model_dir, target)
    return target


@pytest.fixture(scope="module")
def live(tmp_path_factory, server_models):
    server = start_server(tmp_path_factory.mktemp("load_server"), server_models, workers=2)
    yield server
    server.stop()


def predict(session: requests.Session, url: str, rng: random.Random) -> tuple[int, dict]:
    modality, model = rng.choice(CHOICES)
    name, data, ctype = rng.choice(UPLOADS)
    response = session.post(url + "/api/v1/predict", files={"image": (name, data, ctype)},
                            data={"modality": modality, "model": model}, timeout=60)
    return response.status_code, response.json()


def run_clients(url: str, clients: int, *, until: float | None = None,
                total: int | None = None) -> tuple[list[float], list[str]]:
    """Predictions from ``clients`` threads, for a time or a count; (latencies, errors)."""
    latencies, errors, lock = [], [], threading.Lock()
    remaining = [total]

    def take() -> bool:
        if until is not None:
            return time.monotonic() < until
        with lock:
            remaining[0] -= 1
            return remaining[0] >= 0

    def client(seed: int) -> None:
        rng, session = random.Random(seed), requests.Session()
        while take():
            started = time.perf_counter()
            try:
                status, body = predict(session, url, rng)
                ok = status == 200 and body["results"]
                problem = None if ok else f"{status}: {json.dumps(body)[:200]}"
            except (requests.RequestException, ValueError, KeyError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - started
            with lock:
                (errors.append(problem) if problem else latencies.append(elapsed))

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return latencies, errors


def percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(share * 100) - 1]


def test_eight_clients_for_a_minute_without_errors(live):
    warm_latencies, warm_errors = run_clients(live.url, 2, total=len(CHOICES) * 4)
    assert not warm_errors, warm_errors[:5]
    started = time.monotonic()
    latencies, errors = run_clients(live.url, CLIENTS, until=started + LOAD_DURATION_S)
    duration = time.monotonic() - started
    report = {
        "clients": CLIENTS, "duration_s": round(duration, 1), "requests": len(latencies),
        "errors": len(errors), "throughput_rps": round(len(latencies) / duration, 2),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 1),
        "p95_ms": round(percentile(latencies, 0.95) * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1),
        "workers": len(live.worker_pids()), "mix": [f"{m}:{a}" for m, a in CHOICES],
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "load.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nload: {report}")
    assert not errors, f"{len(errors)} errors, first: {errors[:5]}"
    assert len(latencies) >= CLIENTS


def test_memory_stays_flat_over_1000_predictions(live):
    _, errors = run_clients(live.url, 4, total=200)  # warm-up: every model and format
    assert not errors, errors[:5]
    pids = sorted(live.worker_pids())
    before = {pid: rss_mb(pid) for pid in pids}
    _, errors = run_clients(live.url, 4, total=MEMORY_PREDICTIONS)
    assert not errors, errors[:5]
    assert sorted(live.worker_pids()) == pids, "a worker was restarted during the run"
    after = {pid: rss_mb(pid) for pid in pids}
    growth = sum(after.values()) - sum(before.values())
    report = {"predictions": MEMORY_PREDICTIONS, "rss_before_mb": round(sum(before.values()), 1),
              "rss_after_mb": round(sum(after.values()), 1), "growth_mb": round(growth, 1)}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "memory.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nmemory: {report}")
    assert growth < MEMORY_GROWTH_LIMIT_MB, report


# ---------------------------------------------------------------- contact messages

class ContactClient:
    """One browser-like visitor: a session cookie and the CSRF token of its form."""

    def __init__(self, url: str):
        self.url, self.session = url, requests.Session()
        page = self.session.get(url + "/contact", timeout=30).text
        self.token = CSRF_INPUT.search(page).group(1)

    def send(self, marker: str) -> int:
        response = self.session.post(self.url + "/contact", allow_redirects=False, timeout=60,
                                     data={"csrf_token": self.token, "name": "Load Test",
                                           "email": "load@example.org", "category": "other",
                                           "subject": marker,
                                           "message": f"Message body for {marker}."})
        return response.status_code


def stored_subjects(instance: Path) -> Counter:
    with sqlite3.connect(instance / "lungscan.sqlite3", timeout=30) as connection:
        return Counter(row[0] for row in connection.execute(
            "SELECT subject FROM contact_messages"))


def test_500_concurrent_contact_messages_are_all_stored_once(live):
    run = uuid.uuid4().hex[:8]
    markers = [f"load-{run}-{i:03d}" for i in range(CONTACT_MESSAGES)]
    local = threading.local()

    def send(marker: str) -> int:
        if not hasattr(local, "client"):
            local.client = ContactClient(live.url)
        return local.client.send(marker)

    with ThreadPoolExecutor(CLIENTS) as pool:
        statuses = Counter(pool.map(send, markers))
    assert statuses == {302: CONTACT_MESSAGES}, statuses
    stored = stored_subjects(live.instance)
    mine = {subject: count for subject, count in stored.items() if subject.startswith(
        f"load-{run}-")}
    print(f"\ncontact: posted {CONTACT_MESSAGES}, stored {len(mine)}, "
          f"duplicates {sum(c - 1 for c in mine.values())}")
    assert set(mine) == set(markers)
    assert set(mine.values()) == {1}


def test_sigkill_during_contact_load_loses_no_acknowledged_message(tmp_path, server_models):
    server = start_server(tmp_path / "server", server_models, workers=2)
    acknowledged, lock, killed = [], threading.Lock(), threading.Event()

    def visitor(index: int) -> None:
        client = ContactClient(server.url)
        for n in range(10_000):
            marker = f"kill-{index}-{n}"
            try:
                status = client.send(marker)
            except requests.RequestException:
                return  # the server is gone; this POST was never answered
            if status == 302:
                with lock:
                    acknowledged.append(marker)
            if killed.is_set():
                return

    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(visitor, i) for i in range(CLIENTS)]
            deadline = time.monotonic() + 60
            while len(acknowledged) < 150 and time.monotonic() < deadline:
                time.sleep(0.02)
            server.kill()
            killed.set()
            for future in futures:
                future.result()
        with lock:
            answered = set(acknowledged)
        stored = stored_subjects(server.instance)
        missing = answered - set(stored)
        print(f"\nsigkill: {len(answered)} acknowledged, {len(stored)} stored, "
              f"{len(missing)} lost")
        assert len(answered) >= 100
        assert not missing, sorted(missing)[:10]
        assert set(stored.values()) == {1}
    finally:
        server.kill()

    restarted = start_server(tmp_path / "server", server_models, workers=1)
    try:
        assert ContactClient(restarted.url).send("after-restart") == 302
        assert len(stored_subjects(restarted.instance)) == len(stored) + 1
    finally:
        restarted.stop()
