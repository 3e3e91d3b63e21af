"""Accounts for the real server and signing in through its real login page."""

from __future__ import annotations

import subprocess
import sys
from urllib.parse import quote

from ..server import ROOT, LiveServer


def flask_command(server: LiveServer, *args: str, stdin: str | None = None) -> str:
    """Run ``flask ARGS`` with the server's environment (its instance folder and so
    its database); its standard output. A failure fails the test with the output."""
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "app", *args], cwd=ROOT,
                          env=server.env, input=stdin, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"flask {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def create_account(server: LiveServer, name: str, role: str, password: str) -> None:
    """A local account on that server, made as an administrator would: the command."""
    flask_command(server, "users", "create", name, "--role", role, "--password-stdin",
                  stdin=password + "\n")


def sign_in(page, base_url: str, name: str, password: str, next_path: str = "/") -> None:
    """Sign in through the login page; returns on the ``next_path`` page, signed in."""
    base_url = base_url.rstrip("/")
    page.goto(f"{base_url}/login?next={quote(next_path, safe='/')}")
    page.fill("#username", name)
    page.fill("#password", password)
    with page.expect_navigation():
        page.locator("#login-form button[type=submit]").click()
    assert page.url.split("?", 1)[0] == base_url + next_path.split("?", 1)[0], page.url
    assert page.locator("#account-name").inner_text() == name
    assert page.locator("#sign-out").is_visible()
