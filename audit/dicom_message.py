"""One audit event as a DICOM audit message (PS3.15 Annex A.5, the RFC 3881-derived XML).

An Audit Record Repository reads these from any DICOM product: the event (code from
PS3.16 CID 400, with its type from CID 401/403/404), who asked (an account, a command
line user or the application), the application itself, and what it was about (a PACS
study by its StudyInstanceUID, a study of this tool by its id's prefix, an account, a
token, a model). The message holds what the trail holds and nothing more: no patient
name or ID is kept here, so none is sent.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

from . import actions
from .models import AuditEvent

DCM, RFC3881, LOCAL = "DCM", "RFC-3881", "LUNGSCAN"


@dataclass(frozen=True)
class Code:
    value: str
    meaning: str
    scheme: str = DCM

    def attributes(self) -> dict[str, str]:
        return {"csd-code": self.value, "codeSystemName": self.scheme,
                "originalText": self.meaning}


@dataclass(frozen=True)
class EventKind:
    event_id: Code
    type_code: Code | None
    action_code: str  # C(reate), R(ead), U(pdate), D(elete), E(xecute)


@dataclass(frozen=True)
class AuditSource:
    """This installation as the repository knows it."""

    source_id: str  # AuditSourceID: the application on this machine
    site_id: str | None  # AuditEnterpriseSiteID: the hospital, when set
    host: str  # the machine's name (the application's network access point)


APPLICATION_ACTIVITY = Code("110100", "Application Activity")
AUDIT_LOG_USED = Code("110101", "Audit Log Used")
INSTANCES_ACCESSED = Code("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", "DICOM Instances Transferred")
STUDY_DELETED = Code("110105", "DICOM Study Deleted")
EXPORT = Code("110106", "Export")
IMPORT = Code("110107", "Import")
QUERY = Code("110112", "Query")
SECURITY_ALERT = Code("110113", "Security Alert")
USER_AUTHENTICATION = Code("110114", "User Authentication")
LOGIN, LOGOUT = Code("110122", "Login"), Code("110123", "Logout")
USER_ATTRIBUTES_CHANGED = Code("110137", "User Security Attributes Changed")
SOFTWARE_CONFIGURATION = Code("110131", "Software Configuration")

KINDS = {
    actions.LOGIN: EventKind(USER_AUTHENTICATION, LOGIN, "E"),
    actions.LOGIN_FAILED: EventKind(USER_AUTHENTICATION, LOGIN, "E"),
    actions.LOGOUT: EventKind(USER_AUTHENTICATION, LOGOUT, "E"),
    actions.PACS_QUERY: EventKind(QUERY, None, "E"),
    # The PACS study's images come to this tool (it did not hold them before): create.
    actions.PACS_STUDY_OPENED: EventKind(INSTANCES_TRANSFERRED, None, "C"),
    actions.ANALYSIS_STARTED: EventKind(INSTANCES_ACCESSED, None, "C"),
    actions.STUDY_VIEWED: EventKind(INSTANCES_ACCESSED, None, "R"),
    actions.EXPORTED: EventKind(EXPORT, None, "R"),
    actions.DELETED: EventKind(STUDY_DELETED, None, "D"),
    # The report and heatmaps are new instances in the PACS: create.
    actions.WRITE_BACK_DONE: EventKind(INSTANCES_TRANSFERRED, None, "C"),
    actions.WRITE_BACK_FAILED: EventKind(INSTANCES_TRANSFERRED, None, "C"),
    actions.ACCOUNT_CHANGED: EventKind(SECURITY_ALERT, USER_ATTRIBUTES_CHANGED, "E"),
    actions.TOKEN_CHANGED: EventKind(SECURITY_ALERT, USER_ATTRIBUTES_CHANGED, "E"),
    actions.MODEL_INSTALLED: EventKind(SECURITY_ALERT, SOFTWARE_CONFIGURATION, "E"),
    actions.MODEL_REMOVED: EventKind(SECURITY_ALERT, SOFTWARE_CONFIGURATION, "E"),
    actions.DICOM_RECEIVED: EventKind(IMPORT, None, "C"),
    actions.APP_STARTED: EventKind(APPLICATION_ACTIVITY, Code("110120", "Application Start"),
                                   "E"),
    actions.APP_STOPPED: EventKind(APPLICATION_ACTIVITY, Code("110121", "Application Stop"),
                                   "E"),
}
OUTCOMES = {"success": "0", "denied": "4", "failure": "8"}  # 4 minor, 8 serious failure
LOGIN_OUTCOMES = {"failure": "4", "denied": "4"}  # a wrong password is a minor failure

APPLICATION_ROLE = Code("110150", "Application")
SOURCE_ROLE, DESTINATION_ROLE = Code("110153", "Source Role ID"), Code("110152",
                                                                      "Destination Role ID")
# Where this application stands in a transfer: images come in, reports go out.
APPLICATION_ROLES = {actions.PACS_STUDY_OPENED: DESTINATION_ROLE,
                     actions.DICOM_RECEIVED: DESTINATION_ROLE,
                     actions.WRITE_BACK_DONE: SOURCE_ROLE,
                     actions.WRITE_BACK_FAILED: SOURCE_ROLE}
APPLICATION_SERVER = Code("4", "Application Server process tier in a multi-tier system")
MACHINE_NAME, IP_ADDRESS = "1", "2"  # NetworkAccessPointTypeCode

STUDY_UID = Code("110180", "Study Instance UID")
LOCAL_STUDY = Code("study", "Study id (its first characters)", LOCAL)
USER_IDENTIFIER = Code("11", "User Identifier", RFC3881)
URI = Code("12", "URI", RFC3881)
SEARCH_CRITERIA = Code("10", "Search Criteria", RFC3881)
MODEL = Code("model", "Model (modality/architecture)", LOCAL)
TOKEN = Code("token", "API token id", LOCAL)
PERSON, SYSTEM_OBJECT = "1", "2"  # ParticipantObjectTypeCode
REPORT, RESOURCE, USER, SECURITY_RESOURCE, QUERY_ROLE = "3", "4", "6", "13", "24"
USED_IN_OBJECT = ("pacs_study_uid", "account", "token", "model", "modality")


def audit_message(event: AuditEvent, source: AuditSource) -> bytes:
    """The event's message as UTF-8 XML on one line (as a syslog frame carries it)."""
    kind = KINDS.get(event.action, EventKind(SECURITY_ALERT, None, "E"))
    root = ElementTree.Element("AuditMessage")
    root.append(identification(event, kind))
    for participant in participants(event, source):
        root.append(participant)
    audit_source = ElementTree.SubElement(root, "AuditSourceIdentification",
                                          without_none(AuditSourceID=source.source_id,
                                                       AuditEnterpriseSiteID=source.site_id))
    ElementTree.SubElement(audit_source, "AuditSourceTypeCode", APPLICATION_SERVER.attributes())
    for participant_object in objects(event):
        root.append(participant_object)
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=False)


