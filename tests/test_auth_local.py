"""Local accounts: the commands, the sign-in form, guessers slowed, sessions that end,
and a disabled account stopped at once, sessions and tokens alike."""

from __future__ import annotations

from datetime import timedelta

import pytest

from auth import accounts, local
from auth.errors import SignInFailed
from auth.local import checked_per_minute
from extensions import db
from studies.models import utcnow_naive

from .conftest import TEST_PASSWORD, signed_in


@pytest.fixture
def lab(app_factory, tiny_model_dir):
    return app_factory(MODEL_DIR=str(tiny_model_dir), AUTH_METHODS="local")


def cli(app, *args, stdin: str | None = None):
    result = app.test_cli_runner().invoke(args=list(args), input=stdin)
    assert result.exit_code == 0, result.output
    return result.output


def login(client, name: str, password: str, next_path: str = "/studies/"):
    return client.post("/login", data={"username": name, "password": password,
                                       "next": next_path})


def test_the_commands_make_list_change_and_disable_accounts(lab):
    out = cli(lab, "users", "create", "ada", "--role", "reader")
    generated = out.strip().splitlines()[-1]
    assert "shown once" in out and len(generated) >= 20
    cli(lab, "users", "create", "bob", "--role", "analyst", "--password-stdin",
        stdin="a long enough password\n")
    cli(lab, "users", "set-role", "ada", "admin")
    cli(lab, "users", "disable", "bob")
    listing = cli(lab, "users", "list")
    assert "ada\tadmin\tlocal\tactive" in listing and "bob\tanalyst\tlocal\tdisabled" in listing
    with lab.app_context():
        assert local.authenticate("ada", generated, lab.extensions["settings"].auth).name == "ada"
        stored = accounts.get("ada").password_hash
    assert stored.startswith("scrypt:") and generated not in stored
    bad = lab.test_cli_runner().invoke(args=["users", "create", "ada", "--role", "reader"])
    assert bad.exit_code != 0 and "exists already" in bad.output
    reset = cli(lab, "users", "reset-password", "ada")
    assert reset.strip().splitlines()[-1] != generated


def test_tokens_are_shown_once_listed_without_secret_and_revoked_at_once(lab):
    cli(lab, "users", "create", "ada", "--role", "reader", "--password-stdin",
        stdin=TEST_PASSWORD + "\n")
    secret = cli(lab, "tokens", "create", "ada", "--expires", "30").strip().splitlines()[-1]
    client = lab.test_client()
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/studies/", headers=headers).status_code == 200
    listing = cli(lab, "tokens", "list")
    assert "ada" in listing and secret not in listing and secret[:10] in listing
    token_id = listing.split("\t")[0]
    cli(lab, "tokens", "revoke", token_id)
    refused = client.get("/api/v1/studies/nope", headers=headers)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith('Bearer realm="lungscan"')
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    assert refused.get_json()["error"]["code"] == "unauthenticated"


def test_sign_in_renews_the_session_and_goes_where_it_was_asked(lab):
    signed_in(lab, role="reader", name="ada")
    client = lab.test_client()
    with client.session_transaction() as session:
        session["planted"] = "by someone else"
    answer = login(client, "ada", TEST_PASSWORD, "/studies/")
    assert answer.status_code == 303 and answer.headers["Location"] == "/studies/"
    with client.session_transaction() as session:
        assert "planted" not in session and session["uid"]
    page = client.get("/studies/")
    assert page.status_code == 200 and "ada" in page.get_data(as_text=True)
    assert page.headers["Cache-Control"] == "no-store"
    assert login(lab.test_client(), "ada", TEST_PASSWORD,
                 "https://evil.example/").headers["Location"] == "/"


def test_every_failed_sign_in_says_the_same(lab):
    signed_in(lab, role="reader", name="ada")
    signed_in(lab, role="reader", name="off")
    cli(lab, "users", "disable", "off")
    answers = [login(lab.test_client(), name, password)
               for name, password in (("ada", "wrong password!"), ("nobody", TEST_PASSWORD),
                                      ("off", TEST_PASSWORD))]
    assert {a.status_code for a in answers} == {401}
    texts = {a.get_data(as_text=True).split('id="login-error">')[1].split("<")[0]
             for a in answers}
    assert texts == {SignInFailed.MESSAGE}


def test_a_guesser_is_slowed_to_a_few_checked_passwords_an_hour(lab):
    signed_in(lab, role="reader", name="ada")
    settings = lab.extensions["settings"].auth
    start = utcnow_naive()
    with lab.app_context():
        for second in range(600):  # one wrong password a second for ten minutes
            with pytest.raises(SignInFailed):
                local.authenticate("ada", f"guess {second}", settings,
                                   now=start + timedelta(seconds=second))
        checked = accounts.get("ada").failed_logins
        # The right password, tried during the wait, fails too: the wait is enforced.
        with pytest.raises(SignInFailed):
            local.authenticate("ada", TEST_PASSWORD, settings, now=start + timedelta(seconds=601))
        waiting_until = accounts.get("ada").next_login_at
        assert local.authenticate("ada", TEST_PASSWORD, settings, now=waiting_until).name == "ada"
    # 3 free tries, then waits of 1, 2, 4 ... 256 s: 12 of 600 tries were checked.
    assert checked == 12
    assert checked_per_minute(settings, minutes=60) < 0.3


def test_sign_in_is_limited_per_address(app_factory):
    lab = app_factory(AUTH_METHODS="local", RATELIMIT_ENABLED=True,
                      LOGIN_RATE_LIMIT="5 per minute")
    statuses = [login(lab.test_client(), "nobody", "wrong password!").status_code
                for _ in range(7)]
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429]


def test_a_disabled_account_is_stopped_at_once_everywhere(lab):
    token = signed_in(lab, role="reader", name="ada")
    browser = lab.test_client()
    assert login(browser, "ada", TEST_PASSWORD).status_code == 303
    assert browser.get("/studies/").status_code == 200
    cli(lab, "users", "disable", "ada")
    assert browser.get("/studies/").status_code == 302  # back to the sign-in page
    assert lab.test_client().get("/studies/", headers={
        "Authorization": f"Bearer {token}"}).status_code == 401
    assert login(lab.test_client(), "ada", TEST_PASSWORD).status_code == 401


def test_sessions_end_when_idle_and_at_sign_out_for_every_copy(lab):
    signed_in(lab, role="reader", name="ada")
    browser = lab.test_client()
    login(browser, "ada", TEST_PASSWORD)
    with browser.session_transaction() as session:
        session["seen_at"] -= 31 * 60  # idle for longer than SESSION_IDLE_MINUTES (30)
    assert browser.get("/studies/").status_code == 302
    login(browser, "ada", TEST_PASSWORD)
    copied = browser.get_cookie("session").value
    assert browser.post("/logout").status_code == 303
    thief = lab.test_client()
    thief.set_cookie("session", copied)
    assert thief.get("/studies/").status_code == 302
    with lab.app_context():
        assert db.session.get(type(accounts.get("ada")), accounts.get("ada").id).signed_out_at
