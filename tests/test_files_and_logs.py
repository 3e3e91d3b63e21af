"""What the tool writes stays its own: files readable by its user only, and no study
id, DICOM UID or uploaded file name in any logger's lines."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from web.redaction import redact

from .conftest import run_queued_jobs
from .study_helpers import ct_series, image_fields, submit

STUDY_ID = "Kq3vX0b_9TzLmN4pQ-7rS2uW8yA1cE5g"  # 32 URL-safe characters, like new_study_id
UID = "1.2.840.113619.2.55.3.604688119.971.1"
FILE = "DOE_JANE_MRN777_slice1.dcm"


@pytest.mark.parametrize("text, expected", [
    (f"GET /studies/{STUDY_ID}/report", "GET /studies/<study>/report"),
    (f"study {STUDY_ID} done", "study <study> done"),
    (f"POST /api/v1/pacs/studies/{UID}/analyses", "POST /api/v1/pacs/studies/<uid>/analyses"),
    (f"skipped {FILE} and scan.PNG in series.zip", "skipped <file> and <file> in <file>"),
    ("client 192.168.10.20 asked /static/css/style.css", "client 192.168.10.20 asked "
                                                        "/static/css/style.css"),
    ("sha256 " + "ab" * 32, "sha256 " + "ab" * 32),  # 64 characters: not a study id
])
def test_the_redaction_replaces_identifiers_and_leaves_the_rest(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("logger", ["app", "gunicorn.error", "gunicorn.access", "huey",
                                    "werkzeug", "root"])
def test_every_logger_is_redacted_messages_and_tracebacks(app, caplog, logger):
    caplog.set_level(logging.DEBUG)
    target = app.logger if logger == "app" else logging.getLogger(
        None if logger == "root" else logger)
    target.warning("study %s from %s in %s", STUDY_ID, UID, FILE)
    try:
        raise ValueError(f"bad file {FILE} of {UID}")
    except ValueError:
        target.exception("failed on %s", STUDY_ID)
    assert caplog.records and all(record.name == target.name for record in caplog.records)
    assert STUDY_ID not in caplog.text and UID not in caplog.text and FILE not in caplog.text
    assert "<study>" in caplog.text and "<uid>" in caplog.text and "<file>" in caplog.text
    assert "ValueError" in caplog.text  # the traceback is kept, its values are not


def test_an_unhandled_error_logs_the_route_not_the_path(app, caplog):
    @app.get("/boom/<name>")
    def boom(name):
        raise RuntimeError("boom")

    caplog.set_level(logging.ERROR)
    assert app.test_client().get("/boom/Doe-Jane").status_code == 500
    assert "GET /boom/<name>" in caplog.text and "Doe-Jane" not in caplog.text


@pytest.mark.fresh_database  # the app makes its database itself, as on a first start
def test_files_the_tool_writes_are_its_own_users_alone(app_factory, tiny_model_dir,
                                                       instance_path):
    app = app_factory(MODEL_DIR=str(tiny_model_dir))
    client = app.test_client()
    submit(client, modality="ct", model="vgg16", images=image_fields(ct_series(2)))
    run_queued_jobs(app)
    database = Path(app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///"))
    written = [p for p in Path(app.instance_path).rglob("*")]
    written += list(database.parent.glob(database.name + "*"))
    names = {path.name for path in written}
    assert {"queue.sqlite3", database.name} <= names, names  # (secret key: test_security)
    assert any(name.endswith("-wal") for name in names), names
    loose = {str(path): oct(stat.S_IMODE(path.stat().st_mode)) for path in written
             if stat.S_IMODE(path.stat().st_mode) & 0o077}
    assert loose == {}
    assert stat.S_IMODE(Path(app.instance_path).stat().st_mode) & 0o077 == 0
