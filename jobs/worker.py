"""Workers: the embedded thread of a web process, and ``flask worker``'s consumer.

Both take jobs from the same queue with Huey's own ``dequeue``/``execute`` (the
consumer) and both run the queue's ``loops`` (each domain's housekeeping, which queues
again whatever job was lost or whose worker died, and the PACS poll) on threads.
"""

from __future__ import annotations

import logging
import threading
import time

from inference.errors import ServiceError

from .retry import doubling_delay

log = logging.getLogger(__name__)


class Housekeeper(threading.Thread):
    """Runs ``job`` now and then every ``interval`` seconds until stopped."""

    def __init__(self, job, interval: float, name: str, backoff_max_s: float):
        super().__init__(name=name, daemon=True)
        self.job, self.interval, self.backoff_max_s = job, interval, backoff_max_s
        self.stopping = threading.Event()

    def run(self) -> None:
        failures = 0
        while True:
            try:
                self.job()
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
        """The interval, doubled per failure in a row up to the back-off maximum."""
        return doubling_delay(self.interval, failures + 1,
                              max(self.interval, self.backoff_max_s))


def background_loops(queue) -> list[Housekeeper]:
    """A thread for each of the queue's loops."""
    return [Housekeeper(loop.job, loop.interval_s, loop.name, queue.settings.backoff_max_s)
            for loop in queue.loops]


class EmbeddedWorker(threading.Thread):
    """One job at a time inside a web process (the default: no broker, no server)."""

    def __init__(self, queue, wake: threading.Event):
        super().__init__(name="embedded-worker", daemon=True)
        self.huey, self.wake = queue.huey, wake
        self.stopping = threading.Event()
        self.housekeepers = background_loops(queue)
        self.poll_s = queue.settings.poll_s

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


def run_consumer(queue, workers: int = 1) -> None:
    """``flask worker``: Huey's consumer (signals handled) plus the queue's loops."""
    loops = background_loops(queue)
    for loop in loops:
        loop.start()
    for hook in queue.on_worker_start:
        hook()
    consumer = queue.huey.create_consumer(workers=workers, worker_type="thread",
                                          periodic=False, initial_delay=0.1, backoff=1.15,
                                          max_delay=queue.settings.poll_s)
    started = time.monotonic()
    try:
        consumer.run()
    finally:
        for loop in loops:
            loop.stopping.set()
        log.info("worker stopped after %.0f s", time.monotonic() - started)
