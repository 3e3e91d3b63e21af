"""``flask users ...`` and ``flask tokens ...``: local accounts and personal API tokens."""

from __future__ import annotations

import sys

import click
from flask.cli import AppGroup

from audit import actions, trail

from . import accounts, tokens
from .errors import AccountError
from .roles import ROLES

users_cli = AppGroup("users", help="Local accounts: create, list, disable, roles, passwords.")
tokens_cli = AppGroup("tokens", help="Personal API tokens: create, list, revoke.")


def fail_on_account_error(run, action: str = actions.ACCOUNT_CHANGED, **target):
    """Run one change, recorded in the audit trail with it (a refused one as a failure)."""
    try:
        with trail.audited(action, trail.command_line(), **target):
            return run()
    except AccountError as exc:
        raise click.ClickException(exc.message) from exc


def read_password(from_stdin: bool) -> tuple[str, bool]:
    """(password, generated): one line from stdin, asked for at a terminal, or made."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n"), False
    if sys.stdin.isatty():
        entered = click.prompt("Password (empty: generate one)", hide_input=True,
                               confirmation_prompt=True, default="", show_default=False)
        if entered:
            return entered, False
    return accounts.new_password(), True


def say_password(password: str, generated: bool) -> None:
    if generated:
        click.echo("Password (shown once, keep it safe):")
        click.echo(password)


@users_cli.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
def create_user(name: str, role: str, password_stdin: bool):
    """Make a local account (a password is generated and shown once unless given)."""
    password, generated = read_password(password_stdin)
    user = fail_on_account_error(lambda: accounts.create(name, role, password),
                                 change="create", account=name, role=role)
    click.echo(f"Created {user.name} ({user.role}).")
    say_password(password, generated)


@users_cli.command("list")
def list_users():
    """Print every account: name, role, how it signs in, whether it is disabled."""
    for user in accounts.all_users():
        state = "disabled" if user.disabled else "active"
        last = user.last_login_at.isoformat(timespec="seconds") if user.last_login_at else "-"
        click.echo(f"{user.name}\t{user.role}\t{user.method}\t{state}\tlast sign-in {last}")


@users_cli.command("disable")
@click.argument("name")
def disable_user(name: str):
    """Stop an account at once: its sessions and tokens no longer work."""
    user = fail_on_account_error(lambda: accounts.set_disabled(name, True),
                                 change="disable", account=name)
    click.echo(f"Disabled {user.name}.")


@users_cli.command("enable")
@click.argument("name")
def enable_user(name: str):
    user = fail_on_account_error(lambda: accounts.set_disabled(name, False),
                                 change="enable", account=name)
    click.echo(f"Enabled {user.name}.")


@users_cli.command("set-role")
@click.argument("name")
@click.argument("role", type=click.Choice(ROLES))
def set_role(name: str, role: str):
    user = fail_on_account_error(lambda: accounts.set_role(name, role),
                                 change="set-role", account=name, role=role)
    click.echo(f"{user.name} is now {user.role}.")


@users_cli.command("reset-password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
def reset_password(name: str, password_stdin: bool):
    """Set a new password (generated and shown once unless given)."""
    password, generated = read_password(password_stdin)
    user = fail_on_account_error(lambda: accounts.reset_password(name, password),
                                 change="reset-password", account=name)
    click.echo(f"New password set for {user.name}.")
    say_password(password, generated)


@tokens_cli.command("create")
@click.argument("name")
@click.option("--expires", "days", type=float, default=None, help="Days until it expires.")
def create_token(name: str, days: float | None):
    """Make a token for NAME; the token alone is printed on the last line, once."""
    token, secret = fail_on_account_error(lambda: tokens.create(name, days), actions.TOKEN_CHANGED,
                                          change="create", account=name)
    expiry = token.expires_at.isoformat(timespec="seconds") if token.expires_at else "never"
    click.echo(f"Token {token.id} for {name}, expires {expiry}. Shown once:")
    click.echo(secret)


@tokens_cli.command("list")
def list_tokens():
    """Every token without its secret: id, user, start of the secret, state."""
    for token, user in tokens.listing():
        state = "revoked" if token.revoked_at else (
            f"expires {token.expires_at.isoformat(timespec='seconds')}" if token.expires_at
            else "no expiry")
        click.echo(f"{token.id}\t{user.name}\t{token.hint}...\t{state}")


@tokens_cli.command("revoke")
@click.argument("token_id", type=int)
def revoke_token(token_id: int):
    token = fail_on_account_error(lambda: tokens.revoke(token_id), actions.TOKEN_CHANGED,
                                  change="revoke", token=token_id)
    click.echo(f"Revoked token {token.id}.")
