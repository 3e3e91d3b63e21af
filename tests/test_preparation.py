"""Background preparation in one serving process: a model dropped into the folder is
converted for ONNX Runtime by a low-priority child process and served from the conversion
without any request waiting for it; a failed conversion is noted and not tried again; the
models API shows each model's preparation; one watcher per process, and no TensorFlow in
it. Across processes (the folder lock, the child's priority, signals, the parent's death,
gunicorn's stop): test_preparation_processes.py."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time

import pytest

from app import create_app
from inference import conversion, preparation
from inference.preparation import Preparer, convert_entry, failure_note
from inference.runners import conversion_supported

from .conftest import testing_config
from .model_factory import install, scan_like_png, tiny_model
from .preparation_helpers import (CARD_32, POLL_S, count_scans, entry_for, models_rows,
                                  onnx_files, wait_for, write_corrupt_model)
from .preparation_helpers import (launches_fixture, model_dir_fixture,  # noqa: F401 - fixtures
                                  preparers_fixture)
from .server import ROOT

pytestmark = pytest.mark.skipif(not conversion_supported(),
                                reason="needs onnx, onnxruntime and tf2onnx")


def test_a_model_dropped_in_is_converted_in_the_background_and_served_with_onnx(
        tmp_path, model_dir, monkeypatch, preparers):
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(model_dir)))
    service = app.extensions["inference"]
    client = app.test_client()

    def no_conversion_here(*args, **kwargs):
        raise AssertionError("a conversion ran in the serving process")

    monkeypatch.setattr(conversion, "convert_to_onnx", no_conversion_here)
    service.preparer.poll_seconds = 3600  # it looks at start, then only when woken
    service.start_preparation()
    preparers.append(service.preparer)
    with conversion.folder_lock(model_dir):  # nothing converts until we have looked
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


def test_a_failed_conversion_is_noted_and_not_tried_again(model_dir, launches, preparers):
    path = write_corrupt_model(model_dir)
    entry = entry_for(model_dir)
    preparer = Preparer(str(model_dir), poll_seconds=POLL_S)
    scans = count_scans(preparer)
    preparers.append(preparer.start())
    status = wait_for(lambda: preparer.status(entry).startswith("failed: ")
                      and preparer.status(entry), "the failure note")
    assert "could not be read" in status and path.name in status
    note = failure_note(path, conversion.file_sha256(path), None)
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
    failure_note(broken, conversion.file_sha256(broken), None).write_text(
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
