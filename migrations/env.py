"""Alembic's environment for the app's database, whichever engine the app configures.

Run through Flask-Migrate (``flask db ...``) or ``web.migrate`` at start, inside an
app context. Logging is left to the app: Alembic's usual ``fileConfig`` would replace
the app's (and gunicorn's) logging set-up.
"""

import logging

from alembic import context
from flask import current_app

from web.migrate import migration_lock

config = context.config
logger = logging.getLogger("alembic.env")
migrate_extension = current_app.extensions["migrate"]
target_metadata = migrate_extension.db.metadata


def process_revision_directives(_context, _revision, directives):
    """``flask db migrate`` writes no empty revision when the models did not change."""
    autogenerate = getattr(config.cmd_opts, "autogenerate", False)
    if autogenerate and directives[0].upgrade_ops.is_empty():
        directives[:] = []
        logger.info("No changes in schema detected.")


def run_migrations_offline():
    """``--sql``: print the SQL for the configured database's dialect."""
    url = migrate_extension.db.engine.url.render_as_string(hide_password=False)
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    arguments = dict(migrate_extension.configure_args)
    arguments.setdefault("process_revision_directives", process_revision_directives)
    with migrate_extension.db.engine.connect() as connection, migration_lock(connection):
        # The version is read under the lock: a process that waited finds the work of
        # the one before it committed, and does nothing.
        context.configure(connection=connection, target_metadata=target_metadata,
                          transactional_ddl=True, **arguments)
        with context.begin_transaction():
            if connection.dialect.name == "sqlite":
                # All or nothing on SQLite too: its driver sends no BEGIN before DDL, so
                # each statement would otherwise commit on its own. IMMEDIATE: the write
                # lock first, so a running app's writes cannot void what was read.
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
