"""Faults on a whole deployment on loopback (tests/cluster.py): three web replicas behind
HAProxy, two workers, PostgreSQL and Redis, forwarding contact mail to a real SMTP
server (aiosmtpd).

Each test prints its figures (counts, status histograms, durations) as one JSON line
starting with ``FIGURES``; ``pytest -s`` shows them. Every visitor connects from its
own loopback address (127.20.x.y) so that the production rate limits, on here, count
each visitor alone, as they would on the internet; the rate-limit test uses one
address for all its requests. Waits have generous deadlines only so that a broken
build fails instead of hanging; nothing asserts how long anything took.

The tests share one cluster and run in file order: the replica kill comes after the
tests that need all three replicas, and the Redis and PostgreSQL restarts come last.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from requests.adapters import HTTPAdapter

from jobs.queue import make_huey

from .cluster import cluster, needs_cluster, wait_for
from .mail_server import MailServer
from .model_factory import scan_like_png

pytestmark = needs_cluster

SETTINGS = {
    "RATELIMIT_ENABLED": "true",  # as in production: 10 contact posts a minute per client
    "STUDY_RATE_LIMIT": "600 per minute",  # the Redis test's one client submits often
    "STUDY_BATCH": 1,  # one image per step, so a study is long enough to kill mid-way
    "STUDY_LEASE_S": 3,  # a killed worker's study is taken over after 3 s...
    "WORKER_SWEEP_S": 1,  # ...noticed by the other worker's housekeeping every second
    "STUDY_REQUEUE_AFTER_S": 5,  # a study whose queue message was lost is queued again
    # A mail whose worker died is queued again after 20 s; a worker whose mail went out
    # waits up to 16 s for the database to record it (the PostgreSQL test).
    "CONTACT_FORWARD_LEASE_S": 20,
    "MAIL_SERVER": "127.0.0.1", "MAIL_USE_TLS": "false",
    "CONTACT_RECIPIENT": "team@example.org",
}
MAIL_MARKER = re.compile(rb"[A-Z]+-[0-9a-f]{8}-\d+")
CSRF_INPUT = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
TIMEOUT_S = 120  # per request: above HAProxy's 2 s connect and below its 180 s timeouts
DEADLINE_S = 180  # for a study or a recovery: a hang guard, not a measurement
HAPROXY_PAGES = ("No server is available", "502 Bad Gateway", "504 Gateway Time-out",
                 "503 Service Unavailable")
APP_ERROR_PAGE = "Something went wrong ("
# HAProxy's answer to a request that reached a replica dying under it, when the request
# was not the first on the visitor's kept-alive connection: it closes that connection
# without a word, as a server closing an idle keep-alive connection would, so that a
# browser sends the request again (and it does not log it).
CLOSED = "closed"
# An answer cut short: the replica died after HAProxy had passed on its headers.
TRUNCATED = "truncated"


@pytest.fixture(scope="module")
def mail():
    server = MailServer(MAIL_MARKER)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, tiny_model_dir, mail):
    settings = {**SETTINGS, "MAIL_PORT": mail.port}
    with cluster(tmp_path_factory.mktemp("cluster"), tiny_model_dir, replicas=3, workers=2,
                 settings=settings) as running:
        yield running


def figures(name: str, **values) -> None:
    print(f"FIGURES {name} {json.dumps(values, sort_keys=True, default=str)}")


# Visitors ---------------------------------------------------------------------------

_addresses = iter(range(1, 60_000))
_addresses_lock = threading.Lock()


def new_address() -> str:
    """A loopback address no other visitor of this module used (127.20.0.1 onwards)."""
    with _addresses_lock:
        number = next(_addresses)
    return f"127.20.{number // 250}.{number % 250 + 1}"


class SourceAddress(HTTPAdapter):
    """Connect from a chosen local address: HAProxy reports it in X-Forwarded-For."""

    def __init__(self, address: str):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def visitor(address: str | None = None) -> requests.Session:
    session = requests.Session()
    session.mount("http://", SourceAddress(address or new_address()))
    return session


@dataclass
class Outcome:
    step: str  # form, post, readyz, submit, poll
    status: int | str  # the HTTP status, or the name of a connection error
    body: str = ""

    @property
    def key(self) -> str:
        return f"{self.step} {self.status}"

    def is_clear(self) -> bool:
        """An answer a visitor can read: no stack trace, and every 5xx is the app's
        error page, a JSON error, or HAProxy's own page for a replica it lost."""
        if "Traceback" in self.body or isinstance(self.status, str):
            return False
        if self.status < 500:
            return True
        return (APP_ERROR_PAGE in self.body or any(p in self.body for p in HAPROXY_PAGES)
                or json_error(self.body))


