"""Which studies a reader may open; every other one answers "not found", as an unknown
id does, so that a study's existence does not leak."""

from __future__ import annotations

from dataclasses import dataclass

from audit.trail import SYSTEM as SYSTEM_ACTOR
from audit.trail import Actor


# Studies of the hospital's own images (fetched from its PACS, or sent to the DICOM
# node), which readers and up open; other studies are their uploader's.
HOSPITAL_SOURCES = ("pacs", "dicom-node")


@dataclass(frozen=True)
class StudyAccess:
    user_id: int | None = None  # the signed-in reader; None for an anonymous one
    sees_everything: bool = False  # admins, and the tool's own jobs and commands
    reads_pacs: bool = False  # readers and up open analyses of the hospital's studies
    actor: Actor = SYSTEM_ACTOR  # who the audit trail says did it

    def may_open(self, study) -> bool:
        if self.sees_everything:
            return True
        if study.source in HOSPITAL_SOURCES:
            return self.reads_pacs
        # An anonymous study is open to whoever holds its id, as before accounts.
        return study.owner_id is None or study.owner_id == self.user_id


SYSTEM = StudyAccess(sees_everything=True)
