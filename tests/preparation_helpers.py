"""What the background preparation tests share: waiting with a deadline, a process's
state and priority read from /proc, the converter children found by their command line,
the watcher's looks at the folder counted, a model installed in one move or a corrupt
one written, and fixtures for a model folder, the preparers a test starts (stopped
afterwards) and the converter children launched from this process."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from inference.preparation import Preparer
from inference.registry import discover

from .model_factory import install, tiny_model

CARD_32 = {"input_size": [32, 32]}
DEADLINE_S = 240.0  # a stuck test fails after this; nothing here measures speed
POLL_S = 0.05


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


@pytest.fixture(name="model_dir")
def model_dir_fixture(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


@pytest.fixture(name="preparers")
def preparers_fixture():
    """Preparers a test starts; each is stopped afterwards, its child included."""
    started: list[Preparer] = []
    yield started
    for preparer in started:
        preparer.stop()


@pytest.fixture(name="launches")
def launches_fixture(monkeypatch) -> list:
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