def outcome_indicator(event: AuditEvent) -> str:
    """EventOutcomeIndicator: 0 success, 4 minor, 8 serious failure."""
    return ((LOGIN_OUTCOMES.get(event.outcome) if event.action == actions.LOGIN_FAILED
             else None) or OUTCOMES.get(event.outcome, "8"))


def identification(event: AuditEvent, kind: EventKind) -> ElementTree.Element:
    element = ElementTree.Element("EventIdentification", {
        "EventActionCode": kind.action_code,
        "EventDateTime": event.at.isoformat(timespec="microseconds") + "Z",
        "EventOutcomeIndicator": outcome_indicator(event)})
    ElementTree.SubElement(element, "EventID", kind.event_id.attributes())
    if kind.type_code is not None:
        ElementTree.SubElement(element, "EventTypeCode", kind.type_code.attributes())
    if event.outcome != "success":
        ElementTree.SubElement(element, "EventOutcomeDescription").text = (
            f"{event.action}: {event.outcome}")
    return element


def participants(event: AuditEvent, source: AuditSource) -> list[ElementTree.Element]:
    """Who asked (UserIsRequestor) and the application; one element when they are the
    same (the application acting alone)."""
    role = APPLICATION_ROLES.get(event.action, APPLICATION_ROLE)
    application = ElementTree.Element("ActiveParticipant", {
        "UserID": source.source_id, "UserIsRequestor": "false",
        "NetworkAccessPointID": source.host, "NetworkAccessPointTypeCode": MACHINE_NAME})
    ElementTree.SubElement(application, "RoleIDCode", role.attributes())
    if event.actor_method == "system":
        application.set("UserIsRequestor", "true")
        return [application]
    person = ElementTree.Element("ActiveParticipant", without_none(
        UserID=event.actor_name, UserIsRequestor="true",
        AlternativeUserID=None if event.actor_id is None else str(event.actor_id),
        NetworkAccessPointID=event.client,
        NetworkAccessPointTypeCode=IP_ADDRESS if event.client else None))
    if event.actor_role:
        ElementTree.SubElement(person, "RoleIDCode", Code(
            event.actor_role, f"LungScan role {event.actor_role}", LOCAL).attributes())
    return [person, application]


def objects(event: AuditEvent) -> list[ElementTree.Element]:
    """What the event was about, each with the trail's other details on the first."""
    target = event.target or {}
    found = []
    if target.get("pacs_study_uid"):
        found.append(participant_object(target["pacs_study_uid"], STUDY_UID,
                                        SYSTEM_OBJECT, REPORT))
    if event.study and event.study != target.get("pacs_study_uid"):
        found.append(participant_object(event.study, LOCAL_STUDY, SYSTEM_OBJECT, REPORT))
    if target.get("account"):
        found.append(participant_object(target["account"], USER_IDENTIFIER, PERSON, USER))
    if target.get("token") is not None:
        found.append(participant_object(target["token"], TOKEN, SYSTEM_OBJECT,
                                        SECURITY_RESOURCE))
    if target.get("model"):
        model = f"{target.get('modality') or 'any'}/{target['model']}"
        found.append(participant_object(model, MODEL, SYSTEM_OBJECT, RESOURCE))
    if event.action == actions.EXPORTED and target.get("format") == "audit-csv":
        found.append(participant_object("/admin/audit.csv", URI, SYSTEM_OBJECT,
                                        SECURITY_RESOURCE))
    if event.action == actions.PACS_QUERY:
        found.append(participant_object("studies", SEARCH_CRITERIA, SYSTEM_OBJECT,
                                        QUERY_ROLE))
    details = {key: value for key, value in target.items() if key not in USED_IN_OBJECT}
    if found:
        for key, value in sorted(details.items()):
            ElementTree.SubElement(found[0], "ParticipantObjectDetail", {
                "type": key, "value": base64.b64encode(str(value).encode()).decode()})
    return found


def participant_object(object_id, id_type: Code, type_code: str,
                       role: str) -> ElementTree.Element:
    element = ElementTree.Element("ParticipantObjectIdentification", {
        "ParticipantObjectID": str(object_id), "ParticipantObjectTypeCode": type_code,
        "ParticipantObjectTypeCodeRole": role})
    ElementTree.SubElement(element, "ParticipantObjectIDTypeCode", id_type.attributes())
    return element


def without_none(**attributes) -> dict[str, str]:
    return {key: value for key, value in attributes.items() if value is not None}
