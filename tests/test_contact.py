"""Contact form: validation, storage in the real SQLite database, CLI.

Forwarding by SMTP is tested against a real mail server in test_contact_forwarding.py.
"""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import func, select

from contact.models import ContactMessage
from extensions import db

VALID = {"name": "Ana Souza", "email": "ana@example.org", "phone": "+55 11 5555-0100",
         "category": "bug", "subject": "Heatmap missing",
         "message": "The heatmap did not show for ResNet50."}


def count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(ContactMessage))


def test_valid_message_is_stored_and_acknowledged(app, client):
    response = client.post("/contact", data=VALID, follow_redirects=True)
    assert response.status_code == 200
    assert "your message was received" in response.get_data(as_text=True)
    with app.app_context():
        row = db.session.scalars(select(ContactMessage)).one()
        assert (row.name, row.email, row.category, row.subject) == (
            "Ana Souza", "ana@example.org", "bug", "Heatmap missing")
        assert row.forwarded_at is None  # SMTP not configured


@pytest.mark.parametrize("field,value,error", [
    ("name", "", "Tell us your name."),
    ("email", "not-an-address", "does not look like an email"),
    ("message", "short", "Between 10 and 5000"),
    ("message", "x" * 5001, "Between 10 and 5000"),
    ("subject", "s" * 151, "150"),
    ("phone", "call me maybe", "digits"),
    ("category", "spam", "Not a valid choice"),
])
def test_invalid_fields_show_errors_and_store_nothing(app, client, field, value, error):
    response = client.post("/contact", data={**VALID, field: value})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert error in html
    assert f'id="{field}-error"' in html  # the error sits beside its field
    assert count(app) == 0


def test_phone_is_optional(app, client):
    assert client.post("/contact", data={**VALID, "phone": ""}).status_code == 302
    with app.app_context():
        assert db.session.scalars(select(ContactMessage)).one().phone is None


def test_markup_in_fields_is_escaped_when_shown(client):
    response = client.post("/contact", data={**VALID, "name": "<script>alert(1)</script>",
                                             "email": "bad"})
    html = response.get_data(as_text=True)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html


def test_contact_list_cli(app, client, runner):
    client.post("/contact", data=VALID)
    client.post("/contact", data={**VALID, "category": "suggestion", "subject": "Dark mode"})
    text = runner.invoke(args=["contact", "list"]).output
    assert "[bug] Heatmap missing" in text and "[suggestion] Dark mode" in text
    rows = json.loads(runner.invoke(args=["contact", "list", "--json"]).output)
    assert [r["subject"] for r in rows] == ["Heatmap missing", "Dark mode"]
    assert rows[0]["message"] == VALID["message"]


def test_concurrent_posts_are_all_stored_once(app):
    def post(i):
        app.test_client().post("/contact", data={**VALID, "subject": f"message {i}"})

    threads = [threading.Thread(target=post, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with app.app_context():
        subjects = db.session.scalars(select(ContactMessage.subject)).all()
    assert sorted(subjects) == sorted(f"message {i}" for i in range(20))
