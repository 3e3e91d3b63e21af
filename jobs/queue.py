"""The task queue (Huey), generic: one code path from laptop to cluster.

Without ``BROKER_URL`` the queue is a SQLite file in the instance folder and each web
process runs an embedded worker thread, so ``make run`` needs no server. With
``FLASK_BROKER_URL=redis://...`` the queue lives in Redis and ``flask worker``
processes, on any machine, take the jobs. Either way the job is the same function, and
the database, not the queue, is the truth about a job: a lost message or a killed
worker is repaired by each domain's housekeeping, which workers run as ``loops``.
"""

from __future__ import annotations

import fcntl
import os
import threading
from dataclasses import dataclass
from typing import Callable

from huey import PriorityRedisHuey, SqliteHuey

from .retry import enqueue_or_defer
from .serializer import JsonSerializer
from .worker import EmbeddedWorker


def make_huey(broker_url: str | None, instance_path: str):
    """The Huey instance for a broker URL: Redis, a SQLite file, or the default file."""
    url = (broker_url or "").strip()
    if url.startswith(("redis://", "rediss://", "unix://")):
        # The priority flavour, so contact mail goes ahead of queued studies (Redis >= 5).
        return PriorityRedisHuey("lungscan", url=url, results=False,
                                 serializer=JsonSerializer())
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
    elif url:
        raise ValueError(f"BROKER_URL must be redis://..., rediss://... or sqlite:///PATH, "
                         f"not {url.split(':', 1)[0]}:...")
    else:
        path = os.path.join(instance_path, "queue.sqlite3")
    # Processes starting together (gunicorn's workers) would each switch a new file to
    # WAL, and SQLite refuses all but one ("database is locked"): one at a time.
    with open(path + ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            return SqliteHuey("lungscan", filename=path, results=False, timeout=30,
                              serializer=JsonSerializer())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class QueueSettings:
    broker_url: str | None
    embedded: bool  # a worker thread in each web process (no broker only)
    poll_s: float  # an idle worker looks this often
    sweep_s: float  # housekeeping's interval
    backoff_max_s: float  # a loop failing again and again waits at most this long


@dataclass(frozen=True)
class Loop:
    """A job every worker runs now and then, outside the queue (housekeeping, polls)."""

    name: str
    interval_s: float
    job: Callable[[], int]


class JobQueue:
    """The queue of one app: domains register their jobs on it, and it knows none of
    them. Built by ``create_app`` from the queue settings."""

    def __init__(self, settings: QueueSettings, instance_path: str):
        self.settings = settings
        self.huey = make_huey(settings.broker_url, instance_path)
        self.embedded = settings.embedded
        self.loops: list[Loop] = []
        self.on_worker_start: list[Callable[[], None]] = []  # e.g. model preparation
        self._wake = threading.Event()
        self._worker = None
        self._start_lock = threading.Lock()

    def task(self, name: str, priority: int | None = None):
        """Register a job under a name every process agrees on (a decorator)."""
        return self.huey.task(name=name, priority=priority)

    def every(self, name: str, interval_s: float, job: Callable[[], int]) -> None:
        """Have every worker run ``job`` each ``interval_s`` seconds."""
        self.loops.append(Loop(name, interval_s, job))

    def enqueue(self, what: str, task, *args) -> bool:
        """Queue ``task(*args)``, waking the embedded worker; a broker that is down only
        delays it (see ``enqueue_or_defer``)."""
        queued = enqueue_or_defer(what, task, *args)
        self._wake.set()
        return queued

    def start_embedded_worker(self) -> None:
        """Start this process's worker thread once (cheap on every later request)."""
        if self._worker is not None:
            return
        with self._start_lock:
            if self._worker is None:
                self._worker = EmbeddedWorker(self, self._wake)
                self._worker.start()

    def stop_embedded_worker(self, timeout: float = 30.0) -> None:
        if self._worker is not None:
            self._worker.stop(timeout)
            self._worker = None
