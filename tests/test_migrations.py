"""Schema migrations (migrations/, web/migrate.py) on SQLite and on a real PostgreSQL.

The revisions must build exactly the models' schema (Alembic's own comparison finds
nothing to change), take over databases made before migrations existed without losing
a row, and let several processes start on one new database at once.
"""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, func, inspect, select, text

from app import create_app
from contact.models import ContactMessage
from extensions import db
from pacs.models import PacsArrival  # noqa: F401 - its table is one of the models'
from studies.models import Study
from web.migrate import MIGRATIONS_DIR, auto_migrate, current_revision, head_revision

from .conftest import testing_config
from .postgres_server import needs_postgres, postgres_server
from .study_helpers import ct_series, submit, wait_for_study, zip_of

# Every app here starts on its own database, as the test made it (or none): never on
# the migrated copy the other tests get (tests/conftest.py).
pytestmark = pytest.mark.fresh_database

ROOT = Path(__file__).resolve().parent.parent
HEAD = head_revision(MIGRATIONS_DIR)
MODEL_TABLES = set(db.metadata.tables)

# contact/models.py's first version, as its create_all made it (SQLite).
CONTACT_BEFORE_CLAIMS = """
CREATE TABLE contact_messages (
    id INTEGER NOT NULL, created_at DATETIME NOT NULL, name VARCHAR(100) NOT NULL,
    email VARCHAR(254) NOT NULL, phone VARCHAR(40), category VARCHAR(20) NOT NULL,
    subject VARCHAR(150) NOT NULL, message TEXT NOT NULL, forwarded_at DATETIME,
    forward_attempts INTEGER NOT NULL, last_error VARCHAR(300), PRIMARY KEY (id));
CREATE INDEX ix_contact_messages_created_at ON contact_messages (created_at);
CREATE INDEX ix_contact_messages_forwarded_at ON contact_messages (forwarded_at);
"""
# The first studies tables (before studies could come from a PACS), with claim columns.
STUDIES_BEFORE_PACS = CONTACT_BEFORE_CLAIMS.replace(
    "last_error VARCHAR(300),", "last_error VARCHAR(300), claimed_until DATETIME, "
    "claim_token VARCHAR(32),") + """
CREATE TABLE studies (
    id VARCHAR(64) NOT NULL, status VARCHAR(16) NOT NULL, modality VARCHAR(16) NOT NULL,
    model VARCHAR(32) NOT NULL, "explain" BOOLEAN NOT NULL, total INTEGER NOT NULL,
    done INTEGER NOT NULL, models JSON NOT NULL, warnings JSON NOT NULL, verdict JSON,
    error_code VARCHAR(64), error_message TEXT, created_at DATETIME NOT NULL,
    enqueued_at DATETIME NOT NULL, started_at DATETIME, updated_at DATETIME,
    finished_at DATETIME, claim_token VARCHAR(64), claimed_until DATETIME,
    attempts INTEGER NOT NULL, PRIMARY KEY (id));
CREATE INDEX ix_studies_claimed_until ON studies (claimed_until);
CREATE INDEX ix_studies_status ON studies (status);
CREATE TABLE study_images (
    study_id VARCHAR(64) NOT NULL, "index" INTEGER NOT NULL, name VARCHAR(255) NOT NULL,
    series_uid VARCHAR(128), instance_number INTEGER, status VARCHAR(16) NOT NULL,
    results JSON NOT NULL, combined JSON, covid_probability FLOAT, positive BOOLEAN,
    warnings JSON NOT NULL, error_code VARCHAR(64), error_message TEXT,
    PRIMARY KEY (study_id, "index"),
    FOREIGN KEY(study_id) REFERENCES studies (id) ON DELETE CASCADE);
CREATE TABLE study_files (
    study_id VARCHAR(64) NOT NULL, "index" INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (study_id, "index"),
    FOREIGN KEY(study_id) REFERENCES studies (id) ON DELETE CASCADE);
CREATE TABLE study_heatmaps (
    study_id VARCHAR(64) NOT NULL, "index" INTEGER NOT NULL,
    architecture VARCHAR(32) NOT NULL, png BLOB NOT NULL,
    PRIMARY KEY (study_id, "index", architecture),
    FOREIGN KEY(study_id) REFERENCES studies (id) ON DELETE CASCADE);
"""
OLD_MESSAGE = ("INSERT INTO contact_messages (id, created_at, name, email, phone, "
               "category, subject, message, forwarded_at, forward_attempts, last_error) "
               "VALUES (7, "
               "'2024-05-01 10:00:00.000000', 'Ana', 'ana@example.org', NULL, 'bug', "
               "'Kept', 'Stored before migrations.', NULL, 0, NULL)")

