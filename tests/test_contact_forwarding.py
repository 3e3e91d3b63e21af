"""Contact forwarding against a real SMTP server (aiosmtpd) on loopback.

The visitor's request only stores the message and queues a ``forward_contact`` job; a
worker (here the embedded worker thread of each app, all on one queue file) sends it.
Each row is reserved for its job and claimed before it is sent, so several app
instances sharing one database and one queue send every message exactly once. Waits
below poll with a generous deadline only so that a broken build fails instead of
hanging. Several workers as separate processes, on Redis and PostgreSQL, with one
killed mid-send, are in tests/test_cluster_faults.py.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from email import message_from_bytes
from email.policy import default as default_policy

import pytest
from sqlalchemy import inspect, select

from app import create_app
from config import Config
from contact.mailer import claim, forward_pending, reserve_due
from contact.models import ContactMessage, utcnow_aware
from extensions import db

from .conftest import testing_config

DEADLINE_S = 60


class Apps:
    """App instances sharing one SQLite file and one queue, as workers and replicas
    share a database and a broker; each runs an embedded worker once it has a request."""

    def __init__(self, tmp_path, port):
        self.tmp_path, self.port, self.made = tmp_path, port, []

    def new(self, **overrides):
        config = dict(MAIL_SERVER="127.0.0.1", MAIL_PORT=self.port, MAIL_USE_TLS=False,
                      CONTACT_RECIPIENT="team@example.org", CONTACT_FORWARD_RETRY_S=0.2,
                      CONTACT_FORWARD_RETRY_MAX_S=1, EMBEDDED_WORKER=True,
                      EMBEDDED_POLL_S=0.05, WORKER_SWEEP_S=0.2)
        config.update(overrides)
        app = create_app(testing_config(self.tmp_path, **config))
        self.made.append(app)
        return app

    def stop_workers(self):
        for app in self.made:
            app.extensions["job_queue"].stop_embedded_worker()


@pytest.fixture
def apps(tmp_path, mail, instance_path):
    made = Apps(tmp_path, mail.port)
    yield made
    made.stop_workers()


def new_marker(i: int = 0) -> str:
    return f"FWD-{uuid.uuid4().hex[:12]}-{i}"


def fields(subject: str) -> dict:
    return {"name": "Ana Souza", "email": "ana@example.org", "category": "bug",
            "subject": subject, "message": "The heatmap did not show for ResNet50."}


def rows(app) -> list[ContactMessage]:
    with app.app_context():
        found = db.session.scalars(select(ContactMessage).order_by(ContactMessage.id)).all()
        db.session.expunge_all()
        return found


def wait_until(predicate) -> bool:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def all_forwarded(app, count: int) -> bool:
    found = rows(app)
    return len(found) == count and all(row.forwarded_at for row in found)


def store(app, subject: str, **columns) -> int:
    with app.app_context():
        row = ContactMessage(**fields(subject), **columns)
        db.session.add(row)
        db.session.commit()
        return row.id


def test_post_returns_while_the_mail_server_is_blocked(mail, apps):
    app = apps.new()
    marker = new_marker()
    mail.inbox.gate.clear()  # the server will not answer DATA until released
    response = app.test_client().post("/contact", data=fields(marker))
    assert response.status_code == 302
    assert mail.inbox.receiving.wait(DEADLINE_S)  # the worker is mid-send, after the answer
    (row,) = rows(app)
    assert row.forwarded_at is None and row.claim_token is not None
    mail.inbox.gate.set()
    assert wait_until(lambda: all_forwarded(app, 1))
    (row,) = rows(app)
    # Its one attempt succeeded, though the server only answered after the response.
    assert (row.forward_attempts, row.last_error, row.claim_token) == (1, None, None)
    assert mail.inbox.markers() == {marker: 1}


def test_concurrent_posts_to_several_instances_are_each_mailed_once(mail, apps):
    instances = [apps.new() for _ in range(4)]
    markers = [new_marker(i) for i in range(60)]

    def post(i: int) -> int:
        client = instances[i % len(instances)].test_client()
        return client.post("/contact", data=fields(markers[i])).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        assert list(pool.map(post, range(len(markers)))) == [302] * len(markers)
    assert wait_until(lambda: all_forwarded(instances[0], len(markers)))
    apps.stop_workers()
    assert mail.inbox.markers() == {marker: 1 for marker in markers}
    assert {row.forward_attempts for row in rows(instances[0])} == {1}


def test_failed_send_keeps_the_message_and_sends_it_once_smtp_is_back(mail, apps):
    mail.stop()  # nothing listens: connections are refused
    app = apps.new(CONTACT_FORWARD_RETRY_MAX_S=2)  # tries left while the server restarts
    marker = new_marker()
    assert app.test_client().post("/contact", data=fields(marker)).status_code == 302
    assert wait_until(lambda: rows(app)[0].last_error is not None)
    (row,) = rows(app)
    assert row.forwarded_at is None and "ConnectionRefusedError" in row.last_error
    mail.start()
    assert wait_until(lambda: all_forwarded(app, 1))  # retried by the workers alone
    apps.stop_workers()
    (row,) = rows(app)
    assert row.forward_attempts >= 2 and row.last_error is None
    assert mail.inbox.markers() == {marker: 1}


def test_only_one_claim_wins(apps):
    app = apps.new()
    row_id = store(app, new_marker())
    with app.app_context():
        first, second = claim(row_id), claim(row_id)
    assert first is not None and second is None
    (row,) = rows(app)
    assert row.claim_token == first and row.forward_attempts == 1


def test_live_lease_is_respected_and_expired_lease_reclaimed(mail, apps):
    app = apps.new()
    marker = new_marker()
    row_id = store(app, marker, claim_token="another-sender",
                   claimed_until=utcnow_aware() + timedelta(minutes=5), forward_attempts=1)
    with app.app_context():
        assert forward_pending() == (0, 0)  # someone else is sending it
        assert forward_pending(force=True) == (0, 0)  # even the CLI waits for that sender
    assert mail.inbox.markers() == {}
    with app.app_context():  # that sender died: its lease runs out
        db.session.get(ContactMessage, row_id).claimed_until = utcnow_aware() - timedelta(seconds=1)
        db.session.commit()
        assert forward_pending() == (1, 0)
        assert forward_pending() == (0, 0) and claim(row_id) is None  # sent: never again
    assert mail.inbox.markers() == {marker: 1}
    assert rows(app)[0].forward_attempts == 2


def test_cli_forward_sends_waiting_and_given_up_messages(mail, apps):
    app = apps.new()
    later = utcnow_aware() + timedelta(minutes=5)
    fresh, waiting, given_up, busy = (new_marker(i) for i in range(4))
    store(app, fresh)
    store(app, waiting, claimed_until=later, forward_attempts=1, last_error="OSError: x")
    store(app, given_up, forward_attempts=Config.CONTACT_FORWARD_MAX_ATTEMPTS, last_error="OSError: x")
    store(app, busy, claimed_until=later, claim_token="mid-send", forward_attempts=1)
    with app.app_context():
        assert forward_pending() == (1, 0)  # automatic: only the fresh one
    result = app.test_cli_runner().invoke(args=["contact", "forward"])
    assert "forwarded 2, failed 0" in result.output
    assert mail.inbox.markers() == {fresh: 1, waiting: 1, given_up: 1}
    email = message_from_bytes(mail.inbox.messages[0], policy=default_policy)
    assert email["To"] == "team@example.org" and email["Reply-To"] == "ana@example.org"
    assert email["Subject"] == f"[Bug report] {fresh}"
    assert "The heatmap did not show for ResNet50." in email.get_content()


def test_cli_forward_without_smtp_says_so(apps):
    app = apps.new(MAIL_SERVER=None)
    result = app.test_cli_runner().invoke(args=["contact", "forward"])
    assert result.exit_code != 0 and "SMTP is not configured" in result.output


OLD_SCHEMA = """CREATE TABLE contact_messages (
    id INTEGER NOT NULL PRIMARY KEY, created_at DATETIME, name VARCHAR(100) NOT NULL,
    email VARCHAR(254) NOT NULL, phone VARCHAR(40), category VARCHAR(20) NOT NULL,
    subject VARCHAR(150) NOT NULL, message TEXT NOT NULL, forwarded_at DATETIME,
    forward_attempts INTEGER NOT NULL, last_error VARCHAR(300))"""


def test_an_older_database_gains_the_claim_columns(tmp_path, mail, apps):
    marker = new_marker()
    with sqlite3.connect(tmp_path / "test.sqlite3") as old:
        old.execute(OLD_SCHEMA)
        old.execute("INSERT INTO contact_messages VALUES (1, '2024-05-01 10:00:00.000000', "
                    "'Ana', 'ana@example.org', NULL, 'bug', ?, 'A stored message.', NULL, 0, "
                    "NULL)", (marker,))
    app = apps.new()
    with app.app_context():
        columns = {c["name"] for c in inspect(db.engine).get_columns("contact_messages")}
        assert {"claimed_until", "claim_token"} <= columns
        assert forward_pending() == (1, 0)
    assert mail.inbox.markers() == {marker: 1}


def queue_of(app):
    return app.extensions["job_queue"]


def test_a_job_queued_twice_sends_once(mail, apps):
    app = apps.new(EMBEDDED_WORKER=False)  # the jobs run here, in the test
    marker = new_marker()
    assert app.test_client().post("/contact", data=fields(marker)).status_code == 302
    (row,) = rows(app)
    forward = app.extensions["tasks"].contact.forward
    forward.call_local(row.id, row.claim_token)
    forward.call_local(row.id, row.claim_token)  # the same job again: already sent
    forward.call_local(row.id, "q-a-stale-ticket")
    assert mail.inbox.markers() == {marker: 1}
    (row,) = rows(app)
    assert row.forwarded_at and (row.forward_attempts, row.claim_token) == (1, None)


def test_a_mail_job_goes_ahead_of_queued_studies(apps):
    app = apps.new(EMBEDDED_WORKER=False)
    queue = queue_of(app)
    tasks = app.extensions["tasks"]
    for number in range(3):
        tasks.queue_study(f"study-{number}")
    tasks.queue_contact(1, "q-ticket")
    assert queue.huey.dequeue().name == "forward_contact"
    assert queue.huey.dequeue().name == "run_study"


def test_a_message_whose_sender_died_mid_send_is_sent_once(mail, apps):
    """A worker took the row (its token, attempts 1) and died before it sent: once its
    lease ran out, another worker's housekeeping queues it again and it goes out once."""
    app = apps.new()
    marker = new_marker()
    store(app, marker, claim_token="0" * 32, forward_attempts=1,
          claimed_until=utcnow_aware() - timedelta(seconds=1))
    assert app.test_client().get("/about").status_code == 200  # starts the worker
    assert wait_until(lambda: all_forwarded(app, 1))
    apps.stop_workers()
    assert mail.inbox.markers() == {marker: 1}
    assert rows(app)[0].forward_attempts == 2


def test_a_message_whose_job_was_lost_is_queued_again(mail, apps, caplog):
    """The broker refuses the job: the visitor still gets the thank-you, the row keeps
    its reservation until the lease runs out, then housekeeping queues it again."""
    app = apps.new(CONTACT_FORWARD_LEASE_S=0.5)
    tasks = app.extensions["tasks"].contact

    def broker_down(*_args):
        raise ConnectionError("the broker is away")

    original, tasks.forward = tasks.forward, broker_down
    marker = new_marker()
    response = app.test_client().post("/contact", data=fields(marker))
    tasks.forward = original
    assert response.status_code == 302
    assert "could not queue a contact message" in caplog.text
    assert wait_until(lambda: all_forwarded(app, 1))
    apps.stop_workers()
    assert mail.inbox.markers() == {marker: 1}


def test_sweeping_workers_reserve_each_row_once(apps):
    app = apps.new(EMBEDDED_WORKER=False)
    ids = [store(app, new_marker(i)) for i in range(5)]
    with app.app_context():
        first, second = reserve_due(), reserve_due()
    assert [row_id for row_id, _ in first] == ids and second == []
    assert {row.claim_token for row in rows(app)} == {ticket for _, ticket in first}


def test_messages_left_by_an_earlier_run_go_out_on_the_first_request(mail, apps):
    """A row stored before a restart (never forwarded) is sent after the new process's
    first request of any kind, not only after the next contact post."""
    earlier = apps.new()
    marker = new_marker()
    store(earlier, marker)  # stored, as by a process that stopped before forwarding
    restarted = apps.new()
    assert restarted.test_client().get("/about").status_code == 200
    assert wait_until(lambda: all_forwarded(restarted, 1))
    apps.stop_workers()
    assert mail.inbox.markers() == {marker: 1}


