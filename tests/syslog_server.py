"""A real rsyslog (Debian's, with rsyslog-gnutls) taking syslog over TLS on loopback.

It plays the hospital's Audit Record Repository: imtcp with the gtls driver on a free
port, a certificate for ``localhost`` made by openssl, and every message it reads
written raw, one per line, to a file the tests read. ``restart`` stops it and starts it
on the same port, the way a repository goes down for maintenance.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .redis_server import free_port
from .waiting import listening, wait_until_up

RSYSLOGD = shutil.which("rsyslogd") or ("/usr/sbin/rsyslogd"
                                         if Path("/usr/sbin/rsyslogd").exists() else None)
GTLS = list(Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so"))  # rsyslog-gnutls
needs_rsyslog = [pytest.mark.services,
                 pytest.mark.skipif(RSYSLOGD is None or not GTLS,
                                    reason="rsyslogd with TLS is missing: install Debian's "
                                           "rsyslog and rsyslog-gnutls (.ci/run does)")]

CONFIG = """\
global(workDirectory="{folder}" maxMessageSize="64k"
       defaultNetstreamDriver="gtls"
       defaultNetstreamDriverCAFile="{cert}"
       defaultNetstreamDriverCertFile="{cert}"
       defaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1"
       streamDriver.authMode="anon")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="raw" type="string" string="%rawmsg%\\n")
action(type="omfile" file="{received}" template="raw")
"""
SEQUENCE = re.compile(r'\[meta sequenceId="(\d+)"\]')
BOM = "\ufeff".encode()
# RFC 5424: <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD then BOM + message.
HEADER = re.compile(rb'<(\d{1,3})>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (\S+) (\S+) '
                    rb'(\d+) DICOM\+RFC3881 \[meta sequenceId="(\d+)"\] ')


def body_of(line: bytes) -> tuple[re.Match, bytes]:
    """A received RFC 5424 message's header fields and its XML (after the BOM)."""
    header = HEADER.match(line)
    assert header, line[:200]
    rest = line[header.end():]
    assert rest.startswith(BOM)
    return header, rest[len(BOM):]


def self_signed(folder: Path, name: str = "localhost",
                loopback: bool = True) -> tuple[Path, Path]:
    """A certificate (its own CA) and key for ``name`` (and 127.0.0.1 if ``loopback``)."""
    key, cert = folder / f"{name}-key.pem", folder / f"{name}-cert.pem"
    names = f"DNS:{name}" + (",IP:127.0.0.1" if loopback else "")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-addext", f"subjectAltName={names}",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class Rsyslog:
    def __init__(self, folder: Path, name: str = "localhost"):
        """``name``: the host its certificate is for (only ``localhost`` reaches it)."""
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = self_signed(folder, name, loopback=name == "localhost")
        self.port = free_port()
        self.received = folder / "received.log"
        self.config = folder / "rsyslog.conf"
        self.config.write_text(CONFIG.format(folder=folder, cert=self.cert, key=self.key,
                                             port=self.port, received=self.received))
        self.process: subprocess.Popen | None = None
        self.url = f"tls://localhost:{self.port}"

    def start(self) -> Rsyslog:
        self.process = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(self.config), "-i", str(self.folder / "pid")],
            stdout=(self.folder / "rsyslogd.out").open("ab"), stderr=subprocess.STDOUT)
        wait_until_up(lambda: listening(self.port), self.process, "rsyslogd",
                      lambda: (self.folder / "rsyslogd.out").read_text(), timeout=20)
        return self

    def stop(self) -> None:
        """SIGTERM: rsyslog writes out what it read, then exits."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(20)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def messages(self) -> list[bytes]:
        """Every message rsyslog wrote, as received (the header, BOM and XML)."""
        if not self.received.exists():
            return []
        return [line for line in self.received.read_bytes().split(b"\n") if line]

    def sequence_ids(self) -> list[int]:
        return [int(match.group(1)) for line in self.messages()
                if (match := SEQUENCE.search(line.decode("utf-8", "replace")))]

    def wait_for(self, count: int, timeout: float = 20) -> list[bytes]:
        """The messages once at least ``count`` are in the file (rsyslog writes async)."""
        deadline = time.monotonic() + timeout
        while len(self.messages()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages()

    def __enter__(self) -> Rsyslog:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
