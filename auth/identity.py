"""Who is asking, as every check sees it: an account and its role, or nobody."""

from __future__ import annotations

from dataclasses import dataclass

from .models import User
from .roles import ADMIN, READER, at_least

ANONYMOUS_METHOD = "anonymous"
SESSION, TOKEN, JWT = "session", "token", "jwt"  # how the caller proved who they are


@dataclass(frozen=True)
class Identity:
    user_id: int | None
    name: str | None
    role: str | None
    method: str

    @property
    def signed_in(self) -> bool:
        return self.user_id is not None

    def has(self, role: str) -> bool:
        return self.signed_in and at_least(self.role, role)

    @property
    def is_admin(self) -> bool:
        return self.has(ADMIN)

    @property
    def reads_pacs(self) -> bool:
        return self.has(READER)


ANONYMOUS = Identity(None, None, None, ANONYMOUS_METHOD)


def identity_of(user: User, method: str) -> Identity:
    return Identity(user.id, user.name, user.role, method)
