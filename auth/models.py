"""Accounts and personal API tokens.

An account is local (a password hash) or comes from the identity provider (its
subject); its role is stored here and read on every request, so a changed role or a
disabled account takes effect at once, for sessions and tokens alike. A token is kept
only as a SHA-256 digest: its secret is shown once, when it is made.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from extensions import db
from studies.models import utcnow_naive

LOCAL, OIDC = "local", "oidc"


class User(db.Model):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(8), default=LOCAL)  # local or oidc
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)
    # The identity provider's issuer and subject ("iss sub"), for accounts it vouches for.
    subject: Mapped[str | None] = mapped_column(String(512), unique=True, nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow_naive)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # Failed password sign-ins in a row, and when the next try will be checked.
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    next_login_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # Sessions that began before this (seconds since the epoch) are over: sign-out.
    signed_out_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ApiToken(db.Model):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256, hex
    hint: Mapped[str] = mapped_column(String(12))  # the secret's first characters
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow_naive)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
