"""A real SMTP server (aiosmtpd) on loopback that keeps every mail it accepts.

Two gates let tests hold a sender mid-conversation: ``gate`` holds the answer to DATA
(the mail is already received: a sender killed there would still be delivered), and
``rcpt_gate`` holds the answer to RCPT TO, before any content is sent (a sender killed
there delivers nothing, as when a worker dies before its mail went out).
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections import Counter

import pytest
from aiosmtpd.controller import Controller

MARKER = re.compile(rb"FWD-[0-9a-f]{12}-\d+")


class Inbox:
    """aiosmtpd handler: keeps every mail; waits at a closed gate."""

    def __init__(self, marker: re.Pattern = MARKER):
        self.marker = marker
        self.messages: list[bytes] = []
        self.gate, self.rcpt_gate = threading.Event(), threading.Event()
        self.gate.set()
        self.rcpt_gate.set()
        self.receiving, self.at_rcpt = threading.Event(), threading.Event()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.at_rcpt.set()
        await asyncio.get_running_loop().run_in_executor(None, self.rcpt_gate.wait)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.receiving.set()
        await asyncio.get_running_loop().run_in_executor(None, self.gate.wait)
        self.messages.append(envelope.content)
        return "250 Message accepted for delivery"

    def markers(self) -> Counter:
        """How many mails carried each marker (a mail counts once per marker)."""
        found = (set(self.marker.findall(mail)) for mail in list(self.messages))
        return Counter(marker.decode() for markers in found for marker in markers)


class MailServer:
    def __init__(self, marker: re.Pattern = MARKER, tls_context=None):
        self.inbox = Inbox(marker)
        self.tls_context = tls_context  # offers STARTTLS with it
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = None

    def start(self):
        extra = {"tls_context": self.tls_context} if self.tls_context else {}
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port,
                                     ready_timeout=30, **extra)
        self.controller.start()

    def stop(self):
        self.inbox.gate.set()
        self.inbox.rcpt_gate.set()
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def mail():
    """A real SMTP server on loopback for one test."""
    server = MailServer()
    server.start()
    yield server
    server.stop()