def json_error(body: str) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and ("error" in data or data.get("status") == "unavailable")


def call(step: str, request) -> tuple[Outcome, requests.Response | None]:
    try:
        response = request()
    except requests.RequestException as exc:
        return Outcome(step, failure_name(exc), str(exc)[:300]), None
    return Outcome(step, response.status_code, response.text), response


def failure_name(exc: requests.RequestException) -> str:
    if "RemoteDisconnected" in str(exc):
        return CLOSED
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return TRUNCATED
    return type(exc).__name__


def contact_fields(token: str, marker: str) -> dict:
    return {"csrf_token": token, "name": "Cluster Test", "email": "cluster@example.org",
            "category": "other", "subject": f"Message {marker}",
            "message": f"Stored once, whatever fails: {marker}"}


def send_message(url: str, marker: str, session: requests.Session | None = None) -> Outcome:
    """One visit: the form (session cookie and CSRF token, from any replica: the secret
    key is shared), then the post. A success is the redirect back to the form."""
    own = session is None
    session = session or visitor()
    try:
        form, page = call("form", lambda: session.get(url + "/contact", timeout=TIMEOUT_S))
        if page is None or page.status_code != 200:
            return form
        token = CSRF_INPUT.search(page.text).group(1)
        return call("post", lambda: session.post(url + "/contact", allow_redirects=False,
                                                 data=contact_fields(token, marker),
                                                 timeout=TIMEOUT_S))[0]
    finally:
        if own:
            session.close()


def acknowledged(outcome: Outcome) -> bool:
    return outcome.step == "post" and outcome.status == 302


def stored_markers(deployment, tag: str) -> Counter:
    """How many rows carry each marker of this run (a marker per message)."""
    rows = deployment.postgres.rows(
        "SELECT message FROM contact_messages WHERE message LIKE :pattern",
        pattern=f"%{tag}-%")
    pattern = re.compile(rf"{tag}-\d+")
    return Counter(m for (message,) in rows for m in pattern.findall(message))


def mailed_markers(mail, tag: str) -> Counter:
    """How many mails carry each marker of this run."""
    return Counter({m: n for m, n in mail.inbox.markers().items() if m.startswith(tag + "-")})


def wait_for_mail(mail, tag: str, markers) -> float:
    """Wait until every marker was mailed (a hang guard); seconds it took."""
    started, wanted = time.monotonic(), set(markers)
    wait_for(lambda: wanted <= set(mailed_markers(mail, tag)), "the mails", DEADLINE_S)
    return time.monotonic() - started


def wait_until_no_mail_can_follow(deployment, tag: str) -> None:
    """After the mails of this run arrived, wait until no duplicate can still come: every
    row of the run sent and recorded, holding no reservation or lease (a row whose lease
    still runs is sent again when it runs out: contact/mailer.py claims only unsent rows,
    so a recorded one is never sent again), and then the queue drained (a job still
    queued finds its row sent). A duplicate that arrives at any time before that is
    counted; a hang guard, not a measurement."""
    queue = make_huey(deployment.settings["BROKER_URL"], str(deployment.root))
    wait_for(lambda: unsettled_rows(deployment, tag) == 0,
             "every message recorded as sent, with no lease left", DEADLINE_S)
    wait_for(lambda: queue.pending_count() == 0, "the queue to drain", DEADLINE_S)


def unsettled_rows(deployment, tag: str) -> int:
    """Rows of this run not yet recorded as sent, or still reserved or leased."""
    return deployment.postgres.scalar(
        "SELECT count(*) FROM contact_messages WHERE message LIKE :pattern AND "
        "(forwarded_at IS NULL OR claim_token IS NOT NULL OR claimed_until IS NOT NULL)",
        pattern=f"%{tag}-%")


