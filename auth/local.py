"""Password sign-in, slowed for guessers.

Each account allows a few wrong passwords in a row; after those, each further try is
checked only once a wait has passed, the wait doubling per failure up to a maximum
(``LOGIN_FREE_ATTEMPTS``, ``LOGIN_DELAY_S``, ``LOGIN_DELAY_MAX_S``). A try during the
wait fails without its password being checked. The web edge adds a limit per client
address. Every failure says the same thing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from extensions import db
from studies.models import utcnow_naive

from . import accounts
from .errors import SignInFailed
from .models import LOCAL, User
from .settings import AuthSettings


def wait_after(failures: int, settings: AuthSettings) -> float:
    """Seconds before the next try is checked, after ``failures`` wrong ones in a row."""
    extra = failures - settings.login_free_attempts
    if extra < 0:
        return 0.0
    return min(settings.login_delay_max_s, settings.login_delay_s * 2 ** min(extra, 30))


def authenticate(name: str, password: str, settings: AuthSettings,
                 now: datetime | None = None) -> User:
    """The account, or SignInFailed: wrong name or password, disabled, or waiting."""
    now = now or utcnow_naive()
    user = accounts.find(name)
    if user is not None and user.method != LOCAL:
        user = None  # the provider's accounts have no password here
    if user is not None and user.next_login_at is not None and now < user.next_login_at:
        raise SignInFailed()
    if not accounts.password_matches(user, password or ""):
        if user is not None:
            user.failed_logins += 1
            wait = wait_after(user.failed_logins, settings)
            user.next_login_at = now + timedelta(seconds=wait) if wait else None
            db.session.commit()
        raise SignInFailed()
    if user.disabled:
        raise SignInFailed()
    user.failed_logins, user.next_login_at, user.last_login_at = 0, None, now
    db.session.commit()
    return user


def checked_per_minute(settings: AuthSettings, minutes: float = 60) -> float:
    """How many passwords a guesser gets checked per minute, on average over the first
    ``minutes`` minutes of trying one account as fast as the waits allow."""
    clock, failures, checked = 0.0, 0, 0
    while clock < minutes * 60:
        checked += 1
        failures += 1
        clock += max(wait_after(failures, settings), 1e-3)
    return checked / minutes
