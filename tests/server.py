"""Start the real application under gunicorn on loopback, for load and durability tests.

The server gets its own instance folder, model folder and temporary folder under a
test's tmp path, binds port 0 (the kernel picks a free one, read back from gunicorn's
log: no race with other tests) and runs in its own process group so that a test can
SIGKILL the master and every worker at once. The project's ``gunicorn.conf.py`` is
used as in production (threads, timeouts, inference thread sizing); the flags below
override only the address, the worker count and the logs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")


@dataclass
class LiveServer:
    process: subprocess.Popen
    url: str
    log_path: Path
    instance: Path
    tmpdir: Path
    env: dict = field(repr=False, default_factory=dict)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: the master's children."""
        master = self.process.pid
        children = Path(f"/proc/{master}/task/{master}/children")
        if children.exists():
            return [int(pid) for pid in children.read_text().split()]
        return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                and _parent_pid(p) == master]

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean-up, no flush, like a power cut."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


def _parent_pid(proc_dir: Path) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def rss_mb(pid: int) -> float:
    """Resident memory of one process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def start_server(root: Path, model_dir: Path, *, workers: int = 2, env: dict | None = None,
                 startup_timeout: float = 60.0) -> LiveServer:
    """Start gunicorn; return once ``/readyz`` answers 200. ``root`` holds its files."""
    root = Path(root)
    instance, tmpdir = root / "instance", root / "tmp"
    instance.mkdir(parents=True, exist_ok=True)
    tmpdir.mkdir(parents=True, exist_ok=True)
    log_path = root / "gunicorn.log"
    log_start = log_path.stat().st_size if log_path.exists() else 0  # a restart appends
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("FLASK_")}
    server_env.update({
        "FLASK_INSTANCE_PATH": str(instance),
        "FLASK_MODEL_DIR": str(model_dir),
        "FLASK_RATELIMIT_ENABLED": "false",
        "TMPDIR": str(tmpdir),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONUNBUFFERED": "1",
    })
    # The configuration's way to choose the worker count.
    server_env["WEB_CONCURRENCY"] = str(workers)
    server_env.update(env or {})
    config = ROOT / "gunicorn.conf.py"
    command = [sys.executable, "-m", "gunicorn",
               *(["--config", str(config)] if config.exists() else []),
               "--bind", "127.0.0.1:0", "--workers", str(workers), "--graceful-timeout", "5",
               "--no-control-socket",
               "--access-logfile", str(log_path), "--error-logfile", str(log_path),
               "--capture-output", "--log-level", "info", "app:create_app()"]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=server_env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = LiveServer(process, "", log_path, instance, tmpdir, server_env)
    own_log = lambda: server.log_text()[log_start:]  # noqa: E731
    deadline = time.monotonic() + startup_timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited {process.returncode}:\n{server.log_text()}")
            match = LISTENING.search(own_log())
            if match and not server.url:
                server.url = f"http://127.0.0.1:{match.group(1)}"
            if server.url and _ready(server.url):
                return server
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn not ready in {startup_timeout} s:\n{server.log_text()}")
    except BaseException:
        server.kill()
        raise


def _ready(url: str) -> bool:
    try:
        return requests.get(url + "/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False
