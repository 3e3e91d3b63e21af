"""Background preparation: models dropped into the folder are converted for ONNX
Runtime by a low-priority child process, one at a time across processes, and served
from the conversion without any request waiting for it."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from app import create_app
from inference import onnx_cache, preparation
from inference.preparation import Preparer, convert_entry, failure_note
from inference.registry import discover
from inference.runners import conversion_supported

from .conftest import testing_config
from .model_factory import install, scan_like_png, tiny_model
from .server import ROOT, start_server

CARD_32 = {"input_size": [32, 32]}
DEADLINE_S = 240.0  # a stuck test fails after this; nothing here measures speed
POLL_S = 0.05

pytestmark = pytest.mark.skipif(not conversion_supported(),
                                reason="needs onnx, onnxruntime and tf2onnx")

HOLD_LOCK = """
import fcntl, os, sys
descriptor = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(descriptor, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()  # held until the test closes our stdin
"""

HOST_PREPARER = """
import sys, time
from inference.preparation import Preparer
Preparer(sys.argv[1], poll_seconds=0.05).start()
time.sleep(600)
"""


def wait_for(condition, what: str, deadline_s: float = DEADLINE_S):
    """``condition()``'s first truthy value; fails the test if none comes in time."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(POLL_S)
    pytest.fail(f"gave up waiting for {what}")


def entry_for(model_dir, modality="ct", arch="vgg16"):
    return next(e for e in discover(model_dir) if e.key == (modality, arch))


def onnx_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.onnx"))


def stat_fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` from field 3 (state) on, or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()


def niceness(pid: int) -> int | None:
    fields = stat_fields(pid)
    return None if fields is None else int(fields[16])  # field 19


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def converter_pids(model_dir: Path) -> list[int]:
    """Running ``python -m inference.preparation MODEL_DIR ...`` processes."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"inference.preparation" in argv and str(model_dir).encode() in argv \
                and running(int(proc.name)):
            pids.append(int(proc.name))
    return pids


def count_scans(preparer: Preparer) -> list[int]:
    """How many models each look at the folder found waiting, in order."""
    scans: list[int] = []
    real_pending = preparer.pending

    def pending():
        waiting = real_pending()
        scans.append(len(waiting))
        return waiting

    preparer.pending = pending
    return scans


def install_atomically(model_dir: Path, arch: str, modality: str, seed: int) -> Path:
    """Install beside the folder, then move it in: a watcher never sees half a file."""
    staging = model_dir.parent / f"staging-{arch}-{modality}"
    path = install(tiny_model(seed=seed), staging, arch, modality, CARD_32)
    target = model_dir / path.relative_to(staging)
    target.parent.mkdir(parents=True, exist_ok=True)
    for source in sorted(path.parent.iterdir(), key=lambda p: p.suffix == ".h5"):
        os.replace(source, target.parent / source.name)  # the card first, the model last
    shutil.rmtree(staging)
    return target


def write_corrupt_model(model_dir: Path, arch="vgg16", modality="ct") -> Path:
    path = install(tiny_model(), model_dir, arch, modality, CARD_32)
    path.write_bytes(b"not an HDF5 file, although it is named like one\n" * 64)
    return path


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


@pytest.fixture
def preparers():
    """Preparers a test starts; each is stopped afterwards, its child included."""
    started: list[Preparer] = []
    yield started
    for preparer in started:
        preparer.stop()


@pytest.fixture
def launches(monkeypatch) -> list:
    """The converter children started from this process."""
    started = []
    real_popen = subprocess.Popen

    class CountingPopen(real_popen):
        def __init__(self, args, *rest, **options):
            if "inference.preparation" in args:
                started.append(args)
            super().__init__(args, *rest, **options)

    monkeypatch.setattr(subprocess, "Popen", CountingPopen)
    return started


def running_child(preparer: Preparer):
    """The preparer's converter, once it runs at its low priority."""
    def lowered():
        child = preparer._child
        return child if child is not None and niceness(child.pid) == 19 else None

    return wait_for(lowered, "a converter child at the lowest priority")


def models_rows(client) -> dict:
    rows = client.get("/api/v1/models").get_json()["models"]
    return {(row["modality"], row["architecture"]): row for row in rows}


# ----------------------------------------------------------------- one process


def test_a_model_dropped_in_is_converted_in_the_background_and_served_with_onnx(
        tmp_path, model_dir, monkeypatch, preparers):
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(model_dir)))
    service = app.extensions["inference"]
    client = app.test_client()

    def no_conversion_here(*args, **kwargs):
        raise AssertionError("a conversion ran in the serving process")

    monkeypatch.setattr(onnx_cache, "convert_to_onnx", no_conversion_here)
    service.preparer.poll_seconds = 3600  # it looks at start, then only when woken
    service.start_preparation()
    preparers.append(service.preparer)
    with onnx_cache.folder_lock(model_dir):  # nothing converts until we have looked
        install(tiny_model(seed=3), model_dir, "vgg16", "ct", CARD_32)
        assert models_rows(client)[("ct", "vgg16")]["preparation"] == "waiting"
    states = ["waiting"]

    def ready():
        service.preparer.wake()  # look now (the file is taken once it has settled)
        state = models_rows(client)[("ct", "vgg16")]["preparation"]
        if state != states[-1]:
            states.append(state)
        return state == "ready"

    wait_for(ready, "the background conversion")
    assert states == ["waiting", "converting", "ready"]
    [converted] = onnx_files(model_dir)
    assert converted.name.endswith(".v2.onnx")

    response = client.post("/api/v1/predict", content_type="multipart/form-data",
                           data={"modality": "ct", "model": "vgg16",
                                 "image": (io.BytesIO(scan_like_png()), "scan.png")})
    assert response.status_code == 200, response.get_json()
    row = models_rows(client)[("ct", "vgg16")]
    assert row["loaded"] is True and row["backend"] == "onnx"
    assert row["preparation"] == "ready"
    assert service.cache.loaded_model(entry_for(model_dir)).loader is None  # no Keras load


def test_nothing_is_converted_while_another_process_holds_the_folder_lock(
        model_dir, preparers):
    install(tiny_model(seed=4), model_dir, "vgg16", "ct", CARD_32)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(model_dir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        preparer = Preparer(str(model_dir), poll_seconds=POLL_S)
        scans = count_scans(preparer)
        preparers.append(preparer.start())
        # Five looks that found the model waiting (once its file had settled).
        wait_for(lambda: scans.count(1) >= 5, "five looks that found the model")
        assert preparer._child is None and converter_pids(model_dir) == []
        assert onnx_files(model_dir) == []
        assert preparer.status(entry_for(model_dir)) == "waiting"
        holder.stdin.close()  # the other process lets go of the folder
        assert holder.wait(timeout=60) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    wait_for(lambda: preparer.status(entry_for(model_dir)) == "ready",
             "the conversion once the lock was released")
    assert len(onnx_files(model_dir)) == 1


def test_the_conversion_runs_in_a_child_process_at_the_lowest_priority(
        model_dir, preparers):
    if niceness(os.getpid()) >= 19:
        pytest.skip("this test process already runs at the lowest priority")
    install(tiny_model(seed=5), model_dir, "vgg16", "ct", CARD_32)
    preparer = Preparer(str(model_dir), poll_seconds=POLL_S)
    preparers.append(preparer.start())
    child = wait_for(lambda: preparer._child, "the converter child")
    fields = stat_fields(child.pid)
    assert fields is not None and int(fields[1]) == os.getpid()  # our own child
    assert "inference.preparation" in child.args and str(model_dir) in child.args

    def priority():
        try:
            idle = os.sched_getscheduler(child.pid) == os.SCHED_IDLE
        except OSError:
            idle = False
        if niceness(child.pid) == 19 and idle:
            return "lowest"
        return None if running(child.pid) else "ended before it was lowered"

    assert wait_for(priority, "the child's priority") == "lowest"  # nice 19, SCHED_IDLE
    wait_for(lambda: preparer.status(entry_for(model_dir)) == "ready", "the conversion")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT],
                         ids=["SIGTERM", "SIGINT"])
def test_a_converter_stopped_by_a_signal_is_tried_again_not_marked_failed(
        model_dir, launches, preparers, stop):
    """What a stop that signals the whole process group (systemd, Ctrl-C) does to the
    converter is no verdict on the model."""
    install(tiny_model(seed=10), model_dir, "vgg16", "ct", CARD_32)
    entry = entry_for(model_dir)
    preparer = Preparer(str(model_dir), poll_seconds=POLL_S)
    preparers.append(preparer.start())
    child = running_child(preparer)
    os.kill(child.pid, stop)
    assert child.wait(timeout=60) == -stop
    wait_for(lambda: len(launches) >= 2 or preparer.status(entry).startswith("failed"),
             "a second try or a failure note")
    assert not preparer.status(entry).startswith("failed"), preparer.status(entry)
    wait_for(lambda: preparer.status(entry) == "ready", "the second try")
    assert len(launches) == 2


def test_the_converter_dies_with_the_process_that_started_it(model_dir):
    install(tiny_model(seed=11), model_dir, "vgg16", "ct", CARD_32)
    host = subprocess.Popen([sys.executable, "-c", HOST_PREPARER, str(model_dir)], cwd=ROOT)
    try:
        def lowered():
            for pid in converter_pids(model_dir):
                fields = stat_fields(pid)
                if fields and int(fields[1]) == host.pid and niceness(pid) == 19:
                    return pid
            return None

        converter = wait_for(lowered, "the host's converter child")
        host.kill()  # SIGKILL: no clean-up code runs in the host
        host.wait(timeout=30)
        wait_for(lambda: not running(converter), "the orphaned converter to end",
                 deadline_s=30)
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
    assert converter_pids(model_dir) == []
    assert onnx_files(model_dir) == []


def test_a_converter_whose_parent_is_already_gone_converts_nothing(model_dir):
    install(tiny_model(seed=12), model_dir, "vgg16", "ct", CARD_32)
    not_our_parent = os.getpid() + 999_999  # never the child's parent
    result = subprocess.run(
        [sys.executable, "-m", "inference.preparation", str(model_dir), "ct", "vgg16",
         "--parent", str(not_our_parent)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "has ended" in result.stderr
    assert onnx_files(model_dir) == []


def test_a_failed_conversion_is_noted_and_not_tried_again(model_dir, launches, preparers):
    path = write_corrupt_model(model_dir)
    entry = entry_for(model_dir)
    preparer = Preparer(str(model_dir), poll_seconds=POLL_S)
    scans = count_scans(preparer)
    preparers.append(preparer.start())
    status = wait_for(lambda: preparer.status(entry).startswith("failed: ")
                      and preparer.status(entry), "the failure note")
    assert "could not be read" in status and path.name in status
    note = failure_note(path, onnx_cache.file_sha256(path), None)
    assert note.is_file() and note.name.endswith(".v2.failed")
    written = note.stat().st_mtime_ns
    looked = len(scans)
    wait_for(lambda: len(scans) >= looked + 5, "five more looks at the folder")
    assert len(launches) == 1  # the same bytes are not converted again
    assert note.stat().st_mtime_ns == written
    assert preparer.pending() == [] and onnx_files(model_dir) == []

    install(tiny_model(seed=6), model_dir, "vgg16", "ct", CARD_32)  # new bytes: new try
    wait_for(lambda: preparer.status(entry_for(model_dir)) == "ready", "the new file")
    assert len(launches) == 2


def test_models_api_shows_each_model_s_preparation(tmp_path, model_dir):
    install(tiny_model(seed=1), model_dir, "vgg16", "ct", CARD_32)
    convert_entry(entry_for(model_dir, "ct", "vgg16"))
    broken = write_corrupt_model(model_dir, "vgg19", "ct")
    failure_note(broken, onnx_cache.file_sha256(broken), None).write_text(
        "ModelLoadError: VGG19_CT_model.h5 could not be read", "utf-8")
    install(tiny_model(seed=2), model_dir, "vgg16", "xray", CARD_32)
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(model_dir)))
    rows = models_rows(app.test_client())
    assert rows[("ct", "vgg16")]["preparation"] == "ready"
    assert rows[("ct", "vgg19")]["preparation"] == (
        "failed: ModelLoadError: VGG19_CT_model.h5 could not be read")
    assert rows[("xray", "vgg16")]["preparation"] == "waiting"
    missing = [row for row in rows.values() if not row["available"]]
    assert missing and all(row["preparation"] is None for row in missing)
    assert all("preparation" in row for row in rows.values())


def test_concurrent_starts_start_one_watcher(model_dir, preparers, monkeypatch):
    """Each request of a process may start preparation: only the first one does."""
    inside, most_inside, count_lock = [0], [0], threading.Lock()

    def slow_check():  # widens the gap between "not started yet" and "started"
        with count_lock:
            inside[0] += 1
            most_inside[0] = max(most_inside[0], inside[0])
        time.sleep(0.05)
        with count_lock:
            inside[0] -= 1
        return True

    monkeypatch.setattr(preparation, "conversion_supported", slow_check)
    preparer = Preparer(str(model_dir), poll_seconds=3600)
    preparers.append(preparer)
    barrier = threading.Barrier(8)

    def start():
        barrier.wait()
        preparer.start()

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    watchers = [t for t in threading.enumerate() if t.name == "model-preparer"]
    assert watchers == [preparer._thread]
    assert most_inside[0] == 1  # one start at a time decides


def test_starting_preparation_imports_no_tensorflow(model_dir):
    """Conversions run in the child: a process serving with ONNX Runtime does not carry
    TensorFlow (several hundred MiB per worker) for them."""
    code = (
        "import sys\n"
        "from inference.service import InferenceService\n"
        "service = InferenceService(sys.argv[1])\n"
        "service.start_preparation()\n"
        "started = service.preparer._thread is not None\n"
        "service.preparer.pending(), service.describe()\n"
        "service.preparer.stop()\n"
        "print(started, 'tensorflow' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(model_dir)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["True", "False"]


# ----------------------------------------------------------------- a real server


def wait_for_converter(server, model_dir: Path) -> int:
    """The server's converter child, once it runs at its low priority."""
    def found():
        workers = set(server.worker_pids())
        for pid in converter_pids(model_dir):
            fields = stat_fields(pid)
            if fields and int(fields[1]) in workers and niceness(pid) == 19:
                return pid
        return None

    return wait_for(found, "the server's converter child")


def assert_clean_exit(server, log_start: int, converter: int) -> None:
    assert server.process.wait(timeout=60) == 0
    log = server.log_text()[log_start:]
    for sign in ("terminate called", "Aborted", "SIGABRT", "core dumped",
                 "Fatal Python error"):
        assert sign not in log, log
    wait_for(lambda: not running(converter), "the converter to end", deadline_s=30)


def test_stopping_the_server_during_a_conversion_exits_cleanly(tmp_path, model_dir):
    root = tmp_path / "server"
    env = {"FLASK_PREPARE_MODELS": "true", "FLASK_INFERENCE_BACKEND": "auto"}
    server = start_server(root, model_dir, workers=1, env=env)
    try:
        path = install_atomically(model_dir, "vgg16", "ct", seed=9)
        digest = onnx_cache.file_sha256(path)
        converter = wait_for_converter(server, model_dir)
        server.process.send_signal(signal.SIGTERM)  # the master: gunicorn's own stop
        assert_clean_exit(server, 0, converter)
        assert not failure_note(path, digest, None).exists()  # stopped, not failed

        # A stop that signals every process at once (systemd's control group, a
        # terminal's Ctrl-C) reaches the converter itself first: still not a failure.
        log_start = len(server.log_text())
        server = start_server(root, model_dir, workers=1, env=env)
        converter = wait_for_converter(server, model_dir)
        os.killpg(server.process.pid, signal.SIGTERM)
        assert_clean_exit(server, log_start, converter)
        assert not failure_note(path, digest, None).exists()

        leftover = path.with_name(f"{path.stem}.{digest[:16]}.v2.k1ll3d.tmp.onnx")
        leftover.write_bytes(b"what a killed conversion leaves")
        server = start_server(root, model_dir, workers=1, env=env)
        wait_for(lambda: onnx_cache.find_verified_onnx(path, digest),
                 "the conversion after restart")
        assert onnx_files(model_dir) == [onnx_cache.onnx_path_for(path, digest)]
        assert list(model_dir.rglob("*.tmp.onnx")) == []
        response = requests.post(server.url + "/api/v1/predict", timeout=60,
                                 data={"modality": "ct", "model": "vgg16"},
                                 files={"image": ("scan.png", scan_like_png(), "image/png")})
        assert response.status_code == 200, response.text
        rows = requests.get(server.url + "/api/v1/models", timeout=30).json()["models"]
        [row] = [r for r in rows if (r["modality"], r["architecture"]) == ("ct", "vgg16")]
        assert row["preparation"] == "ready" and row["backend"] == "onnx"
        [worker] = server.worker_pids()  # prepared and served without TensorFlow
        assert "tensorflow" not in Path(f"/proc/{worker}/maps").read_text()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
        assert converter_pids(model_dir) == []
    finally:
        server.kill()
