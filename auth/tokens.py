"""Personal API tokens: a random secret shown once, kept as its SHA-256 digest (the
secret has 256 bits, so a fast hash is enough), revocable, with an optional expiry."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import select

from extensions import db
from studies.models import utcnow_naive

from . import accounts
from .errors import AccountError
from .models import ApiToken, User

PREFIX = "lst_"  # says what the string is when it turns up in a log or a scanner


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


def create(name: str, days: float | None = None) -> tuple[ApiToken, str]:
    """A new token for the user; (its row, its secret). The secret is not kept."""
    user = accounts.get(name)
    if days is not None and days <= 0:
        raise AccountError("--expires takes a number of days above 0.")
    secret = PREFIX + secrets.token_urlsafe(32)
    expires = utcnow_naive() + timedelta(days=days) if days else None
    token = ApiToken(user_id=user.id, digest=digest(secret), hint=secret[:10],
                     expires_at=expires)
    db.session.add(token)
    db.session.commit()
    return token, secret


def listing() -> list[tuple[ApiToken, User]]:
    return list(db.session.execute(select(ApiToken, User).join(User, User.id == ApiToken.user_id)
                                   .order_by(ApiToken.id)).tuples())


def revoke(token_id: int) -> ApiToken:
    token = db.session.get(ApiToken, token_id)
    if token is None:
        raise AccountError(f"No token has the id {token_id}.")
    if token.revoked_at is None:
        token.revoked_at = utcnow_naive()
        db.session.commit()
    return token


def holder(secret: str) -> User | None:
    """The enabled user whose live token this is; None for anything else."""
    if not secret.startswith(PREFIX):
        return None
    found = db.session.execute(select(ApiToken, User).join(User, User.id == ApiToken.user_id)
                               .where(ApiToken.digest == digest(secret))).first()
    if found is None:
        return None
    token, user = found
    now = utcnow_naive()
    if token.revoked_at is not None or user.disabled:
        return None
    if token.expires_at is not None and token.expires_at <= now:
        return None
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=5):
        token.last_used_at = now  # coarse, so that a busy client writes rarely
        db.session.commit()
    return user
