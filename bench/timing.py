"""Wall-clock samples of a call, shared by the benchmark scripts."""

from __future__ import annotations

import time


def samples_ms(call, repeat: int) -> list[float]:
    """Milliseconds of ``repeat`` calls of ``call()``, after one warm-up call."""
    call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples
