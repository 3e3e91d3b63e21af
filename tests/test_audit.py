"""The audit trail: what is recorded, in the action's transaction, chained by hash;
``flask audit verify`` finds an edited, removed or reordered row; the admin page."""

from __future__ import annotations

import csv
import io
import sqlite3
import threading

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DatabaseError

from audit import actions, trail
from audit.models import AuditEvent
from audit.query import check_trail
from extensions import db

from .conftest import TEST_PASSWORD, run_queued_jobs, signed_in
from .postgres_server import POSTGRES_BIN, postgres_server
from .study_helpers import ct_series, image_fields, submit


@pytest.fixture
def audited_app(app_factory, tiny_model_dir):
    return app_factory(MODEL_DIR=str(tiny_model_dir), AUTH_METHODS="local")


def all_events(app) -> list[AuditEvent]:
    with app.app_context():
        rows = list(db.session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        db.session.expunge_all()
        return rows


def database_file(app) -> str:
    return app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///")


def tamper(app, *statements: str) -> None:
    """What someone with the database file could do: drop the guard, change rows."""
    connection = sqlite3.connect(database_file(app))
    with connection:
        connection.execute("DROP TRIGGER IF EXISTS audit_events_no_update")
        connection.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
        for statement in statements:
            connection.execute(statement)
    connection.close()


def test_a_study_from_sign_in_to_delete_is_recorded_with_who_and_what(audited_app):
    app = audited_app
    token = signed_in(app, role="analyst", name="alice")
    client, api = app.test_client(), app.test_client()
    api.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    failed = client.post("/login", data={"username": "alice", "password": "wrong"})
    assert failed.status_code == 401
    client.post("/login", data={"username": "alice", "password": TEST_PASSWORD})
    answer = submit(api, modality="ct", model="vgg16", images=image_fields(ct_series(3)))
    study_id = answer.get_json()["id"]
    run_queued_jobs(app)
    assert client.get(f"/api/v1/studies/{study_id}").status_code == 200
    assert api.get(f"/api/v1/studies/{study_id}/results.csv").status_code == 200
    assert api.delete(f"/api/v1/studies/{study_id}").status_code == 204
    client.post("/logout")

    events = all_events(app)
    assert [(e.action, e.actor_name, e.outcome) for e in events] == [
        (actions.LOGIN_FAILED, "alice", trail.FAILURE),
        (actions.LOGIN, "alice", trail.SUCCESS),
        (actions.ANALYSIS_STARTED, "alice", trail.SUCCESS),
        (actions.STUDY_VIEWED, "alice", trail.SUCCESS),
        (actions.EXPORTED, "alice", trail.SUCCESS),
        (actions.DELETED, "alice", trail.SUCCESS),
        (actions.LOGOUT, "alice", trail.SUCCESS),
    ]
    started = events[2]
    assert started.study == study_id[:8] and study_id not in str(started.target)
    assert started.target == {"source": "upload", "modality": "ct", "model": "vgg16",
                              "images": 3}
    assert started.actor_role == "analyst" and started.actor_method == "token"
    assert events[3].actor_method == "session"
    assert started.client == "127.0.0.1"
    assert events[4].target == {"format": "csv"}
    with app.app_context():
        assert check_trail().intact


def test_a_progress_poll_of_a_running_study_is_not_a_view(audited_app):
    app = audited_app
    client = app.test_client()
    signed_in(app, client, role="analyst", name="poller")
    study_id = submit(client, modality="ct", model="vgg16",
                      images=image_fields(ct_series(2))).get_json()["id"]
    for _ in range(3):
        assert client.get(f"/api/v1/studies/{study_id}?images=0").status_code == 200
    assert [e.action for e in all_events(app)] == [actions.ANALYSIS_STARTED]
    run_queued_jobs(app)
    client.get(f"/api/v1/studies/{study_id}?images=0")  # done: the verdict is shown
    assert [e.action for e in all_events(app)][-1] == actions.STUDY_VIEWED


def test_a_view_that_cannot_be_recorded_shows_nothing(audited_app):
    app = audited_app
    client = app.test_client()
    signed_in(app, client, role="analyst")
    study_id = submit(client, modality="ct", model="vgg16",
                      images=image_fields(ct_series(2))).get_json()["id"]
    run_queued_jobs(app)
    tamper(app, "DROP TABLE audit_head")
    answer = client.get(f"/api/v1/studies/{study_id}")
    assert answer.status_code == 503  # the database could not take the record
    body = answer.get_data(as_text=True)
    assert "verdict" not in body and "covid_probability" not in body and study_id not in body


def test_an_action_that_fails_records_its_failure_and_nothing_else(audited_app):
    app = audited_app
    client = app.test_client()
    signed_in(app, client, role="analyst", name="bob")
    assert client.delete("/api/v1/studies/no-such-study").status_code == 404
    assert submit(client, modality="ct", model="vgg16").status_code == 400
    assert all_events(app) == []  # a refused request before any action: nothing done
    with app.app_context():
        trail.record(actions.DELETED, trail.SYSTEM, study_id="abcdefgh-1")
        db.session.rollback()  # the action was rolled back: so is its record
        trail.record(actions.LOGIN, trail.SYSTEM)
        db.session.commit()
    assert [e.action for e in all_events(app)] == [actions.LOGIN]


def test_the_trail_refuses_update_and_delete(audited_app):
    app = audited_app
    with app.app_context():
        trail.record_now(actions.LOGIN, trail.SYSTEM)
        for statement in ("UPDATE audit_events SET actor_name = 'x'",
                          "DELETE FROM audit_events"):
            with pytest.raises(DatabaseError, match="append-only"):
                db.session.execute(text(statement))
            db.session.rollback()
    assert len(all_events(app)) == 1


def three_events(app) -> None:
    with app.app_context():
        for name in ("first", "second", "third"):
            trail.record_now(actions.LOGIN, trail.Actor(None, name, "reader", "session"))


@pytest.mark.parametrize("change, problem", [
    ("UPDATE audit_events SET actor_name = 'mallory' WHERE seq = 2",
     "row 2: its content was edited"),
    ("DELETE FROM audit_events WHERE seq = 2", "row 3: expected row 2 here"),
    ("UPDATE audit_events SET seq = seq + 10 WHERE seq IN (1, 2)", "row 3: expected row 1"),
    ("DELETE FROM audit_events WHERE seq = 3", "the trail ends at row 2 but its head says "
                                               "row 3"),
], ids=["edited", "removed", "reordered", "last-removed"])
def test_verify_names_the_row_where_the_chain_breaks(audited_app, change, problem):
    app = audited_app
    three_events(app)
    runner = app.test_cli_runner()
    intact = runner.invoke(args=["audit", "verify"])
    assert intact.exit_code == 0 and "intact: 3 rows" in intact.output
    tamper(app, change)
    broken = runner.invoke(args=["audit", "verify"])
    assert broken.exit_code == 1
    assert problem in broken.output


def test_an_edit_with_a_recomputed_own_hash_still_breaks_the_next_link(audited_app):
    app = audited_app
    three_events(app)
    with app.app_context():
        from audit.chain import digest

        event = db.session.get(AuditEvent, 2)
        event.actor_name = "mallory"
        forged = digest(event)
        db.session.rollback()
    tamper(app, f"UPDATE audit_events SET actor_name = 'mallory', hash = '{forged}' "
                "WHERE seq = 2")
    with app.app_context():
        assert check_trail().problems == [
            "row 3: does not follow row 2 (a row before it was edited, removed or reordered)"]


def test_writers_at_once_keep_one_unbroken_chain(audited_app):
    app = audited_app

    def write(n: int):
        with app.app_context():
            for _ in range(15):
                trail.record_now(actions.STUDY_VIEWED, trail.Actor(n, f"w{n}", "reader",
                                                                   "token"))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = all_events(app)
    assert [e.seq for e in events] == list(range(1, 61))
    with app.app_context():
        assert check_trail().intact


def test_account_and_token_changes_from_the_command_line_are_recorded(audited_app):
    runner = audited_app.test_cli_runner()
    runner.invoke(args=["users", "create", "carol", "--role", "reader", "--password-stdin"],
                  input=TEST_PASSWORD + "\n")
    runner.invoke(args=["users", "set-role", "carol", "analyst"])
    runner.invoke(args=["users", "set-role", "nobody", "analyst"])
    runner.invoke(args=["tokens", "create", "carol"])
    events = all_events(audited_app)
    assert [(e.action, e.target.get("change"), e.target.get("account"), e.outcome)
            for e in events] == [
        (actions.ACCOUNT_CHANGED, "create", "carol", trail.SUCCESS),
        (actions.ACCOUNT_CHANGED, "set-role", "carol", trail.SUCCESS),
        (actions.ACCOUNT_CHANGED, "set-role", "nobody", trail.FAILURE),
        (actions.TOKEN_CHANGED, "create", "carol", trail.SUCCESS),
    ]
    assert all(e.actor_name.startswith("cli:") and e.actor_method == "cli" for e in events)
    assert TEST_PASSWORD not in str([e.target for e in events])


def test_the_admin_page_filters_and_its_export_is_recorded(audited_app):
    app = audited_app
    three_events(app)
    admin = app.test_client()
    signed_in(app, admin, role="admin", name="root-admin")
    page = admin.get("/admin/audit?user=second")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "second" in html and ">first<" not in html and ">third<" not in html
    assert admin.get("/admin/audit?since=yesterday").status_code == 400
    export = admin.get("/admin/audit.csv?action=login")
    assert export.status_code == 200 and export.headers["Cache-Control"] == "no-store"
    rows = list(csv.DictReader(io.StringIO(export.get_data(as_text=True))))
    assert [row["actor_name"] for row in rows] == ["third", "second", "first"]
    last = all_events(app)[-1]
    assert (last.action, last.actor_name, last.target["format"]) == (
        actions.EXPORTED, "root-admin", "audit-csv")
    reader = app.test_client()
    signed_in(app, reader, role="reader")
    assert reader.get("/admin/audit").status_code == 403
    assert reader.get("/admin/audit.csv").status_code == 403


def test_a_recorded_name_cannot_become_a_spreadsheet_formula(audited_app):
    app = audited_app
    with app.app_context():
        trail.record_now(actions.LOGIN_FAILED, trail.Actor(None, "=HYPERLINK(1)", None,
                                                           "local"), trail.FAILURE)
    admin = app.test_client()
    signed_in(app, admin, role="admin")
    rows = list(csv.DictReader(io.StringIO(admin.get("/admin/audit.csv").get_data(
        as_text=True))))
    assert [row["actor_name"] for row in rows if row["action"] == actions.LOGIN_FAILED] == [
        "'=HYPERLINK(1)"]


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as make_database:
        yield make_database


@pytest.mark.services
@pytest.mark.skipif(POSTGRES_BIN is None, reason="postgresql is missing (.ci/run installs it)")
def test_on_postgresql_the_apps_role_cannot_change_the_trail(postgres, app_factory,
                                                             tiny_model_dir):
    """The migration, run as the application's own (non-superuser) role, takes away its
    UPDATE, DELETE and TRUNCATE rights; a superuser still meets the trigger."""
    import psycopg
    from sqlalchemy import create_engine

    admin_url = postgres()
    database = admin_url.rsplit("/", 1)[1]
    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    role = f"app_{database}"
    with psycopg.connect(plain, autocommit=True) as connection:
        connection.execute(f"CREATE ROLE {role} LOGIN")
        connection.execute(f"ALTER DATABASE {database} OWNER TO {role}")
        connection.execute(f"GRANT ALL ON SCHEMA public TO {role}")
    app_url = admin_url.replace("postgres@", f"{role}@")
    app = app_factory(MODEL_DIR=str(tiny_model_dir), SQLALCHEMY_DATABASE_URI=app_url)
    three_events(app)
    with app.app_context():
        for statement in ("UPDATE audit_events SET actor_name = 'x'",
                          "DELETE FROM audit_events", "TRUNCATE audit_events"):
            with pytest.raises(DatabaseError, match="permission denied"):
                db.session.execute(text(statement))
            db.session.rollback()
        assert check_trail().intact
    superuser = create_engine(admin_url)
    with superuser.connect() as connection:
        with pytest.raises(DatabaseError, match="append-only"):
            connection.execute(text("DELETE FROM audit_events WHERE seq = 1"))
    superuser.dispose()
    assert [e.actor_name for e in all_events(app)] == ["first", "second", "third"]
