"""A real ``flask worker`` process for the studies benchmark, and its memory over time.

The worker runs the app as ``python -m flask --app app:create_app worker`` with the
server's own environment (instance folder, database, model folder, broker), so it
takes the studies the server queues. A sampler thread reads its ``/proc/<pid>/status``
(VmRSS, VmHWM) every ``interval`` seconds from start to stop.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READY = "Huey consumer started"
LOADED = re.compile(r"loaded (\S+) in (\d+) ms \(\+(\d+) MiB\), serving with (\S+)")


TICK = os.sysconf("SC_CLK_TCK")


def busy_cpu_s() -> float:
    """CPU seconds all processes of the machine have used since boot (not idle)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICK


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) one process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class CpuShare:
    """Cores used by some named processes, and by every other process of the machine,
    over the time since it was made."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        now = {name: process_cpu_s(pid) for name, pid in self.pids.items()}
        return dict(now, wall=time.monotonic(), busy=busy_cpu_s())

    def cores(self) -> dict[str, float]:
        """Each named process's CPU seconds (``<name>_cpu_s``) and average cores
        (``<name>_cores``), and the average cores of all the others."""
        spent = {k: v - self.start[k] for k, v in self._now().items()}
        wall, busy = spent.pop("wall"), spent.pop("busy")
        shares = {f"{name}_cores": cpu / wall for name, cpu in spent.items()}
        shares.update({f"{name}_cpu_s": cpu for name, cpu in spent.items()})
        shares["other_cores"] = max(0.0, busy - sum(spent.values())) / wall
        return shares


def proc_status_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) / 1024
    return values


class RssSampler(threading.Thread):
    """Samples (monotonic time, VmRSS MiB) of ``pid`` until stopped or the pid is gone."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(name="rss-sampler", daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                rss = proc_status_mb(self.pid)["VmRSS"]
            except (OSError, KeyError):
                return
            self.samples.append((time.monotonic(), rss))
            self.stopping.wait(self.interval)

    def between(self, start: float, end: float) -> list[tuple[float, float]]:
        return [(t, rss) for t, rss in self.samples if start <= t <= end]

    def peak(self, start: float, end: float) -> float | None:
        window = self.between(start, end)
        return max(rss for _, rss in window) if window else None


class Worker:
    """One ``flask worker`` process: started, ready, sampled, stopped."""

    def __init__(self, env: dict, log_path: Path):
        self.env, self.log_path = dict(env), log_path
        self.process: subprocess.Popen | None = None
        self.sampler: RssSampler | None = None
        self.started = self.ready = 0.0

    def start(self, timeout: float = 120) -> "Worker":
        self.log_path.write_text("")
        command = [sys.executable, "-m", "flask", "--app", "app:create_app", "worker"]
        self.started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.sampler = RssSampler(self.process.pid)
        self.sampler.start()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while READY not in self.log_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)
        self.ready = time.monotonic()

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def memory(self) -> dict[str, float]:
        return proc_status_mb(self.process.pid)

    def loads(self) -> list[dict]:
        """The model loads the worker logged: file, ms, MiB, backend."""
        return [{"file": name, "load_ms": int(ms), "load_mib": int(mib), "backend": backend}
                for name, ms, mib, backend in LOADED.findall(self.log_text())]

    def stop(self) -> None:
        self.sampler.stopping.set()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