def test_nothing_touches_the_database_after_the_message_is_stored(mail, apps):
    """Once the row is committed the post only queues and answers: a database that
    goes away at that moment cannot turn a stored message into an error page."""
    from sqlalchemy import event

    app = apps.new(EMBEDDED_WORKER=False)
    client = app.test_client()
    assert client.get("/contact").status_code == 200
    said = []
    with app.app_context():
        engine = db.engine
    record = lambda *args, **_kw: said.append(args[2].split()[0].upper())  # noqa: E731
    committed = lambda *_args: said.append("COMMIT")  # noqa: E731
    event.listen(engine, "before_cursor_execute", record)
    event.listen(engine, "commit", committed)
    try:
        assert client.post("/contact", data=fields(new_marker())).status_code == 302
    finally:
        event.remove(engine, "before_cursor_execute", record)
        event.remove(engine, "commit", committed)
    assert "INSERT" in said and said[-1] == "COMMIT", said


def test_a_sent_mail_is_recorded_once_the_database_is_back(mail, apps, monkeypatch):
    """The mail went out but the database is away when the worker records it: the
    worker waits (for most of the lease) instead of leaving the row to be sent again."""
    import contact.mailer as mailer
    from sqlalchemy.exc import OperationalError

    app = apps.new(EMBEDDED_WORKER=False, CONTACT_FORWARD_LEASE_S=60)
    marker = new_marker()
    row_id = store(app, marker)
    real_settle, failures = mailer.settle, []

    def database_away_twice(*args):
        if len(failures) < 2:
            failures.append(args)
            raise OperationalError("UPDATE", {}, ConnectionError("server closed"))
        return real_settle(*args)

    monkeypatch.setattr(mailer, "settle", database_away_twice)
    with app.app_context():
        assert mailer.forward_one(row_id) is True
    (row,) = rows(app)
    assert len(failures) == 2 and row.forwarded_at and row.claim_token is None
    assert mail.inbox.markers() == {marker: 1}