def histogram(outcomes) -> dict:
    return dict(sorted(Counter(o.key for o in outcomes).items()))


def error_messages(outcomes) -> dict:
    """What the answers said, counted: the app's error page's message or a JSON error's."""
    said = Counter()
    for outcome in outcomes:
        page = re.search(r'class="error-message">([^<]*)<', outcome.body)
        said[page.group(1) if page else outcome.body[:200]] += 1
    return dict(said)


def unclear(outcomes) -> list[str]:
    return [f"{o.key}: {o.body[:300]!r}" for o in outcomes if not o.is_clear()]


# Studies ----------------------------------------------------------------------------

def study_images(count: int, size: int = 64) -> list[tuple[str, bytes]]:
    return [(f"{i}.png", scan_like_png(size=(size, size), seed=i)) for i in range(count)]


def submit_study(session, url: str, images) -> tuple[Outcome, str | None]:
    """POST a study; (outcome, its status path) where it was accepted (202)."""
    outcome, response = call("submit", lambda: session.post(
        url + "/api/v1/studies", data={"modality": "ct", "model": "vgg16"},
        files=[("images", (name, data, "image/png")) for name, data in images],
        timeout=TIMEOUT_S))
    if response is not None and response.status_code == 202:
        return outcome, response.json()["url"]
    return outcome, None


def progress(url: str) -> dict:
    return requests.get(url + "?images=0", timeout=TIMEOUT_S).json()


def finished_study(url: str) -> dict:
    """Poll the progress until the study ends; then its full view."""
    wait_for(lambda: progress(url)["status"] in ("done", "failed"), f"study {url}", DEADLINE_S)
    return requests.get(url, timeout=TIMEOUT_S).json()


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def busiest(processes, sample_s: float = 0.5):
    """The process that used the most CPU over a short sample: the one running a study
    (the other only polls the queue). Returns it with every process's ticks."""
    before = {p.pid: cpu_ticks(p.pid) for p in processes}
    time.sleep(sample_s)
    used = {p.pid: cpu_ticks(p.pid) - before[p.pid] for p in processes}
    return max(processes, key=lambda p: used[p.pid]), used


# The tests, in the order they run ---------------------------------------------------

def test_a_study_sent_through_the_balancer_is_seen_alike_by_every_replica(deployment):
    """A worker elsewhere runs it; each replica, asked directly, reads the same study
    from the shared database (no replica keeps a study of its own)."""
    with visitor() as session:
        outcome, path = submit_study(session, deployment.url, study_images(6))
    assert outcome.status == 202, outcome.body[:500]
    final = finished_study(deployment.url + path)
    direct = [requests.get(replica.url + path, timeout=TIMEOUT_S) for replica in
              deployment.replicas]
    figures("study_on_every_replica", replicas=len(direct),
            statuses=[r.status_code for r in direct], progress=final["progress"])
    assert final["status"] == "done" and final["progress"] == {"done": 6, "total": 6}
    assert [r.status_code for r in direct] == [200] * len(deployment.replicas)
    assert all(r.json() == final for r in direct)


def test_a_rate_limit_holds_across_replicas(deployment):
    """20 posts from one client address, round robin over three replicas that count in
    one Redis: the first 10 pass (the production limit, 10 a minute), the rest get 429."""
    address, tag = new_address(), f"RATE-{uuid.uuid4().hex[:8]}"
    with visitor(address) as session:
        page = session.get(deployment.url + "/contact", timeout=TIMEOUT_S)
        token = CSRF_INPUT.search(page.text).group(1)
        statuses = [session.post(deployment.url + "/contact", allow_redirects=False,
                                 data=contact_fields(token, f"{tag}-{i}"),
                                 timeout=TIMEOUT_S).status_code for i in range(20)]
    servers = wait_for(lambda: balanced_posts(deployment, address, 20), "HAProxy's log", 30)
    stored = stored_markers(deployment, tag)
    figures("rate_limit", statuses=dict(Counter(statuses)), per_replica=dict(servers),
            stored=sum(stored.values()))
    assert statuses == [302] * 10 + [429] * 10
    assert len(servers) == len(deployment.replicas)  # every replica took a share
    assert sum(stored.values()) == 10 and set(stored.values()) == {1}


