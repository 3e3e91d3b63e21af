"""Accounts: made and changed by the ``flask users`` commands, or vouched for by the
identity provider at each sign-in. Passwords are kept as scrypt hashes (memory-hard:
32 MiB and a fresh salt per hash, Werkzeug's default)."""

from __future__ import annotations

import secrets

from sqlalchemy import select
from werkzeug.security import check_password_hash, generate_password_hash

from audit import actions, trail
from extensions import db

from .errors import AccountError
from .models import LOCAL, OIDC, User
from .roles import checked_role

MAX_NAME = 64
MIN_PASSWORD = 10
# Checked against when a name is unknown, so that a wrong name costs the same time as
# a wrong password (made once, at first use).
_DUMMY_HASH: list[str] = []


def hash_password(password: str) -> str:
    return generate_password_hash(password, method="scrypt")


def password_matches(user: User | None, password: str) -> bool:
    if user is None or not user.password_hash:
        if not _DUMMY_HASH:
            _DUMMY_HASH.append(hash_password(secrets.token_hex(16)))
        check_password_hash(_DUMMY_HASH[0], password)
        return False
    return check_password_hash(user.password_hash, password)


def new_password() -> str:
    return secrets.token_urlsafe(15)  # 20 characters, 120 bits


def checked_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"A password needs at least {MIN_PASSWORD} characters.")
    return password


def checked_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > MAX_NAME or not name.isprintable() or " " in name:
        raise AccountError(f"A user name is 1 to {MAX_NAME} printable characters, no space.")
    return name


def find(name: str) -> User | None:
    return db.session.scalar(select(User).where(User.name == (name or "").strip()))


def get(name: str) -> User:
    user = find(name)
    if user is None:
        raise AccountError(f"No user is named '{name[:MAX_NAME]}'.")
    return user


def create(name: str, role: str, password: str) -> User:
    name, role = checked_name(name), checked_role(role)
    if find(name) is not None:
        raise AccountError(f"A user named '{name}' exists already.")
    user = User(name=name, role=role, method=LOCAL,
                password_hash=hash_password(checked_password(password)))
    db.session.add(user)
    db.session.commit()
    return user


def all_users() -> list[User]:
    return list(db.session.scalars(select(User).order_by(User.name)))


def set_disabled(name: str, disabled: bool) -> User:
    user = get(name)
    user.disabled = disabled
    db.session.commit()
    return user


def set_role(name: str, role: str) -> User:
    user = get(name)
    user.role = checked_role(role)
    db.session.commit()
    return user


def reset_password(name: str, password: str) -> User:
    user = get(name)
    if user.method != LOCAL:
        raise AccountError("This account signs in with the identity provider: it has no "
                           "password here.")
    user.password_hash = hash_password(checked_password(password))
    user.failed_logins, user.next_login_at = 0, None
    db.session.commit()
    return user


PROVIDER = trail.Actor(None, "identity-provider", None, "oidc")  # its claims made the change


def provider_user(subject: str, name: str, role: str) -> User:
    """The account the identity provider vouches for, made at its first sign-in; its
    role follows the provider's claim at every sign-in and token."""
    user = db.session.scalar(select(User).where(User.subject == subject))
    if user is None:
        base = checked_name((name or "user").replace(" ", "_")[:MAX_NAME - 9])
        taken = find(base) is not None
        user = User(name=f"{base}-{secrets.token_hex(4)}" if taken else base, role=role,
                    method=OIDC, subject=subject)
        db.session.add(user)
        trail.record(actions.ACCOUNT_CHANGED, PROVIDER, change="create", account=user.name,
                     role=role)
    elif user.role != role:
        trail.record(actions.ACCOUNT_CHANGED, PROVIDER, change="set-role",
                     account=user.name, role=role)
        user.role = role
    db.session.commit()
    return user
