"""The trail's export to an Audit Record Repository, a real rsyslog with TLS on loopback:
each event arrives once, as a message the PS3.15 A.5.1 schema accepts; a repository that
is down, restarted or not the one the CA names loses nothing and gets nothing twice;
and a real server's worker does it on its own."""

from __future__ import annotations

import re
import shutil
import sqlite3
import threading
import time
from collections import Counter

import pytest
import requests
from sqlalchemy import select

from audit import actions, trail
from audit.models import AuditEvent, AuditExport
from audit.outbox import backlog, deliver
from audit.syslog import AuditDeliveryError
from extensions import db
from settings import settings_of

from .conftest import reconfigure, signed_in
from .postgres_server import POSTGRES_BIN, postgres_server
from .server import start_server
from .syslog_server import Rsyslog, body_of, needs_rsyslog, self_signed
from .test_audit_message import valid

pytestmark = needs_rsyslog
CSRF_INPUT = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


@pytest.fixture
def repository(tmp_path):
    with Rsyslog(tmp_path / "rsyslog") as rsyslog:
        yield rsyslog


def exporting_app(app_factory, repository):
    return app_factory(AUTH_METHODS="local", AUDIT_SYSLOG_URL=repository.url,
                       AUDIT_SYSLOG_CA_FILE=str(repository.cert), AUDIT_EXPORT_BATCH=25,
                       AUDIT_EXPORT_RETRY_S=0.05, AUDIT_EXPORT_RETRY_MAX_S=0.2)


def record_views(app, count: int, start: int = 0) -> None:
    with app.app_context():
        for number in range(start, start + count):
            trail.record_now(actions.STUDY_VIEWED, trail.Actor(3, "reader1", "reader", "token"),
                             study_id=f"{number:032x}")


def send_all(app, tries: int = 200) -> int:
    """Rounds until the repository read everything (retry waits included); rows sent."""
    sent = 0
    with app.app_context():
        settings = settings_of(app).audit
        for _ in range(tries):
            try:
                sent += deliver(settings)
            except AuditDeliveryError:
                pass
            if backlog().waiting == 0:
                return sent
            time.sleep(0.05)
        raise AssertionError(f"the repository still waits for {backlog().waiting} rows")


def stored_seqs(app) -> list[int]:
    with app.app_context():
        return list(db.session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))


def test_each_event_reaches_the_repository_once_as_a_valid_message(app_factory, repository):
    app = exporting_app(app_factory, repository)
    assert app.test_client().post("/login", data={"username": "nobody", "password": "x"}
                                  ).status_code == 401
    record_views(app, 60)
    sent = app.test_cli_runner().invoke(args=["audit", "send"])
    assert sent.exit_code == 0 and "Sent 61 events; 0 waiting." in sent.output
    lines = repository.wait_for(61)
    assert sorted(repository.sequence_ids()) == stored_seqs(app) == list(range(1, 62))
    codes = Counter(valid(body_of(line)[1]).find("EventIdentification/EventID")
                    .get("csd-code") for line in lines)
    assert codes == {"110114": 1, "110103": 60}  # a sign-in, and the studies viewed
    header, message = body_of(lines[0])
    assert int(header.group(1)) == 10 * 8 + 4  # the failed sign-in: authpriv, warning
    assert valid(message).find("ActiveParticipant").get("UserID") == "nobody"


def test_a_repository_that_is_down_loses_nothing_and_gets_nothing_twice(app_factory,
                                                                         repository):
    app = exporting_app(app_factory, repository)
    record_views(app, 30)
    assert send_all(app) == 30
    repository.stop()
    record_views(app, 40, start=30)
    with app.app_context():
        with pytest.raises(AuditDeliveryError, match="ConnectionRefused"):
            deliver(settings_of(app).audit)
        row = db.session.get(AuditExport, 1)
        assert (row.sent_seq, row.failures) == (30, 1) and "Connection" in row.last_error
    failed = app.test_cli_runner().invoke(args=["audit", "send"])
    assert failed.exit_code == 1 and "did not take" in failed.output
    admin = app.test_client()
    signed_in(app, admin, role="admin")
    page = admin.get("/admin/audit").get_data(as_text=True)
    assert "40 events not sent yet; the last 2 tries failed (ConnectionRefusedError" in page
    repository.start()
    for start in (70, 100, 130):  # restarted between rounds, events still coming
        record_views(app, 30, start=start)
        send_all(app)
        repository.restart()
    counts = Counter(repository.sequence_ids())
    assert sorted(counts) == stored_seqs(app) == list(range(1, 161))
    assert set(counts.values()) == {1}, [seq for seq, n in counts.items() if n > 1]
    with app.app_context():
        assert db.session.get(AuditExport, 1).failures == 0
    assert "every event sent" in admin.get("/admin/audit").get_data(as_text=True)


