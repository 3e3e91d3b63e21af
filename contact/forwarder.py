"""A per-process background thread that forwards stored messages, so no visitor waits on SMTP.

A post wakes it (``notify``); while messages remain unsent it wakes again when the
earliest one can next be claimed (back-off after failures, or another sender's lease).
Claims in ``mailer`` keep several forwarders (threads, workers, replicas) from sending
a message twice. Rows left unsent before a restart go out after the process's first
request (``views.forward_backlog``), or with ``flask contact forward``.
"""

from __future__ import annotations

import logging
import os
import threading

from flask import Flask

from .mailer import forward_pending, next_due
from .models import utcnow

log = logging.getLogger(__name__)
BATCH = 20
MIN_WAIT_S = 0.05  # never spin, even if clocks disagree between replicas
_create_lock = threading.Lock()


class Forwarder:
    """Runs ``forward_pending()`` in a daemon thread, started on first need."""

    def __init__(self, app: Flask):
        self.app = app
        self.wake = threading.Event()
        self.stopping = False
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.pid = 0

    def notify(self) -> None:
        """A message was stored: forward it soon, starting the thread if needed."""
        self._ensure_started()
        self.wake.set()

    def stop(self, timeout: float = 30) -> None:
        """Send what is stored now (one last pass), then end the thread.

        For orderly shutdown and tests: once it returns, every message stored before
        the call has had its attempt, unless another sender held it.
        """
        self.stopping = True
        self.wake.set()
        if self.thread is not None and self.thread.is_alive():
            self.thread.join(timeout)

    def _ensure_started(self) -> None:
        with self.lock:
            # A forked child inherits the object but not the thread: start its own.
            if self.thread is not None and self.thread.is_alive() and self.pid == os.getpid():
                return
            self.pid, self.stopping = os.getpid(), False
            self.thread = threading.Thread(target=self._run, name="contact-forwarder",
                                           daemon=True)
            self.thread.start()

    def _run(self) -> None:
        while True:
            last = self.stopping  # a stop during this pass gets one more pass
            delay = self.run_once()
            if last:
                return
            self.wake.wait(delay)
            self.wake.clear()

    def run_once(self) -> float | None:
        """Forward what can be sent now; seconds until the next try, None when idle."""
        with self.app.app_context():
            try:
                while sum(forward_pending(limit=BATCH)) == BATCH:
                    pass  # a full batch: more may be waiting
                due = next_due()
            except Exception as exc:  # noqa: BLE001 - the thread must survive a bad pass
                log.warning("contact forwarding pass failed: %s", type(exc).__name__)
                return float(self.app.config["CONTACT_FORWARD_RETRY_S"])
        if due is None:
            return None
        wait = (due - utcnow()).total_seconds()
        return min(max(wait, MIN_WAIT_S), float(self.app.config["CONTACT_FORWARD_RETRY_MAX_S"]))


def forwarder_for(app: Flask) -> Forwarder:
    """The app's forwarder in this process, created once."""
    with _create_lock:
        if "contact_forwarder" not in app.extensions:
            app.extensions["contact_forwarder"] = Forwarder(app)
        return app.extensions["contact_forwarder"]
