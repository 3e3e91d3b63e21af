"""Privacy: uploads never reach the disk and neither uploads nor messages reach the logs.

Each upload carries a unique marker (in a PNG text chunk, a DICOM patient name, a
broken file); each contact message a unique body. After the requests the temporary
folders, the instance folder and the model folder are searched for the markers, raw,
hex- and base64-encoded, and so are the logs. Uploads are larger than the multipart
parser's default in-memory limit; an audit hook shows that none is spooled to a
temporary file, named or unnamed, which a search of the folders could not see.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import re
import struct
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path

import pytest
import requests
import werkzeug.formparser
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from app import create_app

from .conftest import TINY_CARD, run_queued_jobs
from .conftest import testing_config as make_config
from .hostile_corpus import dicom_bytes, encode, noise
from .model_factory import install, tiny_model
from .server import start_server

CSRF_INPUT = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
SCAN_SIZE_LIMIT = 64 << 20


def new_marker() -> bytes:
    return f"PRIVACY-{uuid.uuid4().hex}".encode()


def png_with_marker(marker: bytes, side: int = 800) -> bytes:
    """A valid PNG (about 2 MB, so it is spooled) with the marker in a text chunk."""
    png = encode(noise((side, side), seed=5), "PNG")
    data = b"Comment\x00" + marker
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(
        ">I", zlib.crc32(b"tEXt" + data))
    return png[:33] + chunk + png[33:]


def dicom_with_marker(marker: bytes) -> bytes:
    return dicom_bytes(64, 64, patient_name=marker.decode())


def encodings(marker: bytes) -> list[bytes]:
    """The marker as it could appear: raw, hex, and base64 at each byte alignment."""
    found = [marker, marker.hex().encode()]
    for shift in range(3):
        encoded = base64.b64encode(b"\x00" * shift + marker)
        found.append(encoded[4:-4])
    return found


def files_containing(roots: list[Path], needles: list[bytes], since: float,
                     skip=lambda path: False) -> list[str]:
    """Files under ``roots`` changed since ``since`` that contain any of ``needles``."""
    hits = []
    for root in roots:
        for folder, _dirs, names in os.walk(root, onerror=lambda error: None):
            for name in names:
                path = Path(folder, name)
                try:
                    info = path.lstat()
                    if not path.is_file() or path.is_symlink() or info.st_mtime < since \
                            or info.st_size > SCAN_SIZE_LIMIT or skip(path):
                        continue
                    content = path.read_bytes()
                except OSError:
                    continue  # vanished or unreadable: someone else's file
                if any(needle in content for needle in needles):
                    hits.append(str(path))
    return hits


@pytest.fixture(scope="module")
def privacy_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("privacy_models")
    install(tiny_model(), root, "vgg16", "ct", TINY_CARD)
    return root


@pytest.mark.load
def test_real_server_keeps_no_upload_on_disk_and_nothing_private_in_its_log(
        tmp_path, privacy_models):
    started = time.time() - 1
    server = start_server(tmp_path / "server", privacy_models, workers=1)
    upload_markers = [new_marker() for _ in range(4)]
    body_marker = new_marker()
    try:
        session = requests.Session()
        png, dicom = png_with_marker(upload_markers[0]), dicom_with_marker(upload_markers[1])
        assert upload_markers[1] in dicom
        assert len(png) > 600_000  # above the multipart parser's in-memory limit
        for name, data, status in (("scan.png", png, 200), ("slice.dcm", dicom, 200),
                                   ("broken.png", upload_markers[2] * 40_000, 415)):
            response = session.post(server.url + "/api/v1/predict", timeout=60,
                                    files={"image": (name, data)},
                                    data={"modality": "ct", "model": "vgg16"})
            assert response.status_code == status, (name, response.text)
        token = CSRF_INPUT.search(session.get(server.url + "/", timeout=30).text).group(1)
        page = session.post(server.url + "/", timeout=60, data={
            "csrf_token": token, "modality": "ct", "model": "vgg16", "explain": "y"},
            files={"image": ("scan.png", png_with_marker(upload_markers[3]))})
        assert page.status_code == 200 and 'id="verdict"' in page.text
        contact = session.post(server.url + "/contact", allow_redirects=False, timeout=30, data={
            "csrf_token": token, "name": "Privacy", "email": "p@example.org",
            "category": "other", "subject": "Privacy check",
            "message": "Private body " + body_marker.decode()})
        assert contact.status_code == 302
    finally:
        server.stop()

    upload_needles = [n for marker in upload_markers for n in encodings(marker)]
    roots = [server.tmpdir, server.instance, privacy_models, Path(tempfile.gettempdir())]
    assert not files_containing(roots, upload_needles, started)
    body_needles = encodings(body_marker)
    database = lambda path: path.name.startswith("lungscan.sqlite3")  # noqa: E731 - stored there
    assert not files_containing(roots, body_needles, started, skip=database)
    assert files_containing([server.instance], body_needles, started)  # the check can see it
    log = server.log_path.read_bytes()
    assert not [n for n in upload_needles + body_needles if n in log]
    assert b"POST /api/v1/predict" in log  # the log was written


def test_in_process_logs_carry_no_upload_or_message(tmp_path, privacy_models, caplog,
                                                   monkeypatch, instance_path):
    started = time.time() - 1
    app = create_app(make_config(tmp_path, MODEL_DIR=str(privacy_models),
                                 MAIL_SERVER="127.0.0.1", MAIL_PORT=1,
                                 CONTACT_RECIPIENT="team@example.org"))
    client = app.test_client()
    upload_marker, body_marker = new_marker(), new_marker()
    with caplog.at_level(logging.DEBUG):
        response = client.post("/api/v1/predict", data={
            "image": (io.BytesIO(png_with_marker(upload_marker)), "scan.png"),
            "modality": "ct", "model": "vgg16", "explain": "1"})
        assert response.status_code == 200
        # The SMTP forward fails (nothing listens on port 1): the failure is logged.
        stored = client.post("/contact", data={
            "name": "Privacy", "email": "p@example.org", "category": "other",
            "subject": "Privacy check", "message": "Private body " + body_marker.decode()})
        assert stored.status_code == 302
        run_queued_jobs(app)  # the mail job has tried, and logged, the send

        def decoder_quoting_its_input(data, **_kwargs):
            raise ValueError(f"cannot parse {data[:64]!r}")  # as some decoders do

        monkeypatch.setattr("inference.service.decode_image", decoder_quoting_its_input)
        failed = client.post("/api/v1/predict", data={
            "image": (io.BytesIO(upload_marker * 4), "scan.png"), "modality": "ct"})
        assert failed.status_code == 500
    logged = "\n".join(record.getMessage() + str(record.exc_text or "")
                       for record in caplog.records).encode()
    assert b"unhandled error" in logged and b"ValueError" in logged  # located, not quoted
    assert b"not forwarded yet" in logged
    for needle in encodings(upload_marker) + encodings(body_marker):
        assert needle not in logged
    assert not files_containing([Path(tempfile.gettempdir())], encodings(upload_marker),
                                started)


# Audit hooks cannot be removed: one is installed per process, and records only while
# a test asks it to.
_AUDIT = {"installed": False, "events": None}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
TEMPFILE_EVENTS = {"tempfile.mkstemp", "tempfile.mkdtemp"}


def _record_disk_writes(event: str, args: tuple) -> None:
    events = _AUDIT["events"]
    if events is None:
        return
    if event in TEMPFILE_EVENTS:
        events.append((event, args[0]))
    elif event == "open" and isinstance(args[2], int) and args[2] & WRITE_FLAGS:
        events.append((event, args[0]))  # os.open, open() and TemporaryFile's O_TMPFILE


@contextlib.contextmanager
def disk_writes():
    """Every file opened for writing, and every temporary file made, inside the block."""
    if not _AUDIT["installed"]:
        sys.addaudithook(_record_disk_writes)
        _AUDIT["installed"] = True
    events = []
    _AUDIT["events"] = events
    try:
        yield events
    finally:
        _AUDIT["events"] = None


def post_upload(client, route: str, data: bytes):
    """Encoded here, in memory: the test client's own encoder spools large bodies."""
    boundary, body = encode_multipart({"image": FileStorage(io.BytesIO(data), "scan.png"),
                                       "modality": "ct", "model": "vgg16"})
    return client.post("/api/v1/predict" if route == "api" else "/", data=body,
                       content_type=f"multipart/form-data; boundary={boundary}")


