"""Helpers the domains' jobs share: how long to wait before trying again, and queueing
that a broker outage only delays. A leaf module: it imports nothing of the app."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def doubling_delay(first_s: float, failures: int, cap_s: float) -> float:
    """Seconds to wait after ``failures`` failures in a row: ``first_s`` after the
    first, doubling with each one after it, never more than ``cap_s``."""
    return min(first_s * 2 ** min(max(0, failures - 1), 30), cap_s)  # 2**30: no overflow


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
