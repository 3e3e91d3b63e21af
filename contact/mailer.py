"""Forward stored messages by SMTP when it is configured; failures are retried later.

The database row is written first, so a failed or slow mail server never loses a
message. ``forward_one()`` is the unit of work: the queued ``forward_contact`` job runs
it in whichever worker takes the job; ``flask contact forward`` runs
``forward_pending()`` in the caller.

A row is reserved for its job when it is queued (``reserve``: a ticket in
``claim_token`` and a lease in ``claimed_until``), and claimed again before it is sent:
one conditional UPDATE sets a fresh token, and only the caller whose UPDATE changed the
row sends it, so workers and replicas sharing the database never send a message twice,
even when a job is queued twice. A reservation whose job never ran, or a sender that
died mid-send, leaves a lease that expires; workers' housekeeping (``reserve_due``)
queues such rows again: at least once on a crash, exactly once otherwise. After a
failure the lease is kept as the time of the next retry (exponential back-off), shared
by every worker.
"""

from __future__ import annotations

import logging
import secrets
import smtplib
import ssl
import time
from datetime import datetime, timedelta
from email.message import EmailMessage

from flask import current_app
from sqlalchemy import or_, select, update
from sqlalchemy.exc import DBAPIError

from extensions import db
from jobs.lease import won
from jobs.retry import doubling_delay
from settings import MailSettings, settings_of

from .models import CATEGORIES, ContactMessage, utcnow_aware

log = logging.getLogger(__name__)


def mail() -> MailSettings:
    """The current app's mail settings."""
    return settings_of(current_app).mail


def smtp_configured() -> bool:
    return mail().configured


def one_line(text: str) -> str:
    """A header value: line breaks and other control characters become spaces (a
    header may not hold them, and a row stored before the form refused them must
    still be sent)."""
    return " ".join("".join(" " if ch.isspace() or ord(ch) < 32 or ord(ch) == 127 else ch
                            for ch in text).split())


def build_email(row: ContactMessage) -> EmailMessage:
    config = mail()
    email = EmailMessage()
    email["From"] = config.sender
    email["To"] = config.recipient
    email["Reply-To"] = one_line(row.email)
    email["Subject"] = one_line(f"[{CATEGORIES.get(row.category, row.category)}] "
                                f"{row.subject}")
    email.set_content(
        f"From: {row.name} <{row.email}>\nPhone: {row.phone or '-'}\n"
        f"Received: {row.created_at.isoformat() if row.created_at else '-'}\n\n{row.message}\n"
    )
    return email


def send(email: EmailMessage) -> None:
    config = mail()
    with smtplib.SMTP(config.server, config.port, timeout=10) as smtp:
        if config.use_tls:  # the server's certificate checked, as a browser would
            smtp.starttls(context=ssl.create_default_context(cafile=config.tls_ca_file))
        if config.username:
            smtp.login(config.username, config.password or "")
        smtp.send_message(email)


