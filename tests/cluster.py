"""The whole deployment on loopback: PostgreSQL, Redis, web replicas behind HAProxy, workers.

``cluster(root, model_dir)`` starts what ``deploy/compose.yaml`` starts, from Debian's
binaries instead of images: one PostgreSQL, one Redis (queue in db 0, rate-limit
counters in db 1), the schema applied once by ``flask db upgrade`` (the replicas leave
it alone), ``replicas`` gunicorn servers that share only the database, the broker and
the secret key (each has its own instance folder: no shared disk), ``workers`` `flask
worker` processes, and HAProxy balancing round robin over the replicas that pass
``/readyz``. Checks every half second, two failures to leave the pool and one success
to return, so a dead replica or a lost database is out of the pool in about a second.

Fault tests use its handles: ``LiveServer.kill()`` for a replica, ``os.killpg`` on a
worker, ``redis.stop()/start()`` and ``postgres.stop()/start()`` (same port, data kept).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from .postgres_server import POSTGRES_BIN, postgres_server
from .redis_server import REDIS_SERVER, free_port
from .server import ROOT, LiveServer, start_server
from .study_helpers import start_worker, worker_env

HAPROXY = shutil.which("haproxy")
START_TIMEOUT_S = 60  # a guard against a broken build hanging, not a measurement

needs_cluster = [
    pytest.mark.services,
    pytest.mark.alone,  # make test runs these after the parallel run, with no other test
    pytest.mark.skipif(HAPROXY is None, reason="haproxy is missing: install Debian's "
                                               "haproxy (.ci/run does)"),
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is missing: install "
                                                    "Debian's redis-server (.ci/run does)"),
    pytest.mark.skipif(POSTGRES_BIN is None, reason="postgresql is missing: install Debian's "
                                            "postgresql (.ci/run does)"),
]


def wait_for(condition, what: str, deadline_s: float = START_TIMEOUT_S):
    """Poll ``condition`` until it returns something true; fail loudly if it never does."""
    end = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise RuntimeError(f"gave up waiting for {what} after {deadline_s} s")
        time.sleep(0.1)


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


class Redis:
    """A redis-server that can be stopped and started again on the same port.

    Stopping asks for ``SHUTDOWN SAVE``, so the queued jobs come back with it, as they
    would from a Redis with persistence; a test sees an outage, not a wiped broker.
    """

    def __init__(self, folder: Path):
        self.folder, self.port, self.process = Path(folder), free_port(), None
        self.folder.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        log = open(self.folder / "redis.log", "ab")
        with log:
            self.process = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.folder), "--dbfilename", "dump.rdb"],
                stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: port_open(self.port) or self.process.poll() is not None, "redis")
        if self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited {self.process.returncode}: "
                               f"{(self.folder / 'redis.log').read_text()[-2000:]}")

    def stop(self) -> None:
        """Save the data set, then exit (the port closes: clients see refused connects)."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as client:
                client.sendall(b"SHUTDOWN SAVE\r\n")
                client.recv(256)  # nothing comes back: the server closes as it exits
        except OSError:
            pass
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


class Postgres:
    """The test PostgreSQL by URL, stoppable and startable again with the same options.

    The data directory and the server's own command line (``postmaster.opts``) are read
    from the server itself, so this works whatever folder the server was started in.
    """

    def __init__(self, url: str):
        self.url = url
        self.engine = create_engine(url, poolclass=NullPool)  # no stale pooled sockets
        with self.engine.connect() as connection:
            self.data_dir = Path(connection.execute(text("SHOW data_directory")).scalar())
        self.bin_dir = Path(shlex.split((self.data_dir / "postmaster.opts").read_text())[0]).parent
        self.options = self._server_options()

    def _server_options(self) -> str:
        """The postmaster's flags without the binary and ``-D`` (pg_ctl adds those)."""
        words = shlex.split((self.data_dir / "postmaster.opts").read_text())[1:]
        kept, skip = [], False
        for word in words:
            if skip:
                skip = False
            elif word == "-D":
                skip = True
            else:
                kept.append(word)
        return shlex.join(kept)

    def _pg_ctl(self, *args: str) -> None:
        command = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args]
        owner = self.data_dir.stat().st_uid
        if os.geteuid() == 0 and owner != 0:  # the server refuses to run as root
            command = ["runuser", "-u", pwd.getpwuid(owner).pw_name, "--", *command]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.STDOUT, timeout=120)

    def stop(self) -> None:
        """Fast shutdown: open sessions are cut, as a crash or a fail-over would."""
        self._pg_ctl("-m", "fast", "-w", "stop")

    def start(self) -> None:
        self._pg_ctl("-w", "-l", str(self.data_dir / "restarted.log"), "-o", self.options,
                     "start")

    def scalar(self, sql: str, **params):
        with self.engine.connect() as connection:
            return connection.execute(text(sql), params).scalar()

    def rows(self, sql: str, **params) -> list:
        with self.engine.connect() as connection:
            return list(connection.execute(text(sql), params))


@dataclass
class Cluster:
    url: str
    replicas: list[LiveServer]
    workers: list[subprocess.Popen]
    postgres: Postgres
    redis: Redis
    root: Path
    model_dir: Path
    settings: dict = field(repr=False)
    haproxy: subprocess.Popen | None = None
    worker_logs: list[Path] = field(default_factory=list)

    def start_worker(self) -> subprocess.Popen:
        """One more `flask worker`, with its own instance folder (another machine)."""
        number = len(self.workers)
        folder = self.root / f"worker{number}"
        folder.mkdir(parents=True, exist_ok=True)
        env = worker_env(self.settings, self.model_dir, folder / "instance")
        log = folder / "worker.log"
        worker = start_worker(env, log)
        self.workers.append(worker)
        self.worker_logs.append(log)
        return worker

    def live_workers(self) -> list[subprocess.Popen]:
        return [w for w in self.workers if w.poll() is None]

    def haproxy_log(self) -> str:
        return (self.root / "haproxy.log").read_text(errors="replace")