# A process as a web worker starts: configuration from the environment, then create_app.
# The slow imports come first; all start the app once every one is ready.
START_APP = """
import sys, time
from pathlib import Path
from app import create_app
folder = Path(sys.argv[1])
(folder / f"ready-{sys.argv[2]}").touch()
while not (folder / "go").exists():
    time.sleep(0.005)
create_app()
"""


def schema_diffs(engine) -> list:
    """What Alembic would change to make the database match the models: tables,
    columns, type families, nullability, indexes, foreign keys."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, db.metadata)


def tables(engine) -> set[str]:
    with engine.connect() as connection:
        return set(inspect(connection).get_table_names())


def sqlite_file(tmp_path: Path, script: str = "", *rows: str) -> Path:
    path = tmp_path / "test.sqlite3"
    with sqlite3.connect(path) as old:
        old.executescript(script)
        for row in rows:
            old.execute(row)
    return path


@pytest.fixture
def new_app(tmp_path, instance_path):
    def make(**overrides):
        return create_app(testing_config(tmp_path, **overrides))
    return make


def assert_matches_the_models(app) -> None:
    with app.app_context():
        assert tables(db.engine) == MODEL_TABLES | {"alembic_version"}
        assert schema_diffs(db.engine) == []
        assert current_revision(db.engine) == HEAD


def start_together(tmp_path: Path, database_url: str, count: int = 4) -> list:
    """``count`` real processes create the app on one database at the same moment."""
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    processes = []
    for number in range(count):
        env = {**os.environ, "FLASK_SQLALCHEMY_DATABASE_URI": database_url,
               "FLASK_INSTANCE_PATH": str(tmp_path / f"instance-{number}"),
               "FLASK_MODEL_DIR": str(tmp_path / "models"), "FLASK_TESTING": "true",
               "FLASK_PREPARE_MODELS": "false", "FLASK_EMBEDDED_WORKER": "false",
               "PYTHONPATH": str(ROOT)}
        processes.append(subprocess.Popen(
            [sys.executable, "-c", START_APP, str(meeting), str(number)], cwd=ROOT,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    while len(list(meeting.glob("ready-*"))) < count and all(
            process.poll() is None for process in processes):
        time.sleep(0.01)
    (meeting / "go").touch()
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    return [(process.returncode, output) for process, output in zip(processes, outputs)]


def test_a_new_database_gets_exactly_the_models_schema(new_app):
    assert_matches_the_models(new_app())


def test_a_contact_database_from_before_migrations_keeps_its_rows(tmp_path, new_app):
    path = sqlite_file(tmp_path, CONTACT_BEFORE_CLAIMS, OLD_MESSAGE)
    old = create_engine(f"sqlite:///{path}")
    assert {"add_table", "add_column"} <= {diff[0] for diff in schema_diffs(old) if
                                            isinstance(diff, tuple)}
    app = new_app()
    assert_matches_the_models(app)
    with app.app_context():
        kept = db.session.get(ContactMessage, 7)
        assert (kept.name, kept.subject, kept.message) == ("Ana", "Kept",
                                                           "Stored before migrations.")
        assert kept.claimed_until is None and kept.claim_token is None
        db.session.add(ContactMessage(name="Bo", email="bo@example.org", category="other",
                                      subject="New", message="After the upgrade."))
        db.session.commit()
        assert db.session.scalar(select(func.count(ContactMessage.id))) == 2
    assert_matches_the_models(new_app())  # a second start changes nothing


def test_the_default_database_keeps_an_existing_file_of_the_old_name(tmp_path,
                                                                  monkeypatch):
    """Without a database URL the instance folder holds lungscan.sqlite3; an instance
    that already has contact.sqlite3 (the earlier name) goes on using it, rows and all."""
    def app_in(instance: Path):
        monkeypatch.setenv("FLASK_INSTANCE_PATH", str(instance))
        config = testing_config(tmp_path)
        del config["SQLALCHEMY_DATABASE_URI"]
        return create_app(config)

    fresh = app_in(tmp_path / "fresh")
    assert fresh.config["SQLALCHEMY_DATABASE_URI"].endswith("/fresh/lungscan.sqlite3")
    assert (tmp_path / "fresh" / "lungscan.sqlite3").is_file()
    (tmp_path / "old").mkdir()
    sqlite_file(tmp_path / "old", CONTACT_BEFORE_CLAIMS, OLD_MESSAGE).rename(
        tmp_path / "old" / "contact.sqlite3")
    old = app_in(tmp_path / "old")
    assert old.config["SQLALCHEMY_DATABASE_URI"].endswith("/old/contact.sqlite3")
    assert not (tmp_path / "old" / "lungscan.sqlite3").exists()
    with old.app_context():
        assert db.session.get(ContactMessage, 7).subject == "Kept"


def test_studies_from_before_pacs_gain_the_pacs_columns(tmp_path, new_app):
    sqlite_file(tmp_path, STUDIES_BEFORE_PACS, OLD_MESSAGE, (
        "INSERT INTO studies (id, status, modality, model, explain, total, done, models, "
        "warnings, created_at, enqueued_at, attempts) VALUES ('s1', 'done', 'ct', "
        "'vgg16', 0, 1, 1, '[]', '[]', '2024-05-01 10:00:00', '2024-05-01 10:00:00', 1)"))
    app = new_app()
    assert_matches_the_models(app)
    with app.app_context():
        study = db.session.get(Study, "s1")
        assert (study.status, study.source, study.pacs_study_uid, study.written) == (
            "done", "upload", None, None)
        assert db.session.get(ContactMessage, 7).subject == "Kept"


def test_a_database_made_by_create_all_is_taken_over(tmp_path, new_app):
    path = sqlite_file(tmp_path)
    made = create_engine(f"sqlite:///{path}")
    db.metadata.create_all(made)
    with made.begin() as connection:
        connection.execute(text(OLD_MESSAGE))
    app = new_app()
    assert_matches_the_models(app)
    with app.app_context():
        assert db.session.get(ContactMessage, 7).subject == "Kept"


def test_four_processes_starting_at_once_on_a_new_database(tmp_path):
    path = tmp_path / "shared.sqlite3"
    started = start_together(tmp_path, f"sqlite:///{path}")
    assert [code for code, _output in started] == [0] * 4, started
    engine = create_engine(f"sqlite:///{path}")
    assert tables(engine) == MODEL_TABLES | {"alembic_version"}
    assert schema_diffs(engine) == []
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")
                                  ).scalars().all() == [HEAD]


def test_with_auto_migrate_off_only_flask_db_upgrade_changes_the_schema(new_app):
    app = new_app(AUTO_MIGRATE="no")  # as FLASK_AUTO_MIGRATE=no arrives: a string
    runner = app.test_cli_runner()
    with app.app_context():
        assert tables(db.engine) == set()
        for _ in range(2):  # the second upgrade finds nothing to do
            result = runner.invoke(args=["db", "upgrade"])
            assert result.exit_code == 0, result.output
            assert_matches_the_models(app)
        assert runner.invoke(args=["db", "downgrade", "base"]).exit_code == 0
        assert tables(db.engine) == {"alembic_version"}
        assert runner.invoke(args=["db", "upgrade"]).exit_code == 0
        assert_matches_the_models(app)


def test_the_documented_commands_in_real_processes(tmp_path):
    """``flask db upgrade`` as a deployment step runs it (AUTO_MIGRATE off), then
    ``flask db current`` says the database is at the head revision."""
    path = tmp_path / "deployed.sqlite3"
    env = {**os.environ, "FLASK_SQLALCHEMY_DATABASE_URI": f"sqlite:///{path}",
           "FLASK_AUTO_MIGRATE": "false",
           "FLASK_INSTANCE_PATH": str(tmp_path / "instance"),
           "FLASK_PREPARE_MODELS": "false", "FLASK_EMBEDDED_WORKER": "false"}
    flask = [sys.executable, "-m", "flask", "--app", "app", "db"]
    upgrade = subprocess.run([*flask, "upgrade"], cwd=ROOT, env=env, capture_output=True,
                             text=True)
    assert upgrade.returncode == 0, upgrade.stderr
    assert f" -> {HEAD}, " in upgrade.stderr  # the last step of the upgrade reached head
    current = subprocess.run([*flask, "current"], cwd=ROOT, env=env, capture_output=True,
                             text=True)
    assert current.returncode == 0, current.stderr
    assert f"{HEAD} (head)" in current.stdout
    assert schema_diffs(create_engine(f"sqlite:///{path}")) == []


@pytest.mark.parametrize("value, expected", [
    (True, True), (False, False), ("true", True), ("1", True), ("no", False),
    ("false", False), ("0", False), ("off", False), ("", False)])
def test_auto_migrate_reads_configuration_values_as_meant(value, expected):
    assert auto_migrate(value) is expected


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as make_database:
        yield make_database


class TestPostgreSQL:
    """The same revisions on Debian's PostgreSQL, then a whole study through the app."""

    pytestmark = needs_postgres

    def test_a_new_database_gets_exactly_the_models_schema(self, postgres, new_app):
        assert_matches_the_models(new_app(SQLALCHEMY_DATABASE_URI=postgres()))

    def test_a_database_made_by_create_all_is_taken_over(self, postgres, new_app):
        url = postgres()
        made = create_engine(url)
        db.metadata.create_all(made)
        with made.begin() as connection:
            connection.execute(text(OLD_MESSAGE))
        made.dispose()
        app = new_app(SQLALCHEMY_DATABASE_URI=url)
        assert_matches_the_models(app)
        with app.app_context():
            assert db.session.get(ContactMessage, 7).subject == "Kept"

    def test_four_processes_starting_at_once(self, postgres, tmp_path):
        url = postgres()
        started = start_together(tmp_path, url)
        assert [code for code, _output in started] == [0] * 4, started
        engine = create_engine(url)
        assert schema_diffs(engine) == []
        with engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")
                                      ).scalars().all() == [HEAD]
        engine.dispose()

    def test_a_study_runs(self, postgres, new_app, tiny_model_dir):
        """JSON, binary and boolean columns and the store's conditional updates."""
        app = new_app(SQLALCHEMY_DATABASE_URI=postgres(), MODEL_DIR=str(tiny_model_dir),
                      EMBEDDED_WORKER=True)
        try:
            client = app.test_client()
            answer = submit(client, modality="ct", model="vgg16", explain="1",
                            archive=(io.BytesIO(zip_of(ct_series(6))), "series.zip"))
            assert answer.status_code == 202
            study_id, url = answer.get_json()["id"], answer.get_json()["url"]
            view = wait_for_study(client, url)
            assert view["status"] == "done", view
            assert view["progress"] == {"done": 6, "total": 6}
            assert view["verdict"]["total_images"] == 6
            assert all(image["status"] == "done" for image in view["images"])
            heatmap = client.get(f"/studies/{study_id}/images/0/heatmap/vgg16.png")
            assert heatmap.status_code == 200 and heatmap.data.startswith(b"\x89PNG")
            assert client.get(url + "/results.csv").status_code == 200
            assert client.delete(url).status_code == 204
            assert client.get(url).status_code == 404
        finally:
            app.extensions["job_queue"].stop_embedded_worker()
