"""A real redis-server on loopback for a test: started on a free port, stopped after."""

from __future__ import annotations

import shutil
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from .waiting import listening, wait_until_up

REDIS_SERVER = shutil.which("redis-server")
needs_redis = [pytest.mark.services,
               pytest.mark.skipif(REDIS_SERVER is None,
                                  reason="redis-server is missing: install Debian's "
                                         "redis-server (.ci/run does)")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def redis_server(folder: Path):
    """Yield ``redis://127.0.0.1:PORT/0``; no persistence, loopback only."""
    port = free_port()
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_until_up(lambda: listening(port), process, "redis-server", timeout=20)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)
