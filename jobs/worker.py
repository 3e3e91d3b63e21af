"""Workers: the embedded thread of a web process, and ``flask worker``'s consumer.

Both take jobs from the same queue with Huey's own ``dequeue``/``execute`` (the
consumer) and both run housekeeping every ``WORKER_SWEEP_S`` seconds, which queues
again any study whose worker died and purges expired ones.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class Housekeeper(threading.Thread):
    """Runs ``housekeeping`` now and then every ``interval`` seconds until stopped."""

    def __init__(self, housekeeping, interval: float):
        super().__init__(name="study-housekeeping", daemon=True)
        self.housekeeping, self.interval = housekeeping, interval
        self.stopping = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.housekeeping()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the loop
                log.exception("study housekeeping failed; trying again later")
            if self.stopping.wait(self.interval):
                return


class EmbeddedWorker(threading.Thread):
    """One job at a time inside a web process (the default: no broker, no server)."""

    def __init__(self, huey, app, tasks, wake: threading.Event):
        super().__init__(name="embedded-worker", daemon=True)
        self.huey, self.wake = huey, wake
        self.stopping = threading.Event()
        self.housekeeper = Housekeeper(tasks.housekeeping, float(app.config["WORKER_SWEEP_S"]))
        self.poll_s = float(app.config.get("EMBEDDED_POLL_S", 1.0))

    def run(self) -> None:
        self.housekeeper.start()
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
        self.housekeeper.stopping.set()
        self.wake.set()
        self.join(timeout)


def run_consumer(app, workers: int = 1) -> None:
    """``flask worker``: Huey's consumer (signals handled) plus housekeeping."""
    queue = app.extensions["job_queue"]
    housekeeper = Housekeeper(queue.tasks.housekeeping, float(app.config["WORKER_SWEEP_S"]))
    housekeeper.start()
    if app.config.get("PREPARE_MODELS"):
        app.extensions["inference"].start_preparation()
    consumer = queue.huey.create_consumer(workers=workers, worker_type="thread",
                                          periodic=False, initial_delay=0.1, backoff=1.15,
                                          max_delay=float(app.config.get("EMBEDDED_POLL_S", 1.0)))
    started = time.monotonic()
    try:
        consumer.run()
    finally:
        housekeeper.stopping.set()
        log.info("worker stopped after %.0f s", time.monotonic() - started)