def retry_delay(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failures (the configured rule)."""
    return doubling_delay(mail().retry_s, attempts, mail().retry_max_s)


def lease_end(now: datetime) -> datetime:
    return now + timedelta(seconds=mail().lease_s)


def new_ticket() -> str:
    """A queued job's ticket: the 'q' tells it from a sender's token (32 hex digits)."""
    return "q" + secrets.token_hex(15)


def claimable(now: datetime, force: bool, ticket: str | None = None):
    """Unsent rows nobody holds, or held for the job with this ``ticket``; ``force``
    also takes rows waiting for their retry (never one mid-send or queued)."""
    free = [ContactMessage.claimed_until.is_(None), ContactMessage.claimed_until < now]
    if force:
        free.append(ContactMessage.claim_token.is_(None))
    if ticket is not None:
        free.append(ContactMessage.claim_token == ticket)
    return ContactMessage.forwarded_at.is_(None), or_(*free)


def claim(row_id: int, *, force: bool = False, ticket: str | None = None) -> str | None:
    """Take the row for one send; the token when this caller won it, else None."""
    now, token = utcnow_aware(), secrets.token_hex(16)
    taken = won(
        update(ContactMessage)
        .where(ContactMessage.id == row_id, *claimable(now, force, ticket))
        .values(claimed_until=lease_end(now), claim_token=token,
                forward_attempts=ContactMessage.forward_attempts + 1))
    return token if taken else None


def reserve(row: ContactMessage) -> str:
    """Hold a new row for the job about to be queued for it; returns the job's ticket."""
    row.claim_token, row.claimed_until = new_ticket(), lease_end(utcnow_aware())
    return row.claim_token


def reserve_due(limit: int = 100) -> list[tuple[int, str]]:
    """Rows that need a job (new rows never queued, a failed send whose retry time came,
    a job or sender that vanished): each reserved by one conditional UPDATE, so among
    several workers sweeping at once only one queues it. Returns (row id, ticket)."""
    if not smtp_configured():
        return []
    now = utcnow_aware()
    due = (*claimable(now, force=False), ContactMessage.forward_attempts < mail().max_attempts)
    row_ids = db.session.scalars(select(ContactMessage.id).where(*due)
                                 .order_by(ContactMessage.id).limit(limit)).all()
    reserved = []
    for row_id in row_ids:
        ticket = new_ticket()
        if won(update(ContactMessage).where(ContactMessage.id == row_id, *due)
               .values(claim_token=ticket, claimed_until=lease_end(now))):
            reserved.append((row_id, ticket))
    return reserved


def settle(row_id: int, token: str, error: Exception | None, attempts: int) -> None:
    """Record the outcome: forwarded, or failed and held until its next retry."""
    row = ContactMessage.id == row_id
    if error is None:
        statement = update(ContactMessage).where(row, ContactMessage.forwarded_at.is_(None)) \
            .values(forwarded_at=utcnow_aware(), claimed_until=None, claim_token=None,
                    last_error=None)
    else:
        retry_at = utcnow_aware() + timedelta(seconds=retry_delay(attempts))
        statement = update(ContactMessage).where(row, ContactMessage.claim_token == token) \
            .values(claimed_until=retry_at, claim_token=None,
                    last_error=f"{type(error).__name__}: {error}"[:300])
    db.session.execute(statement.execution_options(synchronize_session=False))
    db.session.commit()


def forward_one(row_id: int, *, force: bool = False, ticket: str | None = None) -> bool | None:
    """Claim and send one row: True sent, False failed, None sent or held elsewhere."""
    token = claim(row_id, force=force, ticket=ticket)
    if token is None:
        return None
    row = db.session.get(ContactMessage, row_id, populate_existing=True)
    email, attempts = build_email(row), row.forward_attempts
    db.session.commit()  # no transaction stays open during the SMTP exchange
    try:
        send(email)
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("contact message %s not forwarded yet: %s", row_id, type(exc).__name__)
        settle(row_id, token, exc, attempts)
        return False
    record_sent(row_id, token, attempts)
    return True


def record_sent(row_id: int, token: str, attempts: int) -> None:
    """The mail went out: record it, waiting out a database outage for most of the
    lease (a failing try can itself take seconds), because a row left claimed is sent
    again when its lease ends."""
    patience_s = mail().lease_s * 0.8
    deadline, pause = time.monotonic() + patience_s, 0.1
    while True:
        try:
            settle(row_id, token, None, attempts)
            return
        except DBAPIError:
            try:
                db.session.rollback()
            except DBAPIError:
                pass  # the connection is gone; the next try gets another
            if time.monotonic() + pause > deadline:
                raise
            log.warning("contact message %s sent; recording it waits for the database",
                        row_id)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def forward_pending(limit: int = 20, *, force: bool = False) -> tuple[int, int]:
    """Send up to ``limit`` claimable messages. Returns (sent, failed).

    ``force`` (the CLI) also retries rows waiting for their back-off or past
    ``CONTACT_FORWARD_MAX_ATTEMPTS``, never a row another sender holds mid-send.
    """
    if not smtp_configured():
        return 0, 0
    query = select(ContactMessage.id).where(*claimable(utcnow_aware(), force))
    if not force:
        query = query.where(ContactMessage.forward_attempts < mail().max_attempts)
    row_ids = db.session.scalars(query.order_by(ContactMessage.id).limit(limit)).all()
    sent = failed = 0
    for row_id in row_ids:
        outcome = forward_one(row_id, force=force)
        sent += outcome is True
        failed += outcome is False
    return sent, failed
