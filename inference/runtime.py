"""The process's compute resources: cores, thread pools, TensorFlow, memory.

Everything that sizes or inspects this process lives here, so the serving code,
the training tool and ``gunicorn.conf.py`` agree on one answer. Importing this module
is cheap: TensorFlow is imported by ``import_tensorflow`` only, on first use.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
import os
import threading

log = logging.getLogger(__name__)

_tf_lock = threading.Lock()
_tf_configured = False


CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"  # cgroup v2: "<quota> <period>" or "max ..."


def cgroup_cpu_limit(path: str | None = None) -> int | None:
    """The container's CPU quota in whole cores (rounded up), or None without one: a
    container limited to 2 CPUs on a 64-core host must size its pools for 2."""
    try:
        with open(path or CGROUP_CPU_MAX, encoding="ascii") as limits:
            quota, period = limits.read().split()[:2]
        return max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):  # no cgroup v2 file, or "max" (no limit)
        return None


def available_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a container's CPU
    quota, not the machine's count."""
    try:
        cores = len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return min(cores, limit) if limit else cores


def intra_op_threads(configured: int = 0) -> int:
    """Threads for one forward pass: the configured number, else this process's cores
    (gunicorn.conf.py configures each worker's share)."""
    if configured and configured > 0:
        return int(configured)
    return available_cores()


def import_tensorflow(threads: int = 0):
    """Import TensorFlow once, setting its thread pools before the first op runs."""
    global _tf_configured
    with _tf_lock:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        if not _tf_configured:
            intra = intra_op_threads(threads)
            try:
                tf.config.threading.set_intra_op_parallelism_threads(intra)
                tf.config.threading.set_inter_op_parallelism_threads(1 if intra <= 2 else 2)
            except RuntimeError:  # already initialised by someone else: keep theirs
                log.debug("TensorFlow threads were already configured")
            _tf_configured = True
        return tf


def resident_memory_mb() -> float:
    """This process's resident set size, from /proc (Linux) or resource (elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_freed_memory() -> None:
    """Collect, then hand freed heap pages back to the system (glibc keeps them)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# The vector instructions that decide which precisions run fast (bf16, INT8/VNNI, AMX).
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni",
                "amx_bf16", "amx_int8", "amx_tile")


@functools.lru_cache(maxsize=None)
def cpu_signature(cpuinfo: str = "/proc/cpuinfo") -> str:
    """``<CPU model>|<its vector flags>``: two machines that answer alike here run a
    model at the same relative speeds, so a measurement made on one holds on the other.
    Read once per process: the preparer's poll and ``/api/v1/models`` ask often."""
    model, flags = "unknown CPU", set()
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = " ".join(value.split())
                elif key.strip() in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        import platform

        model = platform.processor() or platform.machine() or model
    return f"{model}|{','.join(f for f in VECTOR_FLAGS if f in flags) or 'baseline'}"
