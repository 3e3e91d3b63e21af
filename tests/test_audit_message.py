"""Each audit event as a DICOM audit message (PS3.15 A.5) that the RELAX NG schema of
PS3.15 A.5.1 (audit/dicom-audit-message.rng) accepts, checked with lxml, in an RFC 5424
frame with RFC 5425's length prefix; and the repository settings that are refused."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from lxml import etree

from audit import actions
from audit.dicom_message import KINDS, AuditSource, audit_message
from audit.models import AuditEvent
from audit.syslog import SyslogTarget, frame

from .syslog_server import body_of

SCHEMA = etree.RelaxNG(etree.parse(str(Path(__file__).parents[1] / "audit"
                                       / "dicom-audit-message.rng")))
SOURCE = AuditSource(source_id="lungscan", site_id="St Example", host="ws1.example")
# One event of each action, with the details its real caller records.
EXAMPLES = {
    actions.LOGIN: {}, actions.LOGOUT: {}, actions.LOGIN_FAILED: {},
    actions.PACS_QUERY: {"modality": "ct", "patient_fields": False, "studies": 3},
    actions.PACS_STUDY_OPENED: {"pacs_study_uid": "1.2.826.0.1.3680043.8.498.1", "images": 4},
    actions.ANALYSIS_STARTED: {"source": "upload", "modality": "ct", "model": "vgg16",
                               "images": 3},
    actions.STUDY_VIEWED: {"pacs_study_uid": "1.2.826.0.1.3680043.8.498.1"},
    actions.EXPORTED: {"format": "audit-csv", "filters": {"action": "login"}},
    actions.DELETED: {"reason": "retention"},
    actions.WRITE_BACK_DONE: {"instances": 2}, actions.WRITE_BACK_FAILED: {"attempt": 3},
    actions.ACCOUNT_CHANGED: {"change": "set-role", "account": "bob", "role": "admin"},
    actions.TOKEN_CHANGED: {"change": "revoke", "token": 7},
    actions.MODEL_INSTALLED: {"modality": "ct", "model": "vgg16"},
    actions.MODEL_REMOVED: {"modality": "xray", "model": "resnet50"},
    actions.APP_STARTED: {"process": "web", "pid": 41}, actions.APP_STOPPED: {"process": "web"},
    actions.DICOM_RECEIVED: {"instances": 20, "studies": 1},
}


def event(action: str, seq: int = 1, outcome: str = "success", system: bool = False,
          **target) -> AuditEvent:
    study = None if action in (actions.LOGIN, actions.APP_STARTED) else "3f2a9c01"
    return AuditEvent(
        seq=seq, at=datetime(2026, 12, 4, 21, 30, 5, 123456),
        actor_id=None if system else 12, actor_name="system" if system else "alice",
        actor_role=None if system else "analyst", actor_method="system" if system else "session",
        client=None if system else "10.1.2.3", action=action, target=target,
        study=target.get("pacs_study_uid") or study, outcome=outcome,
        prev_hash="0" * 64, hash="1" * 64)


def valid(message: bytes) -> etree._Element:
    """The message parsed, once the schema accepted it (else the schema's reasons)."""
    document = etree.fromstring(message)
    assert SCHEMA.validate(document), SCHEMA.error_log
    return document


def test_every_action_has_an_event_code_and_an_example():
    assert set(KINDS) == set(actions.ALL) == set(EXAMPLES)


@pytest.mark.parametrize("action", sorted(actions.ALL))
@pytest.mark.parametrize("who", ["person", "system"])
def test_each_action_makes_a_message_the_schema_accepts(action, who):
    document = valid(audit_message(event(action, system=who == "system",
                                         **EXAMPLES[action]), SOURCE))
    identification = document.find("EventIdentification")
    assert identification.find("EventID").get("csd-code") == KINDS[action].event_id.value
    assert identification.get("EventDateTime") == "2026-12-04T21:30:05.123456Z"
    requestors = [p for p in document.findall("ActiveParticipant")
                  if p.get("UserIsRequestor") == "true"]
    assert [p.get("UserID") for p in requestors] == (
        ["lungscan"] if who == "system" else ["alice"])
    assert document.find("AuditSourceIdentification").get("AuditEnterpriseSiteID") == \
        "St Example"


def test_a_study_message_names_the_pacs_study_and_keeps_the_details():
    document = valid(audit_message(event(actions.PACS_STUDY_OPENED, system=True,
                                         **EXAMPLES[actions.PACS_STUDY_OPENED]), SOURCE))
    study = document.find("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == "1.2.826.0.1.3680043.8.498.1"
    assert study.find("ParticipantObjectIDTypeCode").get("csd-code") == "110180"
    assert study.find("ParticipantObjectDetail").get("type") == "images"
    application = document.find("ActiveParticipant")
    assert application.find("RoleIDCode").get("csd-code") == "110152"  # it receives them
    assert application.get("NetworkAccessPointID") == "ws1.example"


def test_outcomes_and_a_failed_sign_in_are_coded_as_dicom_asks():
    failed = valid(audit_message(event(actions.LOGIN_FAILED, outcome="failure"), SOURCE))
    assert failed.find("EventIdentification").get("EventOutcomeIndicator") == "4"
    assert failed.find("EventIdentification/EventTypeCode").get("csd-code") == "110122"
    write = valid(audit_message(event(actions.WRITE_BACK_FAILED, outcome="failure",
                                      system=True, attempt=2), SOURCE))
    assert write.find("EventIdentification").get("EventOutcomeIndicator") == "8"
    assert write.find("EventIdentification/EventOutcomeDescription").text


def test_the_schema_refuses_a_message_that_breaks_it():
    document = etree.fromstring(audit_message(event(actions.LOGIN), SOURCE))
    document.find("EventIdentification").set("EventOutcomeIndicator", "3")
    assert not SCHEMA.validate(document)
    document = etree.fromstring(audit_message(event(actions.LOGIN), SOURCE))
    document.remove(document.find("AuditSourceIdentification"))
    assert not SCHEMA.validate(document)


def test_a_frame_is_rfc_5425_octet_counted_rfc_5424():
    message = audit_message(event(actions.LOGIN_FAILED, outcome="failure"), SOURCE)
    framed = frame(message, 42, datetime(2026, 12, 4, 1, 2, 3), "4", "ws 1\x00", "lungscan", 7)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(rest)
    header, body = body_of(rest)
    assert int(header.group(1)) == 10 * 8 + 4  # authpriv, warning
    assert header.group(3) == b"ws1" and header.group(6) == b"42"
    assert body == message


@pytest.mark.parametrize("url", ["tcp://arr:514", "udp://arr:514", "arr:6514", "tls://"])
def test_only_syslog_over_tls_is_accepted(url):
    with pytest.raises(ValueError, match="tls://"):
        SyslogTarget.from_url(url)
    assert SyslogTarget.from_url("tls://arr.example").port == 6514


def test_a_client_certificate_needs_its_key(app_factory):
    with pytest.raises(ValueError, match="go together"):
        app_factory(AUDIT_SYSLOG_URL="tls://arr:6514", AUDIT_SYSLOG_CERT_FILE="/c.pem")