def balanced_posts(deployment, address: str, count: int) -> Counter | None:
    """Which replica HAProxy sent each of this address's posts to (from its log)."""
    lines = [line for line in deployment.haproxy_log().splitlines()
             if line.startswith(address + ":") and '"POST /contact' in line]
    if len(lines) < count:
        return None
    return Counter(line.split()[3].split("/")[1] for line in lines)


def post_many(url: str, tag: str, count: int, threads: int, on_answer=None) -> list[Outcome]:
    """``count`` visits from ``threads`` threads at once; ``on_answer`` sees each."""
    def visit(number: int) -> Outcome:
        outcome = send_message(url, f"{tag}-{number}")
        if on_answer is not None:
            on_answer(outcome)
        return outcome

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(visit, range(count)))


def test_concurrent_contact_posts_are_stored_and_mailed_once_each(deployment, mail):
    """300 visitors at once: 300 rows, and the two workers' jobs send 300 mails."""
    tag = f"MSG-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    outcomes = post_many(deployment.url, tag, 300, threads=30)
    elapsed = time.monotonic() - started
    stored = stored_markers(deployment, tag)
    mail_s = wait_for_mail(mail, tag, stored)
    wait_until_no_mail_can_follow(deployment, tag)
    mailed = mailed_markers(mail, tag)
    figures("contact_300", histogram=histogram(outcomes), stored=sum(stored.values()),
            distinct=len(stored), seconds=round(elapsed, 1), mails=sum(mailed.values()),
            distinct_mails=len(mailed), all_mailed_after_s=round(mail_s, 1))
    assert histogram(outcomes) == {"post 302": 300}
    assert len(stored) == 300 and set(stored.values()) == {1}
    assert mailed == stored  # every message mailed, none twice


def test_a_replica_killed_mid_load_loses_no_acknowledged_message(deployment, mail):
    """SIGKILL one replica after 100 answers: its in-flight requests fail (HAProxy's
    502, a kept-alive connection closed without an answer, or a page cut short), later
    ones go to the others; what was acknowledged is stored, and mailed, once."""
    tag, answers, lock = f"KILL-{uuid.uuid4().hex[:8]}", [0], threading.Lock()
    hundred = threading.Event()

    def count(_outcome):
        with lock:
            answers[0] += 1
            if answers[0] == 100:
                hundred.set()

    victim = deployment.replicas[0]
    with ThreadPoolExecutor(1) as killer:
        killed = killer.submit(lambda: (hundred.wait(DEADLINE_S), victim.kill()))
        outcomes = post_many(deployment.url, tag, 300, threads=30, on_answer=count)
        killed.result()
    stored = stored_markers(deployment, tag)
    acked = {f"{tag}-{i}" for i, o in enumerate(outcomes) if acknowledged(o)}
    wait_for_mail(mail, tag, stored)
    wait_until_no_mail_can_follow(deployment, tag)
    mailed = mailed_markers(mail, tag)
    figures("contact_300_replica_killed", histogram=histogram(outcomes),
            acknowledged=len(acked), stored=sum(stored.values()), distinct=len(stored),
            stored_unacknowledged=len(set(stored) - acked), mails=sum(mailed.values()))
    assert mailed == stored
    assert victim.process.poll() is not None  # the replica really died mid-run
    assert acked and acked <= set(stored)
    assert set(stored.values()) == {1}  # nothing stored twice, acknowledged or not
    cut = (CLOSED, TRUNCATED)  # what a replica dying mid-request leaves a visitor
    assert [o for o in outcomes if not o.is_clear() and o.status not in cut] == []
    assert all(o.status in (302, 502, 503, *cut) for o in outcomes)


