"""Sign-in and sign-out pages: the local account form, the identity provider's
sign-in (OpenID Connect), and sign-out (at the provider too, for its sign-ins)."""

from __future__ import annotations

from contextlib import nullcontext
from urllib.parse import urlsplit

from flask import Blueprint, redirect, render_template, request, session, url_for
from flask_wtf import FlaskForm
from wtforms import HiddenField, PasswordField, StringField
from wtforms.validators import DataRequired, Length

from audit import actions, trail
from audit.trail import Actor
from auth import local, oidc, sessions
from auth.errors import SignInFailed
from auth.models import LOCAL, OIDC
from extensions import limiter

from .access import actor, current_identity
from .services import settings

bp = Blueprint("auth", __name__)

NEXT_KEY = "login_next"


class LoginForm(FlaskForm):
    username = StringField("User name", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])
    next = HiddenField()


class LogoutForm(FlaskForm):
    pass


def safe_next(target: str | None) -> str:
    """Only a path on this site: an open redirect would lend the site's name to phishing."""
    target = (target or "").strip()
    parts = urlsplit(target)
    if not target.startswith("/") or target.startswith("//") or parts.scheme or parts.netloc \
            or "\\" in target:
        return url_for("pages.index")
    return target


def signed_in(user, via: str, id_token: str | None = None):
    """Start the session once its sign-in is recorded."""
    trail.record_now(actions.LOGIN, Actor(user.id, user.name, user.role, via,
                                          request.remote_addr))
    sessions.start(user, via, id_token)


def sign_in_failed(form: LoginForm, via: str, error: SignInFailed):
    name = (form.username.data or "-") if via == LOCAL else "-"
    trail.record_now(actions.LOGIN_FAILED, Actor(None, name[:64], None, via,
                                                 request.remote_addr), trail.FAILURE)
    return render_login(form, error.message, 401)


def login_rate_limit() -> str:
    return settings().auth.login_rate_limit


def render_login(form: LoginForm, error: str | None = None, status: int = 200):
    methods = settings().auth.methods
    return render_template("login.html", form=form, error=error, local=LOCAL in methods,
                           oidc=OIDC in methods), status


@bp.get("/login")
def login():
    form = LoginForm(next=safe_next(request.args.get("next")))
    if not settings().auth.methods:
        return render_login(form, "Sign-in is not set up on this site.", 404)
    return render_login(form)


@bp.post("/login")
@limiter.limit(login_rate_limit)
def login_submit():
    form = LoginForm()
    auth = settings().auth
    if LOCAL not in auth.methods:
        return render_login(form, "This site has no local accounts.", 404)
    if not form.validate_on_submit():
        return render_login(form, SignInFailed.MESSAGE, 401)
    try:
        user = local.authenticate(form.username.data, form.password.data, auth)
    except SignInFailed as exc:
        return sign_in_failed(form, LOCAL, exc)
    signed_in(user, LOCAL)
    return redirect(safe_next(form.next.data), 303)


@bp.get("/login/oidc")
def login_oidc():
    if OIDC not in settings().auth.methods:
        return render_login(LoginForm(), "This site has no identity provider set up.", 404)
    session[NEXT_KEY] = safe_next(request.args.get("next"))
    return oidc.start_sign_in(url_for("auth.oidc_callback", _external=True))


@bp.get("/login/oidc/callback")
def oidc_callback():
    if OIDC not in settings().auth.methods:
        return render_login(LoginForm(), "This site has no identity provider set up.", 404)
    target = safe_next(session.get(NEXT_KEY))
    try:
        user, id_token = oidc.finish_sign_in(settings().auth.oidc)
    except SignInFailed as exc:
        return sign_in_failed(LoginForm(), OIDC, exc)
    signed_in(user, OIDC, id_token)
    return redirect(target, 303)


@bp.post("/logout")
def logout():
    form = LogoutForm()
    auth = settings().auth
    via, id_token = None, None
    if form.validate_on_submit():
        signed_in_now = current_identity().signed_in
        with trail.audited(actions.LOGOUT, actor()) if signed_in_now else nullcontext():
            via, id_token = sessions.end()
    at_provider = oidc.end_session_url(id_token, url_for("auth.login", _external=True),
                                       auth.oidc) if via == OIDC and auth.oidc else None
    if at_provider:  # a page that goes on by itself, not a redirect: see signed_out.html
        return render_template("signed_out.html", url=at_provider)
    return redirect(url_for("auth.login") if auth.methods else url_for("pages.index"), 303)
