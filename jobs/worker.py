"""Workers: the embedded thread of a web process, and ``flask worker``'s consumer.

Both take jobs from the same queue with Huey's own ``dequeue``/``execute`` (the
consumer) and both run housekeeping every ``WORKER_SWEEP_S`` seconds, which queues
again any study, contact mail or PACS write-back whose job was lost or whose worker
died (and a mail or write-back whose retry time came), and purges expired studies.
"""

from __future__ import annotations

import logging
import threading
import time

from inference.errors import ServiceError

from .backoff import doubling_delay

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 600  # a loop failing again and again waits at most this long


class Housekeeper(threading.Thread):
    """Runs ``housekeeping`` now and then every ``interval`` seconds until stopped."""

    def __init__(self, housekeeping, interval: float, name: str = "study-housekeeping"):
        super().__init__(name=name, daemon=True)
        self.housekeeping, self.interval = housekeeping, interval
        self.stopping = threading.Event()

    def run(self) -> None:
        failures = 0
        while True:
            try:
                self.housekeeping()
                failures = 0
            except ServiceError as exc:  # e.g. the PACS is down: said plainly, backed off
                failures += 1
                log.warning("%s: %s (trying again in %.0f s)", self.name, exc.message,
                            self.delay(failures))
            except Exception:  # noqa: BLE001 - a database hiccup must not end the loop
                failures += 1
                log.exception("%s failed; trying again later", self.name)
            if self.stopping.wait(self.delay(failures)):
                return

    def delay(self, failures: int) -> float:
        """The interval, doubled per failure in a row up to ``MAX_BACKOFF_S``."""
        return doubling_delay(self.interval, failures + 1, max(self.interval, MAX_BACKOFF_S))


def background_loops(app, tasks) -> list[Housekeeper]:
    """Housekeeping, and the PACS poll when auto-analysis is on."""
    loops = [Housekeeper(tasks.housekeeping, float(app.config["WORKER_SWEEP_S"]))]
    if getattr(tasks.pacs_poll, "enabled", False):
        loops.append(Housekeeper(tasks.pacs_poll, float(app.config["PACS_POLL_S"]),
                                 name="pacs-poll"))
    return loops


class EmbeddedWorker(threading.Thread):
    """One job at a time inside a web process (the default: no broker, no server)."""

    def __init__(self, huey, app, tasks, wake: threading.Event):
        super().__init__(name="embedded-worker", daemon=True)
        self.huey, self.wake = huey, wake
        self.stopping = threading.Event()
        self.housekeepers = background_loops(app, tasks)
        self.poll_s = float(app.config["EMBEDDED_POLL_S"])

    def run(self) -> None:
        for loop in self.housekeepers:
            loop.start()
        while not self.stopping.is_set():
            try:
                task = self.huey.dequeue()
            except Exception:  # noqa: BLE001 - queue file busy: look again shortly
                log.exception("could not read the job queue")
                task = None
            if task is None:
                self.wake.wait(self.poll_s)
                self.wake.clear()
                continue
            self.huey.execute(task)

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        for loop in self.housekeepers:
            loop.stopping.set()
        self.wake.set()
        self.join(timeout)


def run_consumer(app, workers: int = 1) -> None:
    """``flask worker``: Huey's consumer (signals handled) plus housekeeping."""
    queue = app.extensions["job_queue"]
    loops = background_loops(app, queue.tasks)
    for loop in loops:
        loop.start()
    if app.config.get("PREPARE_MODELS"):
        app.extensions["inference"].start_preparation()
    consumer = queue.huey.create_consumer(workers=workers, worker_type="thread",
                                          periodic=False, initial_delay=0.1, backoff=1.15,
                                          max_delay=float(app.config["EMBEDDED_POLL_S"]))
    started = time.monotonic()
    try:
        consumer.run()
    finally:
        for loop in loops:
            loop.stopping.set()
        log.info("worker stopped after %.0f s", time.monotonic() - started)
