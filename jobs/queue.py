"""The task queue (Huey) as a Flask extension: one code path from laptop to cluster.

Without ``BROKER_URL`` the queue is a SQLite file in the instance folder and each web
process runs an embedded worker thread, so ``make run`` needs no server. With
``FLASK_BROKER_URL=redis://...`` the queue lives in Redis and ``flask worker``
processes, on any machine, take the jobs. Either way the job is the same function, and
the database, not the queue, is the truth about a study: a lost message or a killed
worker is repaired by ``housekeeping`` (see ``studies.store.stale_studies``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading

from huey import PriorityRedisHuey, SqliteHuey

log = logging.getLogger(__name__)


def make_huey(broker_url: str | None, instance_path: str):
    """The Huey instance for a broker URL: Redis, a SQLite file, or the default file."""
    url = (broker_url or "").strip()
    if url.startswith(("redis://", "rediss://", "unix://")):
        # The priority flavour, so contact mail goes ahead of queued studies (Redis >= 5).
        return PriorityRedisHuey("lungscan", url=url, results=False)
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
            return SqliteHuey("lungscan", filename=path, results=False, timeout=30)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def enqueue_or_defer(what: str, task, *args) -> bool:
    """Queue ``task(*args)``; a broker that is down only delays it, because the job's
    row is already stored and housekeeping queues it again. False when it was not."""
    try:
        task(*args)
    except Exception as exc:  # noqa: BLE001 - the row is stored; it will be found
        log.warning("could not queue %s (%s); it will be queued again", what,
                    type(exc).__name__)
        return False
    return True


class JobQueue:
    """``init_app`` builds the queue from config and registers the app's jobs."""

    def __init__(self):
        self.huey = None
        self.embedded = False
        self._app = None
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def init_app(self, app) -> None:
        from .tasks import register_tasks

        self._app = app
        self.huey = make_huey(app.config.get("BROKER_URL"), app.instance_path)
        self.embedded = (not app.config.get("BROKER_URL")
                         and bool(app.config.get("EMBEDDED_WORKER")))
        self.tasks = register_tasks(self.huey, app)
        app.extensions["job_queue"] = self
        if self.embedded:
            app.before_request(self.start_embedded_worker)

    def enqueue_study(self, study_id: str) -> None:
        """Queue a study; a broker that is down only delays it (housekeeping re-queues)."""
        self._enqueue("a study", self.tasks.run_study, study_id)

    def enqueue_contact(self, row_id: int, ticket: str) -> None:
        """Queue a stored message's mail; the same repair as studies if the broker is down."""
        self._enqueue("a contact message", self.tasks.forward_contact, row_id, ticket)

    def _enqueue(self, what: str, task, *args) -> None:
        enqueue_or_defer(what, task, *args)
        self._wake.set()

    def start_embedded_worker(self) -> None:
        """Start this process's worker thread once (cheap on every later request)."""
        if self._worker is not None:
            return
        with self._start_lock:
            if self._worker is None:
                from .worker import EmbeddedWorker

                self._worker = EmbeddedWorker(self.huey, self._app, self.tasks, self._wake)
                self._worker.start()

    def stop_embedded_worker(self, timeout: float = 30.0) -> None:
        if self._worker is not None:
            self._worker.stop(timeout)
            self._worker = None
