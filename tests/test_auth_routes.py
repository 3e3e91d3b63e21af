"""The door, walked: every route of the app times anonymous, reader, analyst, admin and
another user, each answer compared with the route's rule in the policy table."""

from __future__ import annotations

import re

import pytest

from auth import accounts
from auth.policy import OPEN, POLICY, PUBLIC, SIGNED_IN
from auth.roles import rank
from studies import store

from .conftest import signed_in

DEAD_PACS = "http://127.0.0.1:9/dicom-web"  # nothing listens: PACS calls fail fast
IDENTITIES = ("anonymous", "reader", "analyst", "admin", "other")
SIGN_IN_PAGES = ("auth.login", "auth.login_submit", "auth.login_oidc", "auth.oidc_callback",
                 "auth.logout")


def expected_allowed(rule: str, who: str, public_access: bool) -> bool:
    """What the table promises, said again independently of auth.policy.check."""
    role = {"anonymous": None, "other": "reader"}.get(who, who)
    if rule == PUBLIC or (rule == OPEN and public_access):
        return True
    if role is None:
        return False
    return rule in (OPEN, SIGNED_IN) or rank(role) >= rank(rule)


def denied(response) -> bool:
    """The door said no: 401/403, or a page's redirect to the sign-in page."""
    if response.status_code in (301, 302, 303):
        return "/login" in response.headers.get("Location", "") and "next=" in \
            response.headers["Location"]
    if response.status_code not in (401, 403):
        return False
    body = response.get_json(silent=True)
    if body is not None:
        return body["error"]["code"] in ("unauthenticated", "forbidden")
    text = response.get_data(as_text=True)
    return "Sign in to use this" in text or "needs the" in text


def url_for_rule(rule, study_id: str) -> str:
    values = {"study_id": study_id, "study_uid": "1.2.3.4", "index": 0,
              "architecture": "vgg16", "filename": "css/style.css",
              "name": "swagger-ui.css"}
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", lambda m: str(values[m.group(1)]), rule.rule)


@pytest.fixture(params=[True, False], ids=["public", "closed"])
def door(request, app_factory, tiny_model_dir):
    app = app_factory(MODEL_DIR=str(tiny_model_dir), AUTH_METHODS="local",
                      DICOMWEB_URL=DEAD_PACS, DICOMWEB_TIMEOUT_S=2,
                      PUBLIC_ACCESS=request.param)
    tokens = {who: signed_in(app, role={"other": "reader"}.get(who, who), name=who)
              for who in IDENTITIES if who != "anonymous"}
    with app.app_context():
        owner = accounts.get("reader")
        study_id = store.create_study(store.new_study_id(), "ct", "vgg16", False, [], [],
                                      owner_id=owner.id)
    return app, tokens, study_id, request.param


def walk(app, tokens, study_id):
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            for who in IDENTITIES:
                client = app.test_client()
                headers = {"Authorization": f"Bearer {tokens[who]}"} if who in tokens else {}
                response = client.open(url_for_rule(rule, study_id), method=method,
                                       headers=headers)
                yield rule, method, who, response


def test_every_route_answers_as_its_rule_says(door):
    app, tokens, study_id, public_access = door
    checked, wrong = 0, []
    for rule, method, who, response in walk(app, tokens, study_id):
        checked += 1
        policy = POLICY[rule.endpoint]
        allowed = expected_allowed(policy, who, public_access)
        if rule.endpoint in SIGN_IN_PAGES:  # a failed sign-in is not the door
            allowed = True
        if allowed == denied(response):
            wrong.append(f"{method} {rule.rule} as {who}: {response.status_code} "
                         f"(rule {policy})")
    assert wrong == []
    routes = {(r.rule, m) for r in app.url_map.iter_rules() for m in r.methods
              - {"HEAD", "OPTIONS"}}
    assert checked == len(routes) * len(IDENTITIES) and len(routes) >= 30


def test_a_signed_in_users_study_is_theirs_alone(door):
    app, tokens, study_id, _ = door
    for path in (f"/api/v1/studies/{study_id}", f"/studies/{study_id}",
                 f"/api/v1/studies/{study_id}/results.csv"):
        answers = {who: app.test_client().get(
            path, headers={"Authorization": f"Bearer {tokens[who]}"}).status_code
            for who in ("reader", "admin", "other", "analyst")}
        assert answers == {"reader": 200, "admin": 200, "other": 404, "analyst": 404}, path
    gone = app.test_client().delete(f"/api/v1/studies/{study_id}",
                                    headers={"Authorization": f"Bearer {tokens['other']}"})
    assert gone.status_code == 404
    assert app.test_client().get(f"/api/v1/studies/{study_id}", headers={
        "Authorization": f"Bearer {tokens['reader']}"}).status_code == 200


def test_every_route_has_a_rule_and_a_new_one_without_stops_the_app(app):
    from auth.errors import AuthNotConfigured
    from web.access import require_rules

    assert {rule.endpoint for rule in app.url_map.iter_rules()} <= set(POLICY)
    app.add_url_rule("/unruled", "unruled", lambda: "hello")
    with pytest.raises(AuthNotConfigured, match="unruled"):
        require_rules(app)
