"""Forward stored messages by SMTP when it is configured; failures are retried later.

The database row is written first, so a failed or slow mail server never loses a
message: rows without ``forwarded_at`` are retried here and by ``flask contact forward``.
"""

from __future__ import annotations

import logging
import smtplib
from email.message import EmailMessage

from flask import current_app
from sqlalchemy import select

from extensions import db

from .models import CATEGORIES, ContactMessage, utcnow

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 10


def smtp_configured() -> bool:
    config = current_app.config
    return bool(config.get("MAIL_SERVER") and config.get("CONTACT_RECIPIENT"))


def build_email(row: ContactMessage) -> EmailMessage:
    config = current_app.config
    email = EmailMessage()
    email["From"] = config["MAIL_SENDER"]
    email["To"] = config["CONTACT_RECIPIENT"]
    email["Reply-To"] = row.email
    email["Subject"] = f"[{CATEGORIES.get(row.category, row.category)}] {row.subject}"
    email.set_content(
        f"From: {row.name} <{row.email}>\nPhone: {row.phone or '-'}\n"
        f"Received: {row.created_at.isoformat() if row.created_at else '-'}\n\n{row.message}\n"
    )
    return email


def send(email: EmailMessage) -> None:
    config = current_app.config
    with smtplib.SMTP(config["MAIL_SERVER"], int(config["MAIL_PORT"]), timeout=10) as smtp:
        if config.get("MAIL_USE_TLS"):
            smtp.starttls()
        if config.get("MAIL_USERNAME"):
            smtp.login(config["MAIL_USERNAME"], config.get("MAIL_PASSWORD") or "")
        smtp.send_message(email)


def forward_pending(limit: int = 20) -> tuple[int, int]:
    """Try to send up to ``limit`` unforwarded messages. Returns (sent, failed)."""
    if not smtp_configured():
        return 0, 0
    rows = db.session.scalars(
        select(ContactMessage)
        .where(ContactMessage.forwarded_at.is_(None),
               ContactMessage.forward_attempts < MAX_ATTEMPTS)
        .order_by(ContactMessage.id).limit(limit)).all()
    sent = failed = 0
    for row in rows:
        row.forward_attempts += 1
        try:
            send(build_email(row))
        except (OSError, smtplib.SMTPException) as exc:
            row.last_error = f"{type(exc).__name__}: {exc}"[:300]
            failed += 1
            log.warning("contact message %s not forwarded yet: %s", row.id, type(exc).__name__)
        else:
            row.forwarded_at = utcnow()
            row.last_error = None
            sent += 1
        db.session.commit()
    return sent, failed
