"""How long a job waits before trying again: one rule for mail, write-backs, PACS
arrivals and the workers' own loops (a leaf module: it imports nothing of the app)."""

from __future__ import annotations


def doubling_delay(first_s: float, failures: int, cap_s: float) -> float:
    """Seconds to wait after ``failures`` failures in a row: ``first_s`` after the
    first, doubling with each one after it, never more than ``cap_s``."""
    return min(first_s * 2 ** min(max(0, failures - 1), 30), cap_s)  # 2**30: no overflow
