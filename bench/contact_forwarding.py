"""Contact messages posted concurrently through two gunicorn replicas: mails received.

    python bench/contact_forwarding.py [--messages 300] [--clients 32]

Two gunicorn servers (two workers each) share one SQLite database and forward to a
real SMTP server (aiosmtpd) on loopback. Each message carries a unique marker; once
every stored row is marked forwarded (or the wait runs out), prints the number posted,
stored, mails received, distinct messages received and duplicates, as JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.server import start_server  # noqa: E402

CSRF_INPUT = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
MARKER = re.compile(rb"BENCH-[0-9a-f]{8}-\d+")


class Inbox:
    def __init__(self):
        self.mails, self.lock = [], threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.mails.append(envelope.content)
        return "250 OK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, subject: str) -> int:
    """One visitor: fetch the form (session cookie, CSRF token), then post it."""
    with requests.Session() as session:
        token = CSRF_INPUT.search(session.get(url + "/contact", timeout=60).text).group(1)
        return session.post(url + "/contact", allow_redirects=False, timeout=60, data={
            "csrf_token": token, "name": "Bench", "email": "bench@example.org",
            "category": "other", "subject": subject,
            "message": "A benchmark message."}).status_code


def unforwarded(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        return connection.execute("SELECT count(*) FROM contact_messages "
                                  "WHERE forwarded_at IS NULL").fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    root, inbox, port = Path(tempfile.mkdtemp(prefix="contact-bench-")), Inbox(), free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=port, ready_timeout=30)
    smtp.start()
    database = root / "shared.sqlite3"
    (root / "models").mkdir()
    env = {"FLASK_SQLALCHEMY_DATABASE_URI": f"sqlite:///{database}",
           "FLASK_MAIL_SERVER": "127.0.0.1", "FLASK_MAIL_PORT": str(port),
           "FLASK_MAIL_USE_TLS": "false", "FLASK_CONTACT_RECIPIENT": "team@example.org"}
    servers = [start_server(root / f"replica{i}", root / "models", workers=2, env=env)
               for i in range(2)]
    tag = uuid.uuid4().hex[:8]
    try:
        with ThreadPoolExecutor(args.clients) as pool:
            statuses = list(pool.map(
                lambda i: post(servers[i % 2].url, f"BENCH-{tag}-{i}"), range(args.messages)))
        deadline = time.monotonic() + 300
        while unforwarded(database) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)  # let any stray duplicate arrive
    finally:
        for server in servers:
            server.stop()
        smtp.stop()
    with sqlite3.connect(database) as connection:
        stored = connection.execute("SELECT count(*) FROM contact_messages").fetchone()[0]
    counts = Counter(m for mail in inbox.mails for m in set(MARKER.findall(mail)))
    print(json.dumps({"posted": args.messages, "answered_302": statuses.count(302),
                      "stored": stored, "unforwarded": unforwarded(database),
                      "mails_received": len(inbox.mails), "distinct_received": len(counts),
                      "duplicates": sum(n - 1 for n in counts.values())}, indent=2))


if __name__ == "__main__":
    main()
