"""Studies in tests: DICOM series, zips, apps whose real queue runs them, and waiting."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .dicom_factory import hu_phantom, new_dataset, to_bytes
from .server import ROOT


def ct_series(count: int, size: int = 64, seed: int = 0, series_uid: str | None = None,
              patient_id: str | None = None, prefix: str = "IMG") -> list[tuple[str, bytes]]:
    """``count`` CT slices of one series, as (file name, bytes), in an order whose file
    names disagree with the slices' InstanceNumber (as exported folders often do)."""
    from pydicom.uid import generate_uid

    series_uid = series_uid or generate_uid()
    rng = random.Random(seed)
    numbers = list(range(1, count + 1))
    names = [f"{prefix}{n:04d}.dcm" for n in numbers]
    rng.shuffle(names)  # file name order says nothing about slice order
    files = []
    base = hu_phantom(size)
    for number, name in zip(numbers, names):
        ds = new_dataset("CT")
        if patient_id:
            ds.PatientID = patient_id
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [0.0, 0.0, -2.5 * number]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        hu = base + (number % 7) * 15.0  # slices differ a little
        ds.set_pixel_data(np.rint(hu + 1024).astype(np.int16), "MONOCHROME2", 16)
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1.0, -1024.0, "HU"
        files.append((name, to_bytes(ds)))
    rng.shuffle(files)  # and the upload order says nothing either
    return files


def zip_of(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


def image_fields(files: list[tuple[str, bytes]]) -> list[tuple[io.BytesIO, str]]:
    """Files as the test client sends repeated ``images`` parts."""
    return [(io.BytesIO(data), name) for name, data in files]


def wait_for_study(client, url: str, deadline_s: float = 180.0) -> dict:
    """Poll until the study ends; the last view (failing loudly if it never does)."""
    end = time.monotonic() + deadline_s
    while True:
        view = client.get(url).get_json()
        if view["status"] in ("done", "failed"):
            return view
        if time.monotonic() > end:
            raise AssertionError(f"study still {view['status']} after {deadline_s} s: "
                                 f"{view['progress']}")
        time.sleep(0.2)


def submit(client, **fields):
    return client.post("/api/v1/studies", data=fields, content_type="multipart/form-data")


def worker_env(settings: dict, model_dir: Path, instance: Path) -> dict:
    """The environment of a `flask worker` sharing the test app's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASK_")}
    env.update({f"FLASK_{k}": str(v) for k, v in settings.items()})
    env.update(FLASK_MODEL_DIR=str(model_dir), FLASK_INSTANCE_PATH=str(instance),
               FLASK_PREPARE_MODELS="false", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    return env


def start_worker(env: dict, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "worker"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


@contextmanager
def running_worker(env: dict, log_path: Path):
    """A `flask worker` process, stopped by SIGINT (as Ctrl+C would) afterwards."""
    worker = start_worker(env, log_path)
    try:
        yield worker
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGINT)
            worker.wait(30)