def test_a_worker_killed_mid_study_is_replaced_by_the_other(deployment):
    """SIGKILL the worker running a 200-image study: the other worker's housekeeping
    finds the expired lease, queues it again and finishes it, keeping the answers."""
    with visitor() as session:
        outcome, path = submit_study(session, deployment.url, study_images(200, size=96))
    assert outcome.status == 202, outcome.body[:500]
    url = deployment.url + path
    wait_for(lambda: progress(url)["progress"]["done"] >= 3, "the study's start", DEADLINE_S)
    running, ticks = busiest(deployment.live_workers())
    os.killpg(running.pid, signal.SIGKILL)
    running.wait(30)
    killed_at = requests.get(url, timeout=TIMEOUT_S).json()
    answered = {i["index"]: i["results"] for i in killed_at["images"] if i["status"] == "done"}
    final = finished_study(url)
    study_id = path.rsplit("/", 1)[1]
    attempts = deployment.postgres.scalar("SELECT attempts FROM studies WHERE id = :id",
                                          id=study_id)
    survivor = [log for worker, log in zip(deployment.workers, deployment.worker_logs)
                if worker.poll() is None]
    figures("worker_killed", cpu_ticks=ticks, done_at_kill=killed_at["progress"]["done"],
            final=final["progress"], attempts=attempts)
    assert killed_at["status"] == "running" and 0 < len(answered) < 200
    assert final["status"] == "done" and final["progress"] == {"done": 200, "total": 200}
    assert sorted(i["index"] for i in final["images"]) == list(range(200))
    assert all(i["status"] == "done" for i in final["images"])
    assert all(i["results"] == answered[i["index"]] for i in final["images"]
               if i["index"] in answered)
    assert attempts == 2
    assert any("queued again" in log.read_text() for log in survivor)
    assert study_id not in deployment.haproxy_log()  # polled through it, never logged
    assert f'"GET /api/v1/studies/<study>' in deployment.haproxy_log()
    deployment.start_worker()  # two workers again for the tests that follow


def test_a_worker_killed_mid_send_is_replaced_and_the_mail_goes_once(deployment, mail):
    """The SMTP server holds a worker in the middle of a mail (before its content);
    that worker is SIGKILLed; once its lease runs out the other worker's housekeeping
    queues the message again, and it is mailed once."""
    tag = f"SEND-{uuid.uuid4().hex[:8]}"
    marker = f"{tag}-0"
    mail.inbox.at_rcpt.clear()
    mail.inbox.rcpt_gate.clear()
    try:
        assert acknowledged(send_message(deployment.url, marker))
        assert mail.inbox.at_rcpt.wait(DEADLINE_S)  # a worker is mid-send
        row_id = deployment.postgres.scalar(
            "SELECT id FROM contact_messages WHERE message LIKE :pattern",
            pattern=f"%{marker}")
        said = f"contact message {row_id}: forwarding"
        sender = [worker for worker, log in zip(deployment.workers, deployment.worker_logs)
                  if worker.poll() is None and said in log.read_text()]
        assert len(sender) == 1
        killed_at = time.monotonic()
        os.killpg(sender[0].pid, signal.SIGKILL)
        sender[0].wait(30)
    finally:
        mail.inbox.rcpt_gate.set()  # the dead sender's session ends without content
    mail_s = wait_for_mail(mail, tag, [marker])
    mailed_after_kill_s = time.monotonic() - killed_at
    wait_until_no_mail_can_follow(deployment, tag)
    attempts = deployment.postgres.scalar(
        "SELECT forward_attempts FROM contact_messages WHERE id = :id", id=row_id)
    figures("worker_killed_mid_send", mailed_after_kill_s=round(mailed_after_kill_s, 1),
            waited_s=round(mail_s, 1), attempts=attempts, mails=mailed_markers(mail, tag))
    assert mailed_markers(mail, tag) == {marker: 1}
    assert attempts == 2
    deployment.start_worker()  # two workers again for the tests that follow


class Load:
    """``round_()`` (a visit: its outcomes) in a loop on threads until stopped; every
    outcome is kept, for the histogram and the checks after."""

    def __init__(self, round_, threads: int = 1):
        self.round, self.outcomes, self.lock = round_, [], threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for thread in self.threads:
            thread.join(TIMEOUT_S * 3)

    def run(self) -> None:
        while not self.stopping.is_set():
            for outcome in self.round():
                with self.lock:
                    self.outcomes.append(outcome)
            time.sleep(0.05)

    def count(self, predicate=lambda o: True) -> int:
        with self.lock:
            return sum(1 for o in self.outcomes if predicate(o))

    def more(self, predicate, how_many: int, what: str) -> None:
        """Wait until ``how_many`` more outcomes match ``predicate`` than now."""
        target = self.count(predicate) + how_many
        wait_for(lambda: self.count(predicate) >= target, what, DEADLINE_S)


