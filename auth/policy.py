"""Who may use each route: one table, read before every request.

``PUBLIC``: anyone, always. ``OPEN``: anyone while ``PUBLIC_ACCESS`` is true (the
single-image demo, anonymous studies), else any signed-in user. ``SIGNED_IN``: any
signed-in user. A role: that role or a higher one. A route that is not in the table
stops the app at start, so none can be added without a rule.
"""

from __future__ import annotations

from .errors import Forbidden, NotSignedIn
from .identity import Identity
from .roles import ADMIN, ANALYST, READER

PUBLIC, OPEN, SIGNED_IN = "public", "open", "signed-in"

POLICY: dict[str, str] = {
    "static": PUBLIC,
    "health.healthz": PUBLIC,
    "health.readyz": PUBLIC,
    "inference_protocol.live": PUBLIC,
    "inference_protocol.ready": PUBLIC,
    "auth.login": PUBLIC,
    "auth.login_submit": PUBLIC,
    "auth.login_oidc": PUBLIC,
    "auth.oidc_callback": PUBLIC,
    "auth.logout": PUBLIC,
    "pages.index": OPEN,
    "pages.analyse": OPEN,
    "pages.about": OPEN,
    "contact.contact_form": OPEN,
    "contact.contact_submit": OPEN,
    "apidocs.api_docs": OPEN,
    "apidocs.swagger_ui_asset": OPEN,
    "api.openapi": OPEN,
    "api.list_models": OPEN,
    "api.predict": OPEN,
    "inference_protocol.model_metadata": OPEN,
    "inference_protocol.model_ready": OPEN,
    "inference_protocol.infer": OPEN,
    "studies_api.submit": OPEN,
    "studies_api.status": OPEN,  # and the study's own rule: its owner, or readers for PACS
    "studies_api.results_csv": OPEN,
    "studies_api.delete": OPEN,
    "study_pages.new_study": OPEN,
    "study_pages.submit": OPEN,
    "study_pages.study": OPEN,
    "study_pages.plot": OPEN,
    "study_pages.image": OPEN,
    "study_pages.heatmap": OPEN,
    "study_pages.report": OPEN,
    "study_pages.delete": OPEN,
    "study_pages.mine": SIGNED_IN,
    "pacs_pages.pacs_list": READER,
    "pacs_api.studies": READER,
    "pacs_pages.analyse": ANALYST,
    "pacs_api.analyse": ANALYST,
    "studies_api.retry_write_back": ANALYST,  # and the study's own rule (404 otherwise)
    "study_pages.retry_write_back": ANALYST,
    "audit_pages.audit_list": ADMIN,
    "audit_pages.audit_csv": ADMIN,
}

RULE_TEXT = {
    PUBLIC: "anyone",
    OPEN: "anyone while PUBLIC_ACCESS is true, else signed in",
    SIGNED_IN: "signed in",
    READER: "reader, analyst or admin",
    ANALYST: "analyst or admin",
    ADMIN: "admin",
}


def check(rule: str, identity: Identity, public_access: bool) -> None:
    """Nothing when ``identity`` may go on; NotSignedIn or Forbidden otherwise."""
    if rule == PUBLIC or (rule == OPEN and public_access):
        return
    if not identity.signed_in:
        raise NotSignedIn("Sign in to use this.")
    if rule in (OPEN, SIGNED_IN) or identity.has(rule):
        return
    raise Forbidden(f"This needs the {rule} role; you are signed in as "
                    f"{identity.role or 'a user with no role'}.")


def unruled(endpoints) -> list[str]:
    """The endpoints that the table has no rule for."""
    return sorted(e for e in endpoints if e not in POLICY)
