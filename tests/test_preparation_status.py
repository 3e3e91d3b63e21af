"""Every worker tells the same state of a conversion: ``converting`` is seen by the
processes that are not running it too, and a note left by a process that has ended
means nothing."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from inference import conversion
from inference.preparation import Preparer, converting_note
from inference.runners import conversion_supported

from .model_factory import install, tiny_model
from .preparation_helpers import entry_for, wait_for

pytestmark = pytest.mark.skipif(not conversion_supported(),
                                reason="needs onnx, onnxruntime and tf2onnx")


def note_for(entry):
    return converting_note(entry.path, conversion.file_sha256(entry.path), None)


def test_another_worker_sees_the_conversion_in_progress(tmp_path):
    install(tiny_model(seed=4), tmp_path, "vgg16", "ct", {"input_size": [32, 32]})
    entry = entry_for(tmp_path)
    converting, watching = Preparer(str(tmp_path), poll_seconds=0.1), Preparer(str(tmp_path))
    time.sleep(2.1)  # the file must have settled before it is converted
    converting.start()
    try:
        wait_for(lambda: converting._child is not None, "the converter child")
        # ``watching`` stands for another worker: it runs no conversion itself.
        assert watching.converting is None
        assert watching.status(entry) == "converting"
        wait_for(lambda: watching.status(entry) == "ready", "the conversion")
        # Removed once the child has exited (ready shows as soon as the file is out).
        wait_for(lambda: not note_for(entry).exists(), "the note's removal")
    finally:
        converting.stop()


def test_a_note_left_by_an_ended_process_means_nothing(tmp_path):
    install(tiny_model(seed=4), tmp_path, "vgg16", "ct", {"input_size": [32, 32]})
    entry = entry_for(tmp_path)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    note_for(entry).write_text(ended, encoding="ascii")
    assert Preparer(str(tmp_path)).status(entry) == "waiting"
    note_for(entry).write_text("not a pid", encoding="ascii")
    assert Preparer(str(tmp_path)).status(entry) == "waiting"
