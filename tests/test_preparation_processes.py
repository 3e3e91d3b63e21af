"""Background preparation across processes: nothing is converted while another process
holds the folder lock; the converter is a child at the lowest priority; one stopped by a
signal is tried again, not marked failed; it dies with the process that started it and
converts nothing once that parent is gone; stopping gunicorn during a conversion exits
cleanly, leaves no failure note, and the model is converted after a restart. Within one
process: test_preparation.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from inference import conversion
from inference.preparation import Preparer, failure_note
from inference.runners import conversion_supported

from .model_factory import install, scan_like_png, tiny_model
from .preparation_helpers import (CARD_32, POLL_S, converter_pids, count_scans, entry_for,
                                  install_atomically, niceness, onnx_files, running,
                                  running_child, stat_fields, wait_for)
from .preparation_helpers import (launches_fixture, model_dir_fixture,  # noqa: F401 - fixtures
                                  preparers_fixture)
from .server import ROOT, start_server

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
        digest = conversion.file_sha256(path)
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
        wait_for(lambda: conversion.find_verified_onnx(path, digest),
                 "the conversion after restart")
        assert onnx_files(model_dir) == [conversion.onnx_path_for(path, digest)]
        assert list(model_dir.rglob("*.tmp.onnx")) == []
        response = requests.post(server.url + "/api/v1/predict", timeout=60,
                                 data={"modality": "ct", "model": "vgg16"},
                                 files={"image": ("scan.png", scan_like_png(), "image/png")})
        assert response.status_code == 200, response.text
        def model_row() -> dict:
            rows = requests.get(server.url + "/api/v1/models", timeout=30).json()["models"]
            return next(r for r in rows if (r["modality"], r["architecture"]) == ("ct", "vgg16"))

        # INFERENCE_PRECISION=auto (the default): converted, then measured on this CPU
        wait_for(lambda: model_row()["preparation"] == "ready", "this CPU's measurement")
        response = requests.post(server.url + "/api/v1/predict", timeout=60,
                                 data={"modality": "ct", "model": "vgg16"},
                                 files={"image": ("scan.png", scan_like_png(), "image/png")})
        row = model_row()
        assert response.status_code == 200 and row["backend"] in ("onnx", "openvino")
        assert row["precision_choice"]["chosen"].startswith(
            "onnxruntime" if row["backend"] == "onnx" else "openvino")
        [worker] = server.worker_pids()  # prepared and served without TensorFlow
        # (OpenVINO maps its own readers of TensorFlow's formats, under openvino/)
        assert "site-packages/tensorflow/" not in Path(f"/proc/{worker}/maps").read_text()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=60) == 0
        assert converter_pids(model_dir) == []
    finally:
        server.kill()
