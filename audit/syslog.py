"""Audit messages to a repository over syslog: RFC 5424 frames on TLS (RFC 5425).

Each frame is ``MSG-LEN SP SYSLOG-MSG`` (octet counting), the message's MSGID
``DICOM+RFC3881`` as PS3.15 A.5 asks, and its ``[meta sequenceId]`` the trail's row
number, so a repository can tell each event once. Syslog over TLS has no receipt, so a
batch counts as delivered only once the repository has read all of it: the batch is
followed by TLS's close_notify, and the repository's own close answers it only after it
has read everything before it. A repository that stops with frames unread resets the
connection instead, and the batch is sent again later.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

AUTHPRIV = 10  # the facility PS3.15 A.5 asks for
SEVERITY = {"0": 5, "4": 4, "8": 3, "12": 2}  # outcome: notice, warning, error, critical
MSGID = "DICOM+RFC3881"
BOM = "\ufeff".encode()
DEFAULT_PORT = 6514  # RFC 5425


class AuditDeliveryError(Exception):
    """The repository did not take the batch (down, refused, reset, too slow)."""


@dataclass(frozen=True)
class SyslogTarget:
    host: str
    port: int
    ca_file: str | None  # the CA that signed the repository's certificate; None: system's
    cert_file: str | None  # this client's certificate, for a repository that asks for one
    key_file: str | None
    timeout_s: float

    @classmethod
    def from_url(cls, url: str, ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, timeout_s: float = 10.0) -> SyslogTarget:
        """``tls://host:6514``; anything else (plain TCP, UDP) is refused: audit
        messages name people and studies and never travel in the clear."""
        parts = urlsplit(url.strip())
        if parts.scheme != "tls" or not parts.hostname:
            raise ValueError("AUDIT_SYSLOG_URL must be tls://HOST:PORT (syslog over TLS, "
                             f"RFC 5425), not {parts.scheme or url!r}")
        if bool(cert_file) != bool(key_file):
            raise ValueError("AUDIT_SYSLOG_CERT_FILE and AUDIT_SYSLOG_KEY_FILE go together")
        return cls(parts.hostname, parts.port or DEFAULT_PORT, ca_file, cert_file, key_file,
                   timeout_s)

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


def frame(message: bytes, seq: int, at: datetime, outcome: str, host: str,
          app_name: str, proc_id: int) -> bytes:
    """One RFC 5424 message with RFC 5425's length prefix."""
    priority = AUTHPRIV * 8 + SEVERITY.get(outcome, 3)
    stamp = at.isoformat(timespec="microseconds") + "Z"
    header = (f"<{priority}>1 {stamp} {printable(host, 255)} {printable(app_name, 48)} "
              f"{proc_id} {MSGID} [meta sequenceId=\"{seq}\"] ").encode()
    body = header + BOM + message
    return f"{len(body)} ".encode() + body


def printable(value: str, limit: int) -> str:
    """A header field: printable US-ASCII without spaces (RFC 5424), or the nil value."""
    text = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return text or "-"


def send(target: SyslogTarget, frames: list[bytes]) -> None:
    """Deliver the frames on one connection; raise ``AuditDeliveryError`` unless the
    repository read them all."""
    try:
        with socket.create_connection((target.host, target.port),
                                      timeout=target.timeout_s) as raw:
            with target.context().wrap_socket(raw, server_hostname=target.host) as tls:
                tls.sendall(b"".join(frames))
                confirm_read(tls)
    except AuditDeliveryError:
        raise
    except (OSError, ssl.SSLError) as exc:
        raise AuditDeliveryError(f"{type(exc).__name__}: {exc}") from exc


def confirm_read(tls: ssl.SSLSocket) -> None:
    """Close our side (close_notify) and wait for the repository's close: it closes only
    after reading up to our close_notify. A reset means it stopped with frames unread."""
    try:
        tls.unwrap()
    except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
        pass  # closed without its own close_notify: still after reading ours
    except ConnectionResetError as exc:
        raise AuditDeliveryError("the repository reset the connection before reading "
                                 "the whole batch") from exc
