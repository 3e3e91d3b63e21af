"""The tool's roles, each including the one before, and the mapping from an identity
provider's role names to them."""

from __future__ import annotations

from .errors import AccountError

READER, ANALYST, ADMIN = "reader", "analyst", "admin"
ROLES = (READER, ANALYST, ADMIN)


def rank(role: str | None) -> int:
    """0 for no role; 1, 2, 3 for reader, analyst, admin."""
    return ROLES.index(role) + 1 if role in ROLES else 0


def at_least(role: str | None, needed: str) -> bool:
    return rank(role) >= rank(needed)


def checked_role(role: str) -> str:
    role = (role or "").strip().lower()
    if role not in ROLES:
        raise AccountError(f"Unknown role '{role[:20]}': use one of {', '.join(ROLES)}.")
    return role


def parse_role_map(text: str | None) -> dict[str, str]:
    """``their-name=reader,other=admin`` -> {their-name: reader, ...}. Empty: the tool's
    own role names map to themselves."""
    mapping = {role: role for role in ROLES}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        theirs, sep, ours = item.partition("=")
        if not sep or not theirs.strip():
            raise ValueError(f"OIDC_ROLE_MAP: '{item.strip()}' is not their-name=role")
        mapping[theirs.strip()] = checked_role(ours)
    return mapping


def role_from_claim(value, role_map: dict[str, str]) -> str | None:
    """The highest of the tool's roles that the claim's values map to (a list, or one
    string, or space-separated names); None when none does."""
    if isinstance(value, str):
        names = value.split()
    elif isinstance(value, (list, tuple)):
        names = [v for v in value if isinstance(v, str)]
    else:
        names = []
    mapped = [role_map[name] for name in names if name in role_map]
    return max(mapped, key=rank) if mapped else None
