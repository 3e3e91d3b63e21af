"""Waiting for a server a test started: one loop for every one of them."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Callable

import requests


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections there."""
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def answering(url: str, **options) -> bool:
    """Whether an HTTP GET of ``url`` answers 2xx."""
    try:
        return requests.get(url, timeout=1, **options).ok
    except requests.RequestException:
        return False


def wait_until_up(ready: Callable[[], bool], process: subprocess.Popen | None, what: str,
                  log_text: Callable[[], str] = lambda: "", timeout: float = 30) -> None:
    """Return once ``ready()``; ``RuntimeError`` (with the end of the server's log) when
    the process exits first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not ready():
        if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start (exit {process and process.poll()}):\n"
                               f"{log_text()[-3000:]}")
        time.sleep(0.05)
