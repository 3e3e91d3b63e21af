"""One forward pass at a time per process, with queued requests run as one batch.

Each pass already uses every core of this process's share, so running two at once
only makes both slower and multiplies the memory in flight. Requests for one model
that queue at the gate are run together by whichever of them gets the gate first: a
batch of 8 costs far less than 8 single images. ``batch_sizes`` counts the batches
actually formed, so that claim can be checked under load.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import Future
from typing import Callable

import numpy as np

MAX_BATCH = 8  # images run together when requests for one model queue up

Outputs = tuple[np.ndarray, "np.ndarray | None"]


class MicroBatcher:
    """Runs ``run(batch) -> (outputs, features)`` behind ``gate``, batching the queue."""

    def __init__(self, run: Callable[[np.ndarray], Outputs], gate: threading.Semaphore,
                 max_batch: int = MAX_BATCH):
        self.run = run
        self.gate = gate
        self.max_batch = max_batch
        self.batch_sizes: Counter = Counter()  # images per pass -> number of passes
        self._pending: list = []
        self._pending_lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> Outputs:
        done: Future = Future()
        with self._pending_lock:
            self._pending.append((batch, done))
        with self.gate:
            with self._pending_lock:
                work, self._pending = (self._pending[:self.max_batch],
                                       self._pending[self.max_batch:])
            if work:
                self._run_together(work)
        return done.result()

    def _run_together(self, work: list) -> None:
        try:  # a batch that cannot be formed fails them all too, none waits forever
            batch = work[0][0] if len(work) == 1 else np.concatenate([b for b, _ in work])
            outputs, features = self.run(batch)
        except BaseException as exc:  # every waiting request gets the error
            for _, done in work:
                done.set_exception(exc)
            return
        self.batch_sizes[len(batch)] += 1
        start = 0
        for part, done in work:
            end = start + len(part)
            done.set_result((outputs[start:end],
                             None if features is None else features[start:end]))
            start = end
