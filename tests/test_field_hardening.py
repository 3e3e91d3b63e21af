"""Hostile values in fields that used to fail: a formula in a CSV cell, a line break in a
mail header, a NUL byte, an image number past the database's integers, a model's
install source with its token; and a mail server that is not who it says."""

from __future__ import annotations

import csv
import io
import ssl
import subprocess

import pytest
from sqlalchemy import select

from app import create_app
from contact.mailer import forward_pending
from contact.models import ContactMessage
from extensions import db
from inference.sources import public_source
from studies.report import study_csv

from .conftest import testing_config
from .mail_server import MailServer
from .model_factory import scan_like_png
from .study_helpers import image_fields, submit, wait_for_study

FORMULA = '=HYPERLINK("https://evil.example","open")'
CONTACT = {"name": "Ana Souza", "email": "ana@example.org", "category": "bug",
           "subject": "Heatmap", "message": "The heatmap did not show for ResNet50."}


def image(index: int, series_uid: str | None) -> dict:
    return {"index": index, "name": f"slice{index}.png", "series_uid": series_uid,
            "instance_number": index + 1, "status": "done", "warnings": [],
            "covid_probability": 0.2, "positive": False,
            "results": [{"architecture": "vgg16", "label": "Non-COVID",
                         "covid_probability": 0.2, "threshold": 0.5}]}


def test_a_series_uid_cannot_put_a_formula_into_the_csv():
    text = study_csv({"images": [image(0, FORMULA), image(1, "1.2.840.1"), image(2, None)]})
    cells = [row[2] for row in csv.reader(io.StringIO(text))][1:]
    assert cells == ["'" + FORMULA, "1.2.840.1", ""]


@pytest.mark.parametrize("field, value", [
    ("subject", "Hello\r\nBcc: everyone@example.org"), ("subject", "nul\x00byte"),
    ("name", "Ana\nSouza"), ("name", "Ana\x00"), ("email", "ana@example.org\x00"),
    ("message", "A message long enough\x00 with a NUL byte in it.")])
def test_control_characters_in_a_contact_field_are_refused_and_nothing_is_stored(
        client, app, field, value):
    answer = client.post("/contact", data={**CONTACT, field: value})
    assert answer.status_code == 400
    assert "Traceback" not in answer.get_data(as_text=True)
    with app.app_context():
        assert db.session.scalars(select(ContactMessage)).all() == []


def test_line_breaks_in_a_message_body_are_kept(client, app):
    body = "First line of the report.\r\nSecond line,\tindented."
    assert client.post("/contact", data={**CONTACT, "message": body}).status_code == 302
    with app.app_context():
        (row,) = db.session.scalars(select(ContactMessage)).all()
        assert row.message == body


def test_a_stored_subject_with_a_line_break_is_sent_on_one_line_and_the_rest_go_too(
        tmp_path, instance_path, mail):
    """A row stored before the form refused line breaks: its mail goes out with the
    subject on one line, and the messages after it are sent as well."""
    app = create_app(testing_config(tmp_path, MAIL_SERVER="127.0.0.1", MAIL_PORT=mail.port,
                                    MAIL_USE_TLS=False, CONTACT_RECIPIENT="team@example.org"))
    with app.app_context():
        for subject in ("FWD-00000000aaaa-1\r\nBcc: everyone@example.org",
                        "FWD-00000000bbbb-2"):
            db.session.add(ContactMessage(name="Ana", email="ana@example.org",
                                          category="bug", subject=subject,
                                          message="Stored before the form checked it."))
        db.session.commit()
        assert forward_pending() == (2, 0)
    assert mail.inbox.markers() == {"FWD-00000000aaaa-1": 1, "FWD-00000000bbbb-2": 1}
    first = next(m for m in mail.inbox.messages if b"aaaa-1" in m)
    headers = first.split(b"\r\n\r\n", 1)[0].replace(b"\r\n", b"\n").split(b"\n")
    assert any(h.startswith(b"Subject: [Bug report] FWD-00000000aaaa-1 Bcc: everyone")
               for h in headers)
    assert not any(h.lower().startswith(b"bcc:") for h in headers)


def test_an_image_number_past_the_database_integers_is_not_found(tmp_path, tiny_model_dir,
                                                                  instance_path):
    app = create_app(testing_config(tmp_path, MODEL_DIR=str(tiny_model_dir),
                                    EMBEDDED_WORKER=True))
    client = app.test_client()
    try:
        url = submit(client, modality="ct", model="vgg16", explain="1", images=image_fields(
            [("a.png", scan_like_png())])).get_json()["url"]
        study = wait_for_study(client, url)
        assert study["status"] == "done"
        page = f"/studies/{study['id']}/images"
        for index in (99999999999999999999, 2**31, 2**63):
            heatmap = client.get(f"{page}/{index}/heatmap/vgg16.png")
            assert heatmap.status_code == 404, index
            assert client.get(f"{page}/{index}").status_code == 404
        assert client.get(f"{page}/0/heatmap/vgg16.png").status_code == 200
    finally:
        app.extensions["job_queue"].stop_embedded_worker()


@pytest.mark.parametrize("source, shown", [
    ("https://models.example/VGG16_CT_model.h5?token=SECRET-abc&sig=xyz",
     "https://models.example/VGG16_CT_model.h5"),
    ("https://user:SECRET@models.example:8443/m.zip#frag", "https://models.example:8443/m.zip"),
    ("/srv/private/hospital-a/VGG16_CT_model.h5", "VGG16_CT_model.h5"),
    ("https://drive.google.com/drive/folders/1L9NXbpr", "https://drive.google.com/drive/folders/1L9NXbpr"),
    (None, None)])
def test_a_model_source_is_shown_without_its_secrets(source, shown):
    assert public_source(source) == shown


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (Debian's openssl), as (cert, key)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def tls_mail(certificate):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    server = MailServer(tls_context=context)
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("trusted", [False, True])
def test_starttls_checks_the_mail_servers_certificate(tmp_path, instance_path, tls_mail,
                                                       certificate, trusted, caplog):
    """A server whose certificate the system does not trust gets no mail (it could be
    anyone in the middle); trusted through MAIL_TLS_CA_FILE, it does."""
    app = create_app(testing_config(
        tmp_path, MAIL_SERVER="127.0.0.1", MAIL_PORT=tls_mail.port, MAIL_USE_TLS=True,
        CONTACT_RECIPIENT="team@example.org",
        MAIL_TLS_CA_FILE=str(certificate[0]) if trusted else None))
    with app.app_context():
        db.session.add(ContactMessage(name="Ana", email="ana@example.org", category="bug",
                                      subject="FWD-00000000cccc-3", message="Over TLS only."))
        db.session.commit()
        sent, failed = forward_pending()
    if trusted:
        assert (sent, failed) == (1, 0)
        assert tls_mail.inbox.markers() == {"FWD-00000000cccc-3": 1}
    else:
        assert (sent, failed) == (0, 1)
        assert tls_mail.inbox.markers() == {}
        assert "SSLCertVerificationError" in caplog.text