def deploy_logging() -> str:
    """deploy/haproxy/haproxy.cfg's redacted log lines, so the tests run the shipped rule."""
    text = (ROOT / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    return "\n".join(line for line in text.splitlines()
                     if line.strip().startswith(("http-request set-var(txn.logged_path)",
                                                 "log-format ")))


def haproxy_config(port: int, backends: list[str]) -> str:
    """Round robin over the replicas passing ``/readyz``; retries go to another one."""
    servers = "\n".join(f"    server web{i} {address} check"
                        for i, address in enumerate(backends))
    return f"""global
    log stdout format raw local0
    maxconn 2000

defaults
    mode http
    log global
    option httplog
    option forwardfor
    retries 2
    option redispatch
    timeout connect 2s
    timeout client 180s
    timeout server 180s
    timeout http-request 30s
    timeout http-keep-alive 10s
    timeout queue 60s
    timeout check 2s

frontend public
    bind 127.0.0.1:{port}
{deploy_logging()}
    default_backend web

backend web
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 500 fall 2 rise 1
{servers}
"""


def start_haproxy(root: Path, backends: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = root / "haproxy.cfg"
    config.write_text(haproxy_config(port, backends))
    subprocess.run([HAPROXY, "-c", "-q", "-f", str(config)], check=True)
    with open(root / "haproxy.log", "ab") as log:
        process = subprocess.Popen([HAPROXY, "-f", str(config), "-db"], stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: process.poll() is not None or answers(url + "/readyz"), "haproxy")
    if process.poll() is not None:
        raise RuntimeError(f"haproxy exited {process.returncode}: "
                           f"{(root / 'haproxy.log').read_text()[-2000:]}")
    return process, url


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


def migrate(database_url: str, root: Path, model_dir: Path) -> None:
    """The deployment's one-shot step: ``flask db upgrade`` before any replica starts."""
    folder = root / "migrate"
    folder.mkdir(parents=True, exist_ok=True)
    env = worker_env({"SQLALCHEMY_DATABASE_URI": database_url, "AUTO_MIGRATE": "false",
                      "EMBEDDED_WORKER": "false"}, model_dir, folder / "instance")
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"flask db upgrade failed ({done.returncode}):\n"
                           f"{done.stdout}\n{done.stderr}")


def shared_settings(database_url: str, redis: Redis, extra: dict | None) -> dict:
    """What every replica and worker is told (``FLASK_`` + key): the shared services."""
    settings = {"SQLALCHEMY_DATABASE_URI": database_url, "BROKER_URL": redis.url(0),
                "RATELIMIT_STORAGE_URI": redis.url(1), "AUTO_MIGRATE": "false",
                "PROXY_FIX_X_FOR": "1", "SECRET_KEY": secrets.token_hex(32),
                "PREPARE_MODELS": "false", "EMBEDDED_WORKER": "false"}
    settings.update(extra or {})
    return settings


def start_replicas(root: Path, model_dir: Path, settings: dict, count: int) -> list:
    """Start the replicas side by side (each waits for its own ``/readyz``)."""
    env = {f"FLASK_{key}": str(value) for key, value in settings.items()}
    with ThreadPoolExecutor(max(1, count)) as pool:
        futures = [pool.submit(start_server, root / f"replica{i}", model_dir, workers=1,
                               env=env) for i in range(count)]
        started, failure = [], None
        for future in futures:
            try:
                started.append(future.result())
            except Exception as exc:  # noqa: BLE001 - stop the others, then raise it
                failure = failure or exc
    if failure is not None:
        for server in started:
            server.kill()
        raise failure
    return started


def stop_process(process: subprocess.Popen, sig=signal.SIGTERM) -> None:
    """Signal its process group, then SIGKILL it if it does not exit in time."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(10)


def side_by_side(calls) -> None:
    """Run the stops at once: each may wait out a graceful shutdown."""
    with ThreadPoolExecutor(max(1, len(calls))) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()


@contextmanager
def cluster(root: Path, model_dir: Path, replicas: int = 3, workers: int = 2,
            settings: dict | None = None):
    """Yield a running :class:`Cluster`; everything stops, in reverse order, afterwards.

    ``settings`` adds to (or overrides) what every replica and worker gets, without the
    ``FLASK_`` prefix: ``{"STUDY_BATCH": 1}``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        database_url = stack.enter_context(postgres_server())()
        redis = Redis(root / "redis")
        redis.start()
        stack.callback(redis.stop)
        postgres = Postgres(database_url)
        stack.callback(postgres.engine.dispose)
        migrate(database_url, root, model_dir)
        config = shared_settings(database_url, redis, settings)
        servers = start_replicas(root, model_dir, config, replicas)
        stack.callback(side_by_side, [server.stop for server in servers])
        built = Cluster("", servers, [], postgres, redis, root, Path(model_dir), config)
        stack.callback(lambda: side_by_side(
            [lambda w=w: stop_process(w, signal.SIGINT) for w in built.workers]))
        for _ in range(workers):
            built.start_worker()
        built.haproxy, built.url = start_haproxy(
            root, [server.url.removeprefix("http://") for server in servers])
        stack.callback(stop_process, built.haproxy)
        yield built