def test_a_repository_the_ca_does_not_vouch_for_gets_nothing(app_factory, repository,
                                                             tmp_path):
    other_ca, _ = self_signed(tmp_path, "other")
    app = exporting_app(app_factory, repository)
    reconfigure(app, AUDIT_SYSLOG_CA_FILE=str(other_ca))
    record_views(app, 3)
    with app.app_context(), pytest.raises(AuditDeliveryError, match="CERTIFICATE_VERIFY"):
        deliver(settings_of(app).audit)
    assert app.test_cli_runner().invoke(args=["audit", "send"]).exit_code == 1
    time.sleep(0.5)  # what rsyslog read, it writes within this
    assert repository.messages() == []
    with app.app_context():
        assert backlog().waiting == 3


def test_a_repository_whose_certificate_names_another_host_gets_nothing(app_factory,
                                                                        tmp_path):
    with Rsyslog(tmp_path / "impostor", name="arr.example") as impostor:
        app = app_factory(AUDIT_SYSLOG_URL=f"tls://127.0.0.1:{impostor.port}",
                          AUDIT_SYSLOG_CA_FILE=str(impostor.cert))
        record_views(app, 2)
        with app.app_context(), pytest.raises(AuditDeliveryError, match="mismatch"):
            deliver(settings_of(app).audit)
        time.sleep(0.5)
        assert impostor.messages() == []


def failed_sign_in(server, name: str) -> None:
    browser = requests.Session()
    form = browser.get(f"{server.url}/login", timeout=30)
    token = CSRF_INPUT.search(form.text).group(1)
    answer = browser.post(f"{server.url}/login", timeout=30,
                          data={"csrf_token": token, "username": name, "password": "x"})
    assert answer.status_code == 401


def test_a_real_server_exports_from_its_worker_across_a_repository_restart(
        tmp_path, tiny_model_dir, repository):
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models)
    server = start_server(tmp_path / "web", models, workers=1, env={
        "FLASK_AUTH_METHODS": "local", "FLASK_AUDIT_SYSLOG_URL": repository.url,
        "FLASK_AUDIT_SYSLOG_CA_FILE": str(repository.cert), "FLASK_AUDIT_EXPORT_S": "0.2",
        "FLASK_AUDIT_EXPORT_RETRY_S": "0.2", "FLASK_AUDIT_EXPORT_RETRY_MAX_S": "0.5"})
    try:
        for number in range(4):
            failed_sign_in(server, f"user{number}")
        repository.wait_for(5)  # the worker's start and four failed sign-ins
        repository.stop()
        for number in range(4, 8):
            failed_sign_in(server, f"user{number}")
        time.sleep(1)  # rounds fail while it is down
        repository.start()
        database = sqlite3.connect(server.instance / "lungscan.sqlite3")
        stored = [seq for (seq,) in database.execute("SELECT seq FROM audit_events ORDER BY seq")]
        database.close()
        deadline = time.monotonic() + 30
        while sorted(repository.sequence_ids()) != stored and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        server.stop()
    counts = Counter(repository.sequence_ids())
    assert sorted(counts)[:len(stored)] == stored and set(counts.values()) == {1}
    users = {valid(body_of(line)[1]).find("ActiveParticipant").get("UserID")
             for line in repository.messages()}
    assert {f"user{number}" for number in range(8)} <= users
    assert "Traceback" not in server.log_text()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'export.sqlite3'}"
        return
    if POSTGRES_BIN is None:
        pytest.skip("postgresql is missing (.ci/run installs it)")
    with postgres_server() as make_database:
        yield make_database()


def test_workers_sending_at_once_send_each_event_once(app_factory, repository, database_url):
    app = app_factory(AUTH_METHODS="local", SQLALCHEMY_DATABASE_URI=database_url,
                      AUDIT_SYSLOG_URL=repository.url, AUDIT_SYSLOG_CA_FILE=str(repository.cert),
                      AUDIT_EXPORT_BATCH=10, AUDIT_EXPORT_RETRY_S=0.05,
                      AUDIT_EXPORT_RETRY_MAX_S=0.2)
    stop = threading.Event()
    problems = []

    def worker():
        with app.app_context():
            while not stop.is_set():
                try:
                    deliver(settings_of(app).audit)
                except Exception as exc:  # noqa: BLE001 - the test reports it
                    problems.append(repr(exc))
                time.sleep(0.01)

    workers = [threading.Thread(target=worker) for _ in range(3)]
    for thread in workers:
        thread.start()
    try:
        record_views(app, 120)
        deadline = time.monotonic() + 60
        while len(repository.messages()) < 120 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in workers:
            thread.join(30)
    counts = Counter(repository.sequence_ids())
    assert sorted(counts) == stored_seqs(app) == list(range(1, 121))
    assert set(counts.values()) == {1} and problems == []
