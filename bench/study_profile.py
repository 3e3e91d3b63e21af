"""Where a worker's time goes on one study: the runner's steps timed in process.

    python -m bench.studies --profile [--arch resnet50] [--sizes 64]

The app is created in this process on a scratch instance folder; a study is stored
through ``studies.service.submit`` (the API's own path) and run by
``studies.runner.process_study`` (the worker's own path) with its steps wrapped in
timers: reading bytes from the database, decoding on the helper thread, waiting for
the decoded batch, the forward pass (``run_prepared``), the per-image checks and
summaries, storing each batch. A bare ONNX Runtime session on the same file, timed
on the same batches of 8 just before and after, says what the forward passes alone
would cost.
"""

from __future__ import annotations

import functools
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import contextmanager

TIMED = {  # module attribute -> step name
    ("studies.store", "file_bytes"): "read bytes (main thread)",
    ("studies.store", "save_outcomes"): "store batch (main thread)",
    ("studies.runner", "run_prepared"): "forward pass (run_prepared)",
    ("studies.runner", "image_warnings"): "image checks (main thread)",
    ("studies.runner", "add_ood_check"): "OOD check (main thread)",
    ("studies.runner", "summarise"): "summarise (main thread)",
    ("studies.runner", "study_verdict"): "verdict",
}


class Clock:
    """Seconds and calls per step, from any thread."""

    def __init__(self):
        self.seconds, self.calls = defaultdict(float), defaultdict(int)
        self.lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self.lock:
            self.seconds[name] += seconds
            self.calls[name] += 1

    def wrap(self, name: str, function):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)
        return timed


@contextmanager
def instrumented(clock: Clock):
    """The runner's steps wrapped in ``clock`` for the duration."""
    import importlib

    from studies import runner

    saved = []
    for (module_name, attribute), name in TIMED.items():
        module = importlib.import_module(module_name)
        saved.append((module, attribute, getattr(module, attribute)))
        setattr(module, attribute, clock.wrap(name, getattr(module, attribute)))
    saved += patch_generators(runner, clock)
    try:
        yield
    finally:
        for module, attribute, original in saved:
            setattr(module, attribute, original)


def patch_generators(runner, clock: Clock) -> list:
    """Time the decode (helper thread) and the main thread's wait for each batch."""
    decode, batches = runner.StudyRun.decode, runner.batches

    def waiting(items, size):
        stream = batches(items, size)
        while True:
            started = time.perf_counter()
            batch = next(stream, None)
            clock.add("wait for a batch: reads + decode not ready (main thread)",
                      time.perf_counter() - started)
            if batch is None:
                return
            yield batch

    runner.StudyRun.decode = clock.wrap("decode + prepare (helper thread)", decode)
    runner.batches = waiting
    return [(runner.StudyRun, "decode", decode), (runner, "batches", batches)]


def make_app(model_dir: str):
    os.environ["FLASK_INSTANCE_PATH"] = tempfile.mkdtemp(prefix="lungscan-profile-")
    from app import create_app

    return create_app({"MODEL_DIR": model_dir, "EMBEDDED_WORKER": False,
                       "PREPARE_MODELS": False, "RATELIMIT_ENABLED": False})


def profile_study(app, archive: bytes, arch: str, bare) -> dict:
    """One study submitted and run in process, its steps timed; bare batches around."""
    from settings import settings_of
    from studies import service as studies
    from studies.access import SYSTEM

    inference, config = app.extensions["inference"], settings_of(app).studies
    with app.app_context():
        study_id = studies.submit(inference, config, "ct", arch, False, archive=archive)
        total = studies.view(config, study_id, SYSTEM)["progress"]["total"]
        bare_before, clock = bare(), Clock()
        started = time.perf_counter()
        with instrumented(clock):
            outcome = studies.run(inference, config, study_id)
        wall = time.perf_counter() - started
        bare_after = bare()
        studies.delete(config, study_id, SYSTEM)
    return {"outcome": outcome, "images": total, "wall_s": wall,
            "bare_batch_s": statistics.median(bare_before + bare_after),
            "steps": {name: {"s": clock.seconds[name], "calls": clock.calls[name]}
                      for name in clock.seconds}}


def bare_batches(folder: str, arch: str, batches: int = 4):
    from bench.studies import bare_session

    call, _ = bare_session(folder, arch)

    def timed() -> list[float]:
        times = []
        for _ in range(batches):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
        return times
    return timed


def print_profile(arch: str, result: dict) -> None:
    images, wall = result["images"], result["wall_s"]
    bare_s = result["bare_batch_s"] * images / 8
    print(f"\n{arch}, {images} slices ({result['outcome']}): {wall:.2f} s in the runner = "
          f"{images / wall:.2f} img/s; bare ORT batch-8 would take {bare_s:.2f} s "
          f"({8 / result['bare_batch_s']:.2f} img/s); study / bare {bare_s / wall:.2f}\n")
    print("| step | seconds | share of the runner's wall time | calls |\n| --- | --- | --- | --- |")
    for name, step in sorted(result["steps"].items(), key=lambda kv: -kv[1]["s"]):
        print(f"| {name} | {step['s']:.2f} | {step['s'] / wall:.1%} | {step['calls']} |")


def run_profiles(model_dir: str, arches, sizes, archives: dict) -> list[dict]:
    from bench.studies import ct_entry

    app, results = make_app(model_dir), []
    for arch in arches:
        bare = bare_batches(model_dir, arch)
        app.extensions["inference"].load(ct_entry(model_dir, arch))  # load outside the timing
        for size in sizes:
            result = dict(profile_study(app, archives[size], arch, bare), arch=arch)
            print_profile(arch, result)
            results.append(result)
    shutil.rmtree(app.instance_path, ignore_errors=True)
    return results
