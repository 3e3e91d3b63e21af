"""A real PostgreSQL (Debian's) on loopback for tests: a throw-away cluster, stopped after.

PostgreSQL refuses to run as root, so when the tests do, the cluster is made and run
as the ``postgres`` user that Debian's package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from .redis_server import free_port


def postgres_bin() -> Path | None:
    """The newest installed server's bin folder (/usr/lib/postgresql/<major>/bin)."""
    found = [Path(path).parent for path in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")]
    found.sort(key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0)
    return found[-1] if found else None


POSTGRES_BIN = postgres_bin()
needs_postgres = [pytest.mark.services,
                  pytest.mark.skipif(POSTGRES_BIN is None,
                                     reason="postgresql is missing: install Debian's "
                                            "postgresql (.ci/run does)")]


def as_server_user(command: list[str]) -> list[str]:
    """``command`` as the user the server runs as: root hands over to ``postgres``."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextmanager
def postgres_server():
    """Yield a ``make_database()`` callable; each call returns the SQLAlchemy URL of a
    new, empty database (``postgresql+psycopg://postgres@127.0.0.1:PORT/NAME``)."""
    import psycopg

    folder = Path(tempfile.mkdtemp(prefix="lungscan-postgres-"))
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        server_user = pwd.getpwnam("postgres")
        for path in (folder, sockets):
            os.chown(path, server_user.pw_uid, server_user.pw_gid)
    port = free_port()
    try:
        start(data, sockets, port, folder / "server.log")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    names = iter(range(1, 1_000_000))

    def make_database() -> str:
        name = f"lungscan_{next(names)}"
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres",
                             dbname="postgres", autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{name}"

    try:
        yield make_database
    finally:
        subprocess.run(as_server_user([str(POSTGRES_BIN / "pg_ctl"), "-D", str(data),
                                       "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def start(data: Path, sockets: Path, port: int, log: Path) -> None:
    """A new cluster in ``data``, listening on 127.0.0.1:``port`` only; trust auth."""
    try:
        subprocess.run(as_server_user([
            str(POSTGRES_BIN / "initdb"), "-D", str(data), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--no-sync"]),
            check=True, capture_output=True, text=True)
        subprocess.run(as_server_user([
            str(POSTGRES_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
            "-t", "60",
            "-o", f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start"]),
            check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as error:
        server_log = log.read_text() if log.exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {error.stderr}{server_log}"
                           ) from error