@pytest.mark.parametrize("route", ["api", "page"])
def test_large_upload_opens_no_file_for_writing(client, scan_png, route):
    data = png_with_marker(new_marker())
    assert len(data) > 1 << 20  # twice Werkzeug's in-memory limit for a file part
    assert post_upload(client, route, scan_png).status_code == 200  # models loaded
    with disk_writes() as events:
        response = post_upload(client, route, data)
    assert response.status_code == 200
    assert events == []
    with disk_writes() as events:
        tempfile.TemporaryFile().close()
    assert events  # the recorder sees an unnamed temporary file


@pytest.mark.parametrize("route", ["api", "page"])
def test_large_upload_succeeds_where_no_temporary_file_can_be_made(client, scan_png, route,
                                                                  monkeypatch):
    assert post_upload(client, route, scan_png).status_code == 200  # models loaded

    def refuse(*_args, **_kwargs):
        raise OSError("no temporary files here")

    for name in ("TemporaryFile", "SpooledTemporaryFile", "NamedTemporaryFile",
                 "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    for name in ("TemporaryFile", "SpooledTemporaryFile"):  # bound at Werkzeug's import
        monkeypatch.setattr(werkzeug.formparser, name, refuse, raising=False)
    response = post_upload(client, route, png_with_marker(new_marker()))
    assert response.status_code == 200
