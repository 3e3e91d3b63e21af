"""Identical PACS analysis requests arriving at the same instant start one analysis.

Several threads call ``POST /api/v1/pacs/studies/<uid>/analyses`` at once, on SQLite and
on a real PostgreSQL. The PACS's answer to "which instances does the study hold?" waits
until every caller has asked, so all of them have passed the "is one running already?"
read before any of them inserts: only the database (a unique partial index, migration
7d2908577004) can keep the second analysis out. Also: the migration keeps the newest of
twins that a database already holds.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, inspect, select, text

from audit import actions
from audit.models import AuditEvent
from extensions import db
from pacs.client import PacsClient
from studies.models import ONE_RUNNING_PER_PACS_STUDY, Study

from .conftest import signed_in
from .postgres_server import needs_postgres, postgres_server

DEAD_PACS = "http://127.0.0.1:9/dicom-web"  # never reached: instances() is the test's
STUDY_UID = "1.2.826.0.1.3680043.8.498.4242"
CALLERS = 6
BEFORE = "f1b2c3d4e5a6"  # the revision before the index


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as make_database:
        yield make_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=needs_postgres)])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.sqlite3'}"  # a copy of the migrated database
    return request.getfixturevalue("postgres")()  # migrated by the app's start


def pacs_answers_once_all_have_asked(monkeypatch, callers: int) -> list[str]:
    """The PACS lists one CT instance, to each caller only once all of them asked."""
    everyone, asked = threading.Barrier(callers, timeout=60), []

    def instances(self, study_uid):
        asked.append(study_uid)
        everyone.wait()
        return [{"sop_instance_uid": "1.2.3.1", "series_uid": "1.2.3", "modality": "CT",
                 "manufacturer": "Scanner", "instance_number": 1}]

    monkeypatch.setattr(PacsClient, "instances", instances)
    return asked


def test_identical_requests_at_the_same_instant_start_one_analysis(
        app_factory, tiny_model_dir, database_url, monkeypatch):
    app = app_factory(MODEL_DIR=str(tiny_model_dir), DICOMWEB_URL=DEAD_PACS,
                      SQLALCHEMY_DATABASE_URI=database_url)
    tokens = [signed_in(app, role="analyst", name=f"analyst{n}") for n in range(CALLERS)]
    asked = pacs_answers_once_all_have_asked(monkeypatch, CALLERS)
    answers, start = [None] * CALLERS, threading.Barrier(CALLERS, timeout=60)

    def call(number: int) -> None:
        client = app.test_client()
        start.wait()
        response = client.post(f"/api/v1/pacs/studies/{STUDY_UID}/analyses",
                               data={"modality": "ct", "model": "vgg16"},
                               headers={"Authorization": f"Bearer {tokens[number]}"})
        answers[number] = (response.status_code, response.get_json())

    threads = [threading.Thread(target=call, args=(n,)) for n in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(asked) == CALLERS  # every caller got past the read before any inserted
    assert [status for status, _ in answers] == [202] * CALLERS, answers
    ids = {body["id"] for _, body in answers}
    assert len(ids) == 1, answers
    with app.app_context():
        rows = db.session.scalars(select(Study).where(Study.pacs_study_uid == STUDY_UID)).all()
        assert [(row.id, row.status) for row in rows] == [(ids.pop(), "queued")]
        started = db.session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == actions.ANALYSIS_STARTED))
        assert started == 1  # the losers' events went with their rolled-back inserts
    queued = [task.name for task in app.extensions["job_queue"].huey.pending()]
    assert len(queued) == 1, queued


def twin(study_id: str, created_at: str, status: str = "queued", uid: str = STUDY_UID) -> str:
    return ("INSERT INTO studies (id, status, modality, model, explain, total, done, models, "
            "warnings, created_at, enqueued_at, attempts, source, pacs_study_uid, "
            f"write_attempts) VALUES ('{study_id}', '{status}', 'ct', 'vgg16', false, 0, 0, "
            f"'[]', '[]', '{created_at}', '{created_at}', 0, 'pacs', '{uid}', 0)")


def test_the_migration_keeps_the_newest_of_twins_a_database_already_holds(app_factory):
    app = app_factory(AUTO_MIGRATE="no")
    runner = app.test_cli_runner()
    with app.app_context():
        assert runner.invoke(args=["db", "upgrade", BEFORE]).exit_code == 0
        for row in (twin("old", "2026-01-01 10:00:00", "running"),
                    twin("new", "2026-01-01 10:00:01"),
                    twin("done-before", "2026-01-01 09:00:00", "done"),
                    twin("other", "2026-01-01 10:00:00", uid="1.2.3.99")):
            db.session.execute(text(row))
        db.session.commit()
        result = runner.invoke(args=["db", "upgrade"])
        assert result.exit_code == 0, result.output
        db.session.expire_all()
        assert {row.id: (row.status, row.error_code) for row in db.session.scalars(
            select(Study))} == {"old": ("failed", "duplicate_analysis"), "new": ("queued", None),
                                "done-before": ("done", None), "other": ("queued", None)}
        indexes = {index["name"]: index for index in inspect(db.engine).get_indexes("studies")}
        assert indexes[ONE_RUNNING_PER_PACS_STUDY]["unique"]
