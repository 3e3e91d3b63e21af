"""The database schema: Alembic revisions in migrations/, applied at start or by command.

The embedded default (SQLite, ``make run``) must work on a fresh clone with no extra
step, so each process brings the database to the newest revision when it starts
(``AUTO_MIGRATE``, true by default). Processes starting together take turns through
``migration_lock`` and the later ones find nothing to do. With ``AUTO_MIGRATE`` false
(several machines sharing PostgreSQL) the app leaves the schema alone and one
deployment step runs ``flask db upgrade``, which takes the same lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
from contextlib import contextmanager
from functools import lru_cache

from alembic import command
from alembic.script import ScriptDirectory
from flask import Flask
from flask_migrate import Migrate
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from config import is_true

MIGRATIONS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "migrations")
# Key of the PostgreSQL advisory lock held while migrating ("LungScan" as 8 bytes).
ADVISORY_LOCK_KEY = int.from_bytes(b"LungScan", "big") - (1 << 63)

log = logging.getLogger(__name__)
migrate = Migrate(directory=MIGRATIONS_DIR)


def init_schema(app: Flask, db) -> None:
    """Register ``flask db`` and, unless ``AUTO_MIGRATE`` is off, upgrade the database."""
    migrate.init_app(app, db)
    if auto_migrate(app.config.get("AUTO_MIGRATE", True)):
        with app.app_context():
            upgrade_to_head(app, db.engine)


def auto_migrate(value) -> bool:
    """``FLASK_AUTO_MIGRATE=no`` arrives as a string: read it as people mean it."""
    return is_true(value)


def upgrade_to_head(app: Flask, engine) -> bool:
    """Upgrade unless already at the head revision (then no lock is taken); True if run."""
    head = head_revision(MIGRATIONS_DIR)
    if current_revision(engine) == head:
        return False
    command.upgrade(app.extensions["migrate"].migrate.get_config(), "head")
    log.info("database schema upgraded to %s", head)
    return True


def current_revision(engine) -> str | None:
    """The database's revision (None before the first upgrade), read without Alembic's
    start-up log lines: every process checks it at every start."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


@lru_cache(maxsize=None)
def head_revision(directory: str) -> str:
    """The newest revision; read once per process (the files do not change under it)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", directory)
    return ScriptDirectory.from_config(config).get_current_head()


@contextmanager
def migration_lock(connection: Connection):
    """One migrating process at a time per database, held until its commit is done.

    Used by migrations/env.py around the migration's transaction. PostgreSQL: a session
    advisory lock on the migration's own connection (it ends with the connection if the
    process dies). SQLite: ``flock`` on a file beside the database file, which covers
    every process that can open that file.
    """
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(text("SELECT pg_advisory_lock(:key)"),
                           {"key": ADVISORY_LOCK_KEY})
        connection.commit()  # the lock outlives this transaction; Alembic starts its own
        try:
            yield
        finally:
            if not connection.invalidated:  # else the lock went with the connection
                connection.rollback()
                connection.execute(text("SELECT pg_advisory_unlock(:key)"),
                                   {"key": ADVISORY_LOCK_KEY})
                connection.commit()
        return
    path = connection.engine.url.database if dialect == "sqlite" else None
    if not path or path == ":memory:" or path.startswith("file:"):
        yield  # an in-memory database (this process's own), or an engine not supported
        return
    with open(path + ".migrate-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
