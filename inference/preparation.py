"""Models made ready to serve as soon as they are seen, never while a request waits.

A ``Preparer`` thread in each serving process looks at the model folder at start and
then every few seconds. A model without a checked ONNX conversion (or, with
``INFERENCE_PRECISION=auto``, without this CPU's measurement of its precisions) is
converted and measured in a child process (``python -m inference.preparation``) at
the lowest CPU priority, so requests keep the cores, and under a lock on the model
folder, so only one conversion runs at a time across all workers. The child dies with
its parent (a stopped server leaves no converter behind, and the server itself never
runs tf2onnx, so a stop during a conversion exits cleanly). A conversion (or
measurement) that fails leaves a ``.failed`` note beside the model with the reason,
so it is not tried again for the same bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import conversion
from .candidates import measure, read_choice
from .precision import PrecisionPolicy
from .preprocess import model_input
from .registry import ModelEntry, discover
from .runners import KerasGraphBackend, conversion_supported, load_keras_model

log = logging.getLogger(__name__)

POLL_SECONDS = 3.0
SETTLE_SECONDS = 2.0  # a file changed more recently may still be being copied in
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# A converter ended by one of these was stopped (a server stop that signals the whole
# process group, Ctrl-C), not failed: it is tried again, and no note is left.
INTERRUPTED = (-signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP)


def failure_note(entry_path: Path, digest: str, cache_dir: str | None) -> Path:
    target = conversion.onnx_path_for(entry_path, digest, cache_dir)
    return target.with_suffix(".failed")


def converting_note(entry_path: Path, digest: str, cache_dir: str | None) -> Path:
    """Holds the pid of the process converting these bytes, so every worker can say
    ``converting``; a note whose process is gone means nothing."""
    return conversion.onnx_path_for(entry_path, digest, cache_dir).with_suffix(".converting")


def _held_by_live_process(note: Path) -> bool:
    try:
        os.kill(int(note.read_text(encoding="ascii")), 0)
    except PermissionError:  # alive, under another user
        return True
    except (OSError, ValueError):  # no note, garbage, or its process has ended
        return False
    return True


def convert_entry(entry: ModelEntry, cache_dir: str | None = None, threads: int = 0,
                  force: bool = False):
    """Convert one model now: ``(path, report, converted)``. The one conversion path,
    for the CLI and the preparation child alike."""

    digest = conversion.file_sha256(entry.path)
    existing = conversion.find_verified_onnx(entry.path, digest, cache_dir)
    if existing is not None and not force:
        from .runners import OnnxBackend

        report = conversion.report_of(OnnxBackend(existing, threads))
        if report is not None:
            return existing, report, False
    model, _ = load_keras_model(entry.path, threads)
    runner = KerasGraphBackend(model, entry.card.input_size)
    path, report = conversion.convert_to_onnx(
        runner, entry.path, digest, cache_dir, threads,
        preprocess=lambda image: model_input(image, entry.card))
    failure_note(entry.path, digest, cache_dir).unlink(missing_ok=True)
    return path, report, True


class Preparer:
    """Watches ``model_dir`` and converts what is not converted, one at a time."""

    def __init__(self, model_dir: str, cache_dir: str | None = None, threads: int = 0,
                 poll_seconds: float = POLL_SECONDS, precision: PrecisionPolicy | None = None):
        self.model_dir = Path(model_dir)
        policy = precision or PrecisionPolicy()
        # The tolerance to measure precisions with (auto on the CPU), else None.
        self.measure_tolerance = (policy.tolerance if policy.precision == "auto"
                                  and policy.device == "cpu" else None)
        self.cache_dir = cache_dir
        self.threads = threads
        self.poll_seconds = poll_seconds
        self.converting: str | None = None  # the file being converted by this process
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._child: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()  # concurrent first requests start one thread

    def start(self) -> "Preparer":
        with self._start_lock:
            if self._thread is None and conversion_supported():
                self._thread = threading.Thread(target=self._loop, name="model-preparer",
                                                daemon=True)
                self._thread.start()
        return self

    def wake(self) -> None:
        """Look again now (a file was dropped in, or a test wants it)."""
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
        if self._thread is not None:
            self._thread.join(timeout)

    def status(self, entry: ModelEntry) -> str:
        """``ready``, ``converting``, ``waiting`` or ``failed: reason``."""
        digest = conversion.file_sha256(entry.path)
        converted = conversion.find_verified_onnx(entry.path, digest, self.cache_dir)
        if converted and self.measured(converted):
            return "ready"
        note = failure_note(entry.path, digest, self.cache_dir)
        if note.is_file():
            return "failed: " + note.read_text(encoding="utf-8", errors="replace")[:300]
        if self.converting == str(entry.path) or _held_by_live_process(
                converting_note(entry.path, digest, self.cache_dir)):
            return "measuring" if converted else "converting"
        return "waiting"

    def measured(self, converted: Path) -> bool:
        """Whether nothing is left to measure for this conversion on this CPU."""
        return (self.measure_tolerance is None
                or read_choice(converted, self.measure_tolerance, self.threads) is not None)

    def pending(self) -> list[ModelEntry]:
        """Installed models with a valid card and no conversion or failure note yet."""
        waiting = []
        for entry in discover(self.model_dir):
            if not entry.available or entry.card_error:
                continue
            try:
                settled = time.time() - entry.path.stat().st_mtime >= SETTLE_SECONDS
                if settled and self.status(entry) == "waiting":
                    waiting.append(entry)
            except OSError:  # vanished while we looked
                continue
        return waiting

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                for entry in self.pending():
                    if self._stop.is_set() or not self._prepare(entry):
                        break
            except Exception:  # noqa: BLE001 - keep watching whatever one file does
                log.exception("model preparation failed")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def _prepare(self, entry: ModelEntry) -> bool:
        """Convert ``entry`` in a child if no other process is converting (else False)."""
        with conversion.folder_lock(self.model_dir, blocking=False) as taken:
            if not taken:
                return False
            if self.status(entry) != "waiting":  # another worker finished it meanwhile
                return True
            self.converting = str(entry.path)
            note = converting_note(entry.path, conversion.file_sha256(entry.path),
                                   self.cache_dir)
            try:
                with contextlib.suppress(OSError):  # the note only informs other workers
                    note.parent.mkdir(parents=True, exist_ok=True)
                    note.write_text(str(os.getpid()), encoding="ascii")
                self._run_child(entry)
            finally:
                note.unlink(missing_ok=True)
                self.converting = None
        return True

    def _run_child(self, entry: ModelEntry) -> None:
        digest = conversion.file_sha256(entry.path)
        command = [sys.executable, "-m", "inference.preparation", str(self.model_dir),
                   entry.modality, entry.architecture, "--threads", str(self.threads),
                   "--parent", str(os.getpid())]
        if self.cache_dir:
            command += ["--cache-dir", str(self.cache_dir)]
        if self.measure_tolerance is not None:
            command += ["--measure", str(self.measure_tolerance)]
        log.info("preparing %s for serving (ONNX conversion, low priority)", entry.path.name)
        self._child = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE, env=_child_env())
        _, stderr = self._child.communicate()
        code, self._child = self._child.returncode, None
        if code == 0:
            log.info("%s is ready: served with ONNX Runtime from its next load",
                     entry.path.name)
        elif self._stop.is_set() or code in INTERRUPTED:
            log.info("conversion of %s stopped (status %s)", entry.path.name, code)
        else:
            reason = _last_line(stderr) or f"the converter exited with status {code}"
            failure_note(entry.path, digest, self.cache_dir).write_text(reason, "utf-8")
            log.warning("%s not converted: %s", entry.path.name, reason)


def _child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


def _last_line(stderr: bytes) -> str:
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _become_background_child(parent: int | None = None) -> None:
    """Lowest CPU priority, and die with the parent (Linux ``PR_SET_PDEATHSIG``).

    ``SCHED_IDLE`` (where the kernel has it) runs the converter only on cycles nothing
    else wants, which nice 19 alone does not: requests then keep the cores. The threads
    TensorFlow starts later inherit both.
    """
    os.nice(19)
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if parent is not None and os.getppid() != parent:  # it died before prctl took hold
        raise SystemExit("the process that started this conversion has ended")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert one model for serving.")
    parser.add_argument("model_dir")
    parser.add_argument("modality")
    parser.add_argument("architecture")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--parent", type=int, default=None,
                        help="the starting process: stop at once if it is gone")
    parser.add_argument("--measure", type=float, default=None, metavar="TOLERANCE",
                        help="then measure this CPU's precisions (INFERENCE_PRECISION=auto)")
    args = parser.parse_args(argv)
    _become_background_child(args.parent)
    entry = next((e for e in discover(args.model_dir)
                  if e.key == (args.modality, args.architecture) and e.available), None)
    if entry is None or entry.card_error:
        print("the model file or its card is missing or invalid", file=sys.stderr)
        return 2
    try:
        path, _, _ = convert_entry(entry, args.cache_dir, args.threads)
        if args.measure is not None:
            measure(path, entry.card, args.measure, args.threads)
    except conversion.ConversionRefused as exc:
        print(str(exc), file=sys.stderr)
        return 3
    except Exception as exc:  # noqa: BLE001 - the parent records the reason
        print(f"{type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