def ready_through(url: str) -> bool:
    try:
        return requests.get(url + "/readyz", timeout=10).status_code == 200
    except requests.RequestException:
        return False


def outage(service, pause_s: float = 3.0) -> float:
    """Stop the service for ``pause_s`` and start it again; when it was stopped (the
    time to recover is a figure, not an assertion)."""
    began = time.monotonic()
    service.stop()
    time.sleep(pause_s)
    service.start()
    return began


def test_a_redis_restart_fails_requests_clearly_and_heals(deployment):
    """Redis (queue and rate-limit counters) stops for 3 s under load: answers say so,
    then everything works again by itself, and every accepted study finishes."""
    accepted, images = [], study_images(2)

    def round_():
        with visitor() as session:
            outcomes = [call("readyz", lambda: session.get(deployment.url + "/readyz",
                                                           timeout=TIMEOUT_S))[0]]
            submitted, path = submit_study(session, deployment.url, images)
            outcomes.append(submitted)
            if path:
                accepted.append(path)
                outcomes.append(call("poll", lambda: session.get(
                    deployment.url + path + "?images=0", timeout=TIMEOUT_S))[0])
        return outcomes

    with Load(round_) as load:
        load.more(lambda o: o.key == "submit 202", 3, "studies before the restart")
        began = outage(deployment.redis)
        wait_for(lambda: ready_through(deployment.url), "readiness after Redis", DEADLINE_S)
        recovered_s = time.monotonic() - began
        load.more(lambda o: o.key == "submit 202", 3, "studies after the restart")
    with visitor() as session:
        outcome, path = submit_study(session, deployment.url, images)
    after = finished_study(deployment.url + path)
    finals = Counter(finished_study(deployment.url + p)["status"] for p in accepted)
    figures("redis_restart", histogram=histogram(load.outcomes), recovered_s=round(
        recovered_s, 1), accepted_studies=len(accepted), finished=dict(finals),
        unclear=unclear(load.outcomes),
        app_500=error_messages(o for o in load.outcomes if o.status == 500))
    assert unclear(load.outcomes) == []
    assert load.count(lambda o: o.status == 503) > 0  # the outage was seen, and said
    assert after["status"] == "done" and after["progress"] == {"done": 2, "total": 2}
    assert finals == {"done": len(accepted)}


def test_a_postgres_restart_loses_no_acknowledged_message(deployment, mail):
    """PostgreSQL stops for 3 s while visitors post: every acknowledged message is
    stored once and mailed, the others were told plainly, and posting works again by
    itself. (A mail sent just before the database went away, whose worker could not
    record it, is sent again after the lease: at least once, counted below.)"""
    tag = f"PG-{uuid.uuid4().hex[:8]}"
    numbers, markers = iter(range(1_000_000)), {}

    def round_():
        marker = f"{tag}-{next(numbers)}"
        outcome = send_message(deployment.url, marker)
        markers[marker] = outcome
        return [outcome]

    with Load(round_, threads=4) as load:
        load.more(acknowledged, 20, "messages before the restart")
        began = outage(deployment.postgres)
        wait_for(lambda: ready_through(deployment.url), "readiness after PostgreSQL",
                 DEADLINE_S)
        recovered_s = time.monotonic() - began
        load.more(acknowledged, 20, "messages after the restart")
    stored = stored_markers(deployment, tag)
    acked = {m for m, o in markers.items() if acknowledged(o)}
    wait_for_mail(mail, tag, stored)
    wait_until_no_mail_can_follow(deployment, tag)
    mailed = mailed_markers(mail, tag)
    figures("postgres_restart", histogram=histogram(load.outcomes), acknowledged=len(acked),
            stored=sum(stored.values()), recovered_s=round(recovered_s, 1),
            stored_unacknowledged=len(set(stored) - acked), unclear=unclear(load.outcomes),
            app_500=error_messages(o for o in load.outcomes if o.status == 500),
            mails=sum(mailed.values()), mailed_twice=sum(n > 1 for n in mailed.values()))
    assert unclear(load.outcomes) == []
    assert load.count(lambda o: not acknowledged(o)) > 0  # the outage was seen
    assert acked <= set(stored) and set(stored.values()) == {1}
    assert set(mailed) == set(stored)
