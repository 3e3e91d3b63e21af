"""The secret key: never a fixed one, a random key made once and kept in the instance.

Sessions and CSRF tokens are signed with it, so a key anyone can read lets anyone forge
them.
"""

from __future__ import annotations

import os
import secrets

from flask import Flask


# Keys that appear in this repository or in tutorials: anyone could forge sessions.
PUBLISHED_SECRET_KEYS = {"test-only-secret", "dev", "secret", "changeme", "change-me"}


def is_placeholder(key) -> bool:
    """A published key, or a template's placeholder left as it is (``<...>``)."""
    text = str(key).strip()
    return text in PUBLISHED_SECRET_KEYS or text[:1] in ("<", "\u2039") \
        or "change-me" in text.lower() or "changeme" in text.lower()


def ensure_secret_key(app: Flask) -> None:
    """Never run with a fixed key: make a random one once and keep it in the instance."""
    configured = app.config.get("SECRET_KEY")
    if configured:
        if is_placeholder(configured) and not app.testing:
            raise RuntimeError("SECRET_KEY is a published example value or a placeholder: "
                               "unset it to get a random key kept in the instance folder, "
                               "or set your own.")
        return
    path = os.path.join(app.instance_path, "secret_key")
    key = read_key(path) or create_key(path)
    app.config["SECRET_KEY"] = key


def read_key(path: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return ""


def create_key(path: str) -> str:
    """Write a new key so that concurrent first starts (several workers) agree on one.

    The key is written to a private temporary file and hard-linked into place: the
    link is atomic and fails when another process won, whose key is then used.
    """
    candidate = secrets.token_hex(32)
    scratch = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(candidate)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(scratch, path)
    except FileExistsError:
        if not read_key(path):  # an empty or blank file left by hand: replace it
            os.replace(scratch, path)
            return candidate
    except OSError:  # a filesystem without hard links: plain rename, last one wins
        os.replace(scratch, path)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
    return read_key(path)
